"""A fake Anthropic Messages API: a real aiohttp server replaying the wire format of Anthropic's API
reference (named SSE events, content blocks, input_json_delta fragments, ping, error events)."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply = "Hello from Claude"
        #: Tool uses to answer with: (id, name, input).
        self.tool_uses: list[tuple[str, str, dict[str, Any]]] = []
        self.error: tuple[int, Any] | None = None
        #: Send an error event after this many content deltas.
        self.error_after_deltas: int | None = None
        self.usage = {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 0}

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]["body"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        return app

    def _error(self) -> web.Response:
        status, body = self.error
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        self.requests.append({"headers": dict(request.headers), "body": None})
        if self.error:
            return self._error()
        return web.json_response({"data": [
            {"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5",
             "created_at": "2025-09-29T00:00:00Z"},
            {"type": "model", "id": "claude-haiku-4-5", "display_name": "Claude Haiku 4.5",
             "created_at": "2025-10-15T00:00:00Z"},
        ], "has_more": False, "first_id": "claude-sonnet-4-5", "last_id": "claude-haiku-4-5"})

    def _content(self) -> list[dict[str, Any]]:
        blocks = [{"type": "text", "text": self.reply}] if self.reply else []
        blocks += [{"type": "tool_use", "id": id_, "name": name, "input": input_}
                   for id_, name, input_ in self.tool_uses]
        return blocks

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if self.error:
            return self._error()
        stop_reason = "tool_use" if self.tool_uses else "end_turn"
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_01Fake", "type": "message", "role": "assistant", "model": body["model"],
                "content": self._content(), "stop_reason": stop_reason, "stop_sequence": None, "usage": self.usage,
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")

        await send("message_start", {"type": "message_start", "message": {
            "id": "msg_01Fake", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**self.usage, "output_tokens": 1}}})
        await send("ping", {"type": "ping"})
        deltas = 0
        for index, block in enumerate(self._content()):
            if block["type"] == "text":
                await send("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}})
                for n, word in enumerate(block["text"].split(" ")):
                    if self.error_after_deltas is not None and deltas == self.error_after_deltas:
                        await send("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                         "message": "Overloaded"}})
                        return response
                    await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "text_delta", "text": word if n == 0 else " " + word}})
                    deltas += 1
                    await asyncio.sleep(0)
            else:
                await send("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                arguments = orjson.dumps(block["input"]).decode()
                half = len(arguments) // 2
                for fragment in ("", arguments[:half], arguments[half:]):
                    await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "input_json_delta", "partial_json": fragment}})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                                          "stop_sequence": None},
                                     "usage": {"output_tokens": self.usage["output_tokens"]}})
        await send("message_stop", {"type": "message_stop"})
        return response
