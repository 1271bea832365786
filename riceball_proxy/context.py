"""The objects that travel through one API request's hook chain."""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from riceball_proxy.db.assistants import Assistant
from riceball_proxy.db.providers import Provider


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the API key (or whatever a plugin authenticates) and what it may use."""

    key_id: uuid.UUID | None
    name: str
    #: None: every assistant; otherwise only these.
    assistant_ids: frozenset[uuid.UUID] | None = None

    def allows(self, assistant_id: uuid.UUID) -> bool:
        """True when this caller may use that assistant."""
        return self.assistant_ids is None or assistant_id in self.assistant_ids


@dataclasses.dataclass
class Usage:
    """Token counts reported by the upstream (None where it reported nothing)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclasses.dataclass
class ChatContext:
    """One chat-completions request on its way through the gateway."""

    request_id: str
    assistant: Assistant
    provider: Provider
    principal: Principal
    #: The upstream request body (OpenAI format), changed in place by ``riceball_prepare_request``.
    body: dict[str, Any]
    #: The body as the client sent it, for plugins that need the original.
    client_body: dict[str, Any]
    stream: bool = False
    #: What the client asked for in ``stream_options.include_usage``.
    client_wants_usage: bool = False
    client_addr: str | None = None
    started_at: float = dataclasses.field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    #: Free space for plugins, keyed by plugin name.
    stash: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a request ended, for ``riceball_request_finished`` observers."""

    status: int
    error_type: str | None
    latency_ms: float
    ttft_ms: float | None
    usage: Usage
    #: True when the client went away before the answer was complete.
    client_disconnected: bool = False
