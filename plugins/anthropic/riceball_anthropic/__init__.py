"""riceball-anthropic: Anthropic's Messages API as a RiceBall provider type."""
from __future__ import annotations

import datetime
import functools
from typing import Any

import orjson

from riceball_proxy import hookimpl
from riceball_proxy.providers import ProviderType, TranslatingAdapter
from riceball_proxy.upstream import bad_upstream_response, join_url, upstream_error

from riceball_anthropic.translate import StreamTranslator, from_anthropic, to_anthropic

__version__ = "0.1.0"

ANTHROPIC_VERSION = "2023-06-01"
OVERLOADED = 529


class AnthropicAdapter(TranslatingAdapter):
    """Talks to ``{base_url}/messages`` and ``{base_url}/models``."""

    translator = StreamTranslator
    # 529 is Anthropic's "overloaded": a temporary refusal, passed on as 503 so that clients retry.
    error_parser = functools.partial(upstream_error, retryable=(OVERLOADED,))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    async def complete(self, body: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        request = to_anthropic(body)
        async with self.call("POST", join_url(self.provider.base_url, "/messages"), headers=self.headers(),
                             body=request, request_id=request_id) as response:
            try:
                return from_anthropic(orjson.loads(await response.read()))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise bad_upstream_response("answer") from None

    def stream_request(self, body: dict[str, Any]):
        return join_url(self.provider.base_url, "/messages"), to_anthropic(body | {"stream": True})

    async def list_models(self) -> list[dict[str, Any]]:
        async with self.call("GET", join_url(self.provider.base_url, "/models", limit="1000"),
                             headers=self.headers()) as response:
            try:
                data = orjson.loads(await response.read())["data"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise bad_upstream_response("model list") from None
        return [{"id": model["id"], "object": "model", "created": _epoch(model.get("created_at")),
                 "owned_by": "anthropic"} for model in data if isinstance(model, dict) and "id" in model]


def _epoch(timestamp: Any) -> int:
    try:
        return int(datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="anthropic", label="Anthropic", adapter=AnthropicAdapter,
                         default_base_url="https://api.anthropic.com/v1")]
