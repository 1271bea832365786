"""The OpenAI-compatible provider type: OpenAI, Azure OpenAI deployments, DeepSeek, vLLM, Ollama, OpenRouter...

Requests and answers are already in OpenAI's format, so bodies go through untouched.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import yarl

from riceball_proxy import hookimpl, sse
from riceball_proxy.errors import APIError
from riceball_proxy.providers import ProviderAdapter, ProviderType


class OpenAICompatibleAdapter(ProviderAdapter):
    """Forwards to ``{base_url}/chat/completions`` and ``{base_url}/models``."""

    def _url(self, path: str) -> yarl.URL:
        # A query in the base URL (Azure's ?api-version=...) stays at the end.
        base = yarl.URL(self.provider.base_url)
        return base.with_path(base.path.rstrip("/") + path).with_query(base.query)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
            headers["api-key"] = self.api_key  # Azure OpenAI reads this one
        return headers

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.provider.connect_timeout, sock_read=self.provider.read_timeout
        )

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._request("POST", "/chat/completions", body) as response:
            try:
                return orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                raise APIError(502, "the upstream answered with invalid JSON", type="api_error",
                               code="bad_upstream_response") from None

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._request("POST", "/chat/completions", body) as response:
            try:
                async for data in sse.iter_data(response.content):
                    if data == sse.DONE:
                        return
                    yield data
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                yield orjson.dumps(_connection_error(exc).body())

    async def list_models(self) -> list[dict[str, Any]]:
        async with self._request("GET", "/models") as response:
            try:
                return list(orjson.loads(await response.read())["data"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise APIError(502, "the upstream's model list is not in OpenAI's format", type="api_error",
                               code="bad_upstream_response") from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None):
        return _UpstreamCall(self, method, path, body)

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


class _UpstreamCall:
    """``async with``: an upstream response with status < 400, or an APIError raised in OpenAI's shape."""

    def __init__(self, adapter: OpenAICompatibleAdapter, method: str, path: str, body: dict[str, Any] | None):
        self.adapter = adapter
        self.method = method
        self.path = path
        self.body = body
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        adapter = self.adapter
        try:
            self.response = await adapter.session.request(
                self.method,
                adapter._url(self.path),
                data=None if self.body is None else orjson.dumps(self.body),
                headers=adapter._headers(),
                timeout=adapter._timeout(),
            )
            if self.response.status >= 400:
                raw = await self.response.read()
                raise upstream_error(self.response.status, raw, adapter._redact)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self.__aexit__(None, None, None)
            raise _connection_error(exc) from None
        except APIError:
            await self.__aexit__(None, None, None)
            raise
        return self.response

    async def __aexit__(self, *exc_info) -> None:
        if self.response is not None:
            self.response.release()
            self.response = None


def _connection_error(exc: BaseException) -> APIError:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return APIError(504, "the upstream provider did not answer in time", type="api_error", code="upstream_timeout")
    return APIError(502, "the upstream provider could not be reached", type="api_error", code="upstream_unavailable")


def upstream_error(status: int, raw: bytes, redact=lambda text: text) -> APIError:
    """An upstream error answer, normalised to OpenAI's shape: 4xx kept, 5xx as 502."""
    message, error_type, param, code = None, None, None, None
    try:
        payload = orjson.loads(raw)
        error = payload.get("error", payload) if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message = error.get("message")
            error_type = error.get("type")
            param = error.get("param")
            code = error.get("code")
        elif isinstance(error, str):
            message = error
    except orjson.JSONDecodeError:
        message = raw[:500].decode("utf-8", "replace").strip() or None
    message = redact(str(message)) if message else f"the upstream provider answered {status}"
    code = None if code is None else str(code)
    param = None if param is None else str(param)
    if status >= 500:
        return APIError(502, f"upstream error ({status}): {message}", type="api_error", param=param, code=code)
    return APIError(status, message, type=str(error_type or "invalid_request_error"), param=param, code=code)


@hookimpl(trylast=True)
def riceball_provider_types():
    return [
        ProviderType(
            name="openai",
            label="OpenAI-compatible",
            adapter=OpenAICompatibleAdapter,
            default_base_url="https://api.openai.com/v1",
        )
    ]
