"""Building the ``chat.completion.chunk`` payloads of a streamed answer, for adapters that translate."""
from __future__ import annotations

import time
import uuid
from typing import Any

import orjson


class ChunkBuilder:
    """The chunks (JSON bytes, one per SSE ``data:``) of one streamed answer, all with its id and model."""

    def __init__(self, model: str, answer_id: str | None = None):
        self.model = model
        self.id = answer_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """A chunk of the first (only) choice: ``delta`` and, on the last one, its finish reason."""
        return orjson.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                "finish_reason": finish_reason}]})

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The usage-only chunk that ends a stream whose client asked for ``stream_options.include_usage``."""
        return orjson.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model, "choices": [], "usage": usage})
