"""A fake Gemini API: a real aiohttp server replaying generateContent and streamGenerateContent?alt=sse
as Google's API reference describes them (parts, functionCall, finishReason, usageMetadata, errors),
with Gemini 3's thought signatures: each functionCall it answers carries one, and it refuses (400) a
history whose functionCall parts lack a signature it issued (or the documented
``skip_thought_signature_validator``). Its thinking follows ``generationConfig.thinkingConfig`` as the API
does: thoughts only when ``includeThoughts``, a ``thinkingLevel`` only for Gemini 3 (never beside a
``thinkingBudget``), no budget of 0 for a Pro model; a Gemini 3 text answer's last part is signed too."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class FakeGemini:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply = "Hello from Gemini"
        #: Function calls to answer with: (name, args).
        self.function_calls: list[tuple[str, dict[str, Any]]] = []
        self.error: tuple[int, Any] | None = None
        #: In a stream, send an error chunk after this many text chunks.
        self.error_after_chunks: int | None = None
        self.usage = {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13,
                      "cachedContentTokenCount": 2}
        #: The thought signatures it answered with.
        self.signatures: set[str] = set()

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]["body"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{model}:{method}", self.generate)
        app.router.add_get("/v1beta/models", self.models)
        return app

    def _error(self) -> web.Response:
        status, body = self.error
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": None})
        if self.error:
            return self._error()
        return web.json_response({"models": [
            {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash",
             "supportedGenerationMethods": ["generateContent", "countTokens"]},
            {"name": "models/text-embedding-004", "displayName": "Embedding",
             "supportedGenerationMethods": ["embedContent"]},
        ]})

    def _response(self, parts: list[dict[str, Any]], finish: str | None, usage: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        response: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash",
                                    "responseId": "fake-response"}
        if usage:
            response["usageMetadata"] = self.usage
        return response

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body, "model": request.match_info["model"],
                              "method": request.match_info["method"]})
        if self.error:
            return self._error()
        thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        model = request.match_info["model"]
        refusal = None
        if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
            refusal = "You can only set only one of thinking budget and thinking level."
        elif "thinkingLevel" in thinking and not model.startswith("gemini-3"):
            refusal = "Thinking level is not supported for this model."
        elif thinking.get("thinkingBudget") == 0 and "-pro" in model:
            refusal = "Budget 0 is invalid. This model only works in thinking mode."
        if refusal:
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": refusal}},
                                     status=400)
        thoughts = [{"text": "thinking...", "thought": True}] if thinking.get("includeThoughts") else []
        for content in body.get("contents") or ():
            for part in content.get("parts") or ():
                if "functionCall" in part and part.get("thoughtSignature") not in (
                        self.signatures | {"skip_thought_signature_validator"}):
                    return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                              "Function call is missing a thought_signature in functionCall parts."}},
                                             status=400)
        calls = []
        for name, args in self.function_calls:
            signature = f"gsig-{len(self.signatures)}"
            self.signatures.add(signature)
            calls.append({"functionCall": {"name": name, "args": args}, "thoughtSignature": signature})
        signed_text = model.startswith("gemini-3") and not calls and self.reply
        if signed_text:
            signature = f"gsig-{len(self.signatures)}"
            self.signatures.add(signature)
        if request.match_info["method"] == "generateContent":
            parts = thoughts + ([{"text": self.reply}] if self.reply else []) + calls
            if signed_text:
                parts[-1]["thoughtSignature"] = signature
            return web.json_response(self._response(parts, "STOP", usage=True))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = self.reply.split(" ") if self.reply else []
        chunks = [[{"text": w if n == 0 else " " + w}] for n, w in enumerate(words)]
        if signed_text:
            chunks[-1][-1]["thoughtSignature"] = signature
        if thoughts:
            chunks.insert(0, thoughts)
        if calls:
            chunks.append(calls)  # Gemini sends whole function calls, never fragments
        for n, parts in enumerate(chunks):
            if self.error_after_chunks is not None and n == self.error_after_chunks:
                error = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
                await response.write(b"data: " + orjson.dumps(error) + b"\r\n\r\n")
                return response
            last = n == len(chunks) - 1
            chunk = self._response(parts, "STOP" if last else None, usage=last)
            await response.write(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        return response
