"""riceball-gemini: Google's Gemini API (generateContent) as a RiceBall provider type."""
from __future__ import annotations

import functools
from typing import Any

import orjson

from riceball_gemini.translate import StreamTranslator, from_gemini, to_gemini
from riceball_proxy.plugin import (
    ProviderType,
    TranslatingAdapter,
    bad_upstream_response,
    hookimpl,
    join_url,
    upstream_error,
)

__version__ = "0.1.0"


class GeminiAdapter(TranslatingAdapter):
    """Talks to ``{base_url}/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``."""

    translator = StreamTranslator
    reads_reasoning_details = True  # thought signatures by call id (riceball_gemini.translate.signature_of)
    # 503 UNAVAILABLE: overloaded for now, worth a retry (kept as 503).
    error_parser = functools.partial(upstream_error, retryable=(503,))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["x-goog-api-key"] = self.api_key
        return headers

    def _url(self, model: str, method: str, **query: str):
        return join_url(self.provider.base_url, f"/models/{model}:{method}", **query)

    async def complete(self, body: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        request = to_gemini(body)
        async with self.call("POST", self._url(body["model"], "generateContent"), headers=self.headers(),
                             body=request, request_id=request_id) as response:
            try:
                return from_gemini(orjson.loads(await response.read()), body["model"])
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise bad_upstream_response("answer") from None

    def stream_request(self, body: dict[str, Any]):
        return self._url(body["model"], "streamGenerateContent", alt="sse"), to_gemini(body)

    async def list_models(self) -> list[dict[str, Any]]:
        async with self.call("GET", join_url(self.provider.base_url, "/models", pageSize="1000"),
                             headers=self.headers()) as response:
            try:
                models = orjson.loads(await response.read()).get("models") or []
            except (orjson.JSONDecodeError, AttributeError):
                raise bad_upstream_response("model list") from None
        return [
            {"id": model["name"].removeprefix("models/"), "object": "model", "created": 0, "owned_by": "google"}
            for model in models
            if isinstance(model, dict) and "name" in model
            and "generateContent" in (model.get("supportedGenerationMethods") or ["generateContent"])
        ]


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="gemini", label="Google Gemini", adapter=GeminiAdapter,
                         default_base_url="https://generativelanguage.googleapis.com/v1beta")]
