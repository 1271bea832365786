"""The OpenAI-compatible provider types: OpenAI, Azure OpenAI deployments, DeepSeek, vLLM, Ollama, OpenRouter...

Requests and answers are already in OpenAI's format, so bodies go through untouched. ``openai`` speaks
Chat Completions; ``openai-responses`` (OpenAI itself, Azure, vLLM 0.21 and later) speaks the Responses
API as well, so that calls that came in by it are passed through (``native_dialects``): hosted tools,
encrypted reasoning and cache keys reach the provider as the client wrote them.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from riceball_proxy import hookimpl, sse
from riceball_proxy.providers import ProviderAdapter, ProviderType
from riceball_proxy.upstream import (
    bad_upstream_response,
    connection_error,
    join_url,
    stream_ended_early,
    stream_error,
)


class OpenAICompatibleAdapter(ProviderAdapter):
    """Forwards to ``{base_url}/chat/completions`` and ``{base_url}/models``."""

    @functools.cached_property
    def _chat_url(self):  # made once: an adapter lives as long as its provider is unchanged
        return join_url(self.provider.base_url, "/chat/completions")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
            headers["api-key"] = self.api_key  # Azure OpenAI reads this one
        return headers

    async def complete(self, body: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        async with self.call("POST", self._chat_url, headers=self.headers(), body=body,
                             request_id=request_id) as response:
            try:
                return orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                raise bad_upstream_response("answer") from None

    async def stream(self, body: dict[str, Any], *, request_id: str | None = None) -> AsyncIterator[bytes]:
        """The upstream's chunks as it sent them (bytes untouched), each checked on the way.

        The one adapter that reads upstream bytes: an error event, an event that is not a JSON object,
        or an end with neither ``[DONE]`` nor a finish reason raises APIError. Every event is parsed
        (the only way to know it is JSON), and nothing else is done to it.
        """
        finished = False
        async with self.call("POST", self._chat_url, headers=self.headers(), body=body,
                             request_id=request_id) as response:
            try:
                async for data in sse.iter_data(response.content.iter_any()):
                    if data == sse.DONE:
                        return
                    chunk = _json_object(data)
                    choices = chunk.get("choices")
                    if not choices:
                        if "error" in chunk:
                            raise stream_error(chunk["error"], self.redact)
                    elif not finished:
                        for choice in choices:  # a plain loop: this runs for every chunk
                            if type(choice) is dict and choice.get("finish_reason"):
                                finished = True
                                break
                    yield data
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise connection_error(exc) from None
        if not finished:  # neither [DONE] nor a finish reason: the answer was cut short
            raise stream_ended_early()

    async def list_models(self) -> list[dict[str, Any]]:
        async with self.call("GET", join_url(self.provider.base_url, "/models"), headers=self.headers()) as response:
            try:
                return list(orjson.loads(await response.read())["data"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise bad_upstream_response("model list") from None


class OpenAIResponsesAdapter(OpenAICompatibleAdapter):
    """An OpenAI-compatible API that also serves ``{base_url}/responses``: Responses calls go there as
    they came (the assistant injected), the others to Chat Completions."""

    native_dialects = frozenset({"responses"})

    @functools.cached_property
    def _responses_url(self):
        return join_url(self.provider.base_url, "/responses")

    async def complete_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                              request_id: str | None = None) -> dict[str, Any]:
        async with self.call("POST", self._responses_url, headers=self.headers(), body=body,
                             request_id=request_id) as response:
            try:
                answer = orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                raise bad_upstream_response("answer") from None
        if type(answer) is not dict or answer.get("object") != "response":
            raise bad_upstream_response("answer")
        return answer

    async def stream_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                            request_id: str | None = None) -> AsyncIterator[bytes]:
        """The provider's events as they came, each read for a failure or the end: ``response.failed`` and
        ``error`` raise APIError, and so does a stream that ends before its last event."""
        ended = False
        async with self.call("POST", self._responses_url, headers=self.headers(), body=body | {"stream": True},
                             request_id=request_id) as response:
            try:
                async for data in sse.iter_data(response.content.iter_any()):
                    kind = _json_object(data).get("type")
                    if kind in ("response.failed", "error"):
                        event = orjson.loads(data)
                        error = event.get("error") or (event.get("response") or {}).get("error") or {}
                        raise stream_error(error if isinstance(error, dict) else {}, self.redact)
                    yield data
                    if kind in ("response.completed", "response.incomplete"):
                        ended = True
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise connection_error(exc) from None
        if not ended:
            raise stream_ended_early()


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_upstream_response("stream") from None
    if type(chunk) is not dict:
        raise bad_upstream_response("stream")
    return chunk


@hookimpl(trylast=True)
def riceball_provider_types():
    return [
        ProviderType(
            name="openai",
            label="OpenAI-compatible",
            adapter=OpenAICompatibleAdapter,
            default_base_url="https://api.openai.com/v1",
        ),
        ProviderType(
            name="openai-responses",
            label="OpenAI-compatible, with the Responses API (OpenAI, Azure, vLLM 0.21+)",
            adapter=OpenAIResponsesAdapter,
            default_base_url="https://api.openai.com/v1",
        ),
    ]
