"""riceball-anthropic: Anthropic's Messages API as a RiceBall provider type."""
from __future__ import annotations

import asyncio
import datetime
import functools
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from riceball_anthropic.translate import StreamTranslator, from_anthropic, to_anthropic
from riceball_proxy.plugin import (
    ProviderType,
    TranslatingAdapter,
    bad_upstream_response,
    connection_error,
    hookimpl,
    iter_data,
    join_url,
    stream_ended_early,
    stream_error,
    upstream_error,
)

__version__ = "0.1.0"

ANTHROPIC_VERSION = "2023-06-01"
OVERLOADED = 529


class AnthropicAdapter(TranslatingAdapter):
    """Talks to ``{base_url}/messages``, ``{base_url}/messages/count_tokens`` and ``{base_url}/models``:
    Chat Completions calls translated, Messages calls (Claude Code's) natively."""

    translator = StreamTranslator
    reads_reasoning_details = True  # thinking blocks and their signatures (riceball_anthropic.translate)
    cache_breakpoints = True  # content parts' cache_control become its blocks'
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

    # --- the Messages dialect, natively: the client's body (the assistant injected) and the answer as they are

    native_dialects = frozenset({"messages"})

    def _native_headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        """The adapter's headers, with the client's API version and betas (``anthropic-beta``) passed on."""
        return self.headers() | {name: value for name, value in (headers or {}).items()
                                 if name in ("anthropic-version", "anthropic-beta")}

    async def complete_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                              request_id: str | None = None) -> dict[str, Any]:
        async with self.call("POST", join_url(self.provider.base_url, "/messages"),
                             headers=self._native_headers(headers), body=body, request_id=request_id) as response:
            try:
                answer = orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                raise bad_upstream_response("answer") from None
        if not isinstance(answer, dict) or answer.get("type") != "message":
            raise bad_upstream_response("answer")
        return answer

    async def stream_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                            request_id: str | None = None) -> AsyncIterator[bytes]:
        """Anthropic's events as they came (their JSON bytes), each read for an error or the end."""
        stopped = False
        async with self.call("POST", join_url(self.provider.base_url, "/messages"),
                             headers=self._native_headers(headers), body=body | {"stream": True},
                             request_id=request_id) as response:
            try:
                async for data in iter_data(response.content.iter_any()):
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise bad_upstream_response("stream") from None
                    kind = event.get("type") if isinstance(event, dict) else None
                    if kind == "error":
                        error = event.get("error") if isinstance(event.get("error"), dict) else {}
                        raise stream_error({"message": error.get("message"), "code": error.get("type")}, self.redact)
                    yield data  # pings too: they keep a long silence (thinking) from looking like a dead stream
                    if kind == "message_stop":
                        stopped = True
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise connection_error(exc) from None
        if not stopped:
            raise stream_ended_early()

    async def count_tokens_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                                  request_id: str | None = None) -> int | None:
        async with self.call("POST", join_url(self.provider.base_url, "/messages/count_tokens"),
                             headers=self._native_headers(headers), body=body, request_id=request_id) as response:
            try:
                counted = orjson.loads(await response.read())["input_tokens"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise bad_upstream_response("token count") from None
        if type(counted) is not int or counted < 0:
            raise bad_upstream_response("token count")
        return counted

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
                         default_base_url="https://api.anthropic.com/v1", check_base_url=versioned)]


def versioned(base_url: str) -> str | None:
    """A warning for a base URL without a version path: calls go to ``{base_url}/messages``, and
    Anthropic's is ``https://api.anthropic.com/v1/messages``."""
    if re.search(r"/v\d+[a-z0-9]*/?$", base_url):
        return None
    return (f"{base_url} does not end in a version path: calls will go to {base_url.rstrip('/')}/messages; "
            "Anthropic's base URL is https://api.anthropic.com/v1")
