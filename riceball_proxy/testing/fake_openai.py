"""A fake OpenAI-compatible upstream: a real aiohttp server speaking the Chat Completions wire format.

Tests script it through attributes (``reply``, ``error``, ``chunk_delay``...) and read what it
received from ``requests``. Streams are real SSE; errors are OpenAI's error bodies; failures are
real (a slow answer, a connection dropped mid-stream).
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from aiohttp import web

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


#: Models that take ``reasoning_effort`` (OpenAI refuses it for the others, such as gpt-4o).
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def refusal_of(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """What OpenAI answers 400 with for a request translated wrong: a tool name out of its pattern, a tool
    message that answers no tool call of the assistant message before it, ``reasoning_effort`` for a
    model that does not reason."""
    if body.get("reasoning_effort") is not None and not REASONING_MODEL.match(body.get("model") or ""):
        return "Unsupported parameter: 'reasoning_effort' is not supported with this model.", "reasoning_effort"
    for n, tool in enumerate(body.get("tools") or ()):
        if not TOOL_NAME.match((tool.get("function") or {}).get("name") or ""):
            return f"Invalid 'tools[{n}].function.name': string does not match pattern.", f"tools[{n}].function.name"
    calls: set[str] = set()
    for n, message in enumerate(body.get("messages") or ()):
        if message.get("role") == "assistant":
            calls = {call.get("id") for call in message.get("tool_calls") or ()}
        elif message.get("role") == "tool":
            if message.get("tool_call_id") not in calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.", f"messages.[{n}].role")
        else:
            calls = set()
    return None


class FakeOpenAI:
    """State and behaviour of one fake upstream server."""

    #: Its ``/v1`` URL, once a test server serves it (the ``fake_openai`` fixture sets it).
    base_url: str = ""

    def __init__(self) -> None:
        #: Each request received: {"path", "headers", "body"}.
        self.requests: list[dict[str, Any]] = []
        #: What to answer: ``text`` (words), ``tool_calls`` (list of (name, arguments-json)).
        self.reply: str = "Hello from the fake upstream"
        self.tool_calls: list[tuple[str, str]] = []
        #: (status, body) answered instead of a completion; body bytes are sent as they are.
        self.error: tuple[int, Any] | None = None
        #: Headers sent with that error answer (Retry-After, x-ratelimit-*...).
        self.error_headers: dict[str, str] = {}
        #: After this many content chunks, send an error event (``error_event``) or drop the connection.
        self.fail_after_chunks: int | None = None
        #: "error_event", "drop" (the connection cut), "malformed" (an event cut short), "not_json"
        #: ("{not json}") or "end" (the body ends cleanly, without a finish reason or [DONE]).
        self.failure: str = "error_event"
        self.chunk_delay: float = 0.0
        #: When set, each chunk after the first waits for one release: a test releases it once it has
        #: received the chunk before, which proves that chunks travel one by one (nothing buffers them).
        self.chunk_gate: asyncio.Semaphore | None = None
        #: Seconds to wait before answering at all (for timeouts).
        self.delay: float = 0.0
        #: When set, every request waits for it before it is answered (calls that end together).
        self.hold: asyncio.Event | None = None
        #: Set when a streaming client went away before the stream ended.
        self.client_went_away = asyncio.Event()
        self.stream_finished = asyncio.Event()
        self.models = ["gpt-4o", "gpt-4o-mini"]
        #: Sent as ``usage`` instead of the counted one (any JSON value, to play a careless upstream).
        self.usage: Any = None
        #: False: no usage at all, whatever the request asks (an upstream that never reports it).
        self.reports_usage = True
        #: When set, called with each request's body before it is answered: returns (reply, tool_calls),
        #: which replace ``reply`` and ``tool_calls`` (a model that answers as the conversation goes).
        self.responder: Any = None

    @property
    def last(self) -> dict[str, Any]:
        """The body of the last request received."""
        return self.requests[-1]["body"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.list_models)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": None})
        if self.error:
            return self._error_response()
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _error_response(self) -> web.Response:
        status, body = self.error or (500, {})
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(status=status, body=raw, content_type="application/json", headers=self.error_headers)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses API, as OpenAI serves it: a response object, or its events (each with a
        sequence number), ``reply`` as one message, then ``tool_calls`` as function calls; it refuses
        ``previous_response_id`` it never issued."""
        body = await request.json()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        if self.error:
            return self._error_response()
        if body.get("previous_response_id"):
            return web.json_response({"error": {"message": f"Previous response with id "
                                                f"'{body['previous_response_id']}' not found.",
                                                "type": "invalid_request_error", "param": "previous_response_id",
                                                "code": "previous_response_not_found"}}, status=400)
        output = []
        if self.reply and not self.tool_calls:
            output.append({"id": "msg_fake", "type": "message", "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": self.reply, "annotations": [], "logprobs": []}]})
        for n, (name, arguments) in enumerate(self.tool_calls):
            output.append({"id": f"fc_fake{n}", "type": "function_call", "call_id": f"call_{n}", "name": name,
                           "arguments": arguments, "status": "completed"})
        usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14}
        response = {"id": "resp_fake", "object": "response", "created_at": 1700000000, "status": "completed",
                    "model": body.get("model"), "output": output, "usage": usage, "error": None,
                    "incomplete_details": None, "instructions": body.get("instructions"), "metadata": {},
                    "parallel_tool_calls": True, "temperature": 1.0, "tool_choice": "auto", "tools": [],
                    "top_p": 1.0, "store": bool(body.get("store", True))}
        if not body.get("stream"):
            return web.json_response(response)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        sequence = 0

        async def send(kind: str, data: dict[str, Any]) -> None:
            nonlocal sequence
            await stream.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(
                {"type": kind, **data, "sequence_number": sequence}) + b"\n\n")
            sequence += 1

        started = {**response, "status": "in_progress", "output": [], "usage": None}
        await send("response.created", {"response": started})
        await send("response.in_progress", {"response": started})
        for index, item in enumerate(output):
            await send("response.output_item.added", {"output_index": index, "item": {**item, "status": "in_progress"}})
            if item["type"] == "message":
                for n, word in enumerate(self.reply.split(" ")):
                    if self.fail_after_chunks is not None and n == self.fail_after_chunks:
                        await send("response.failed", {"response": {**started, "status": "failed", "error": {
                            "code": "server_error", "message": "The model failed."}}})
                        return stream
                    await send("response.output_text.delta", {"item_id": item["id"], "output_index": index,
                                                              "content_index": 0, "delta": word if n == 0 else " " + word,
                                                              "logprobs": []})
            await send("response.output_item.done", {"output_index": index, "item": item})
        await send("response.completed", {"response": response})
        return stream

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        if self.error:
            return self._error_response()
        if self.responder is not None:
            self.reply, self.tool_calls = self.responder(body)
        refusal = refusal_of(body)
        if refusal:
            return web.json_response({"error": {"message": refusal[0], "type": "invalid_request_error",
                                                "param": refusal[1], "code": "unsupported_parameter"
                                                if refusal[1] == "reasoning_effort" else None}}, status=400)
        if body.get("stream"):
            return await self._stream(request, body)
        return web.json_response(self._completion(body))

    def _usage(self, body: dict[str, Any]) -> Any:
        if self.usage is not None:
            return self.usage
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion = len(self.reply.split()) if not self.tool_calls else 5 * len(self.tool_calls)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool_calls else self.reply}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}
                for n, (name, arguments) in enumerate(self.tool_calls)
            ]
        answer = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if self.tool_calls else "stop"}],
            "usage": self._usage(body),
        }
        if not self.reports_usage:
            del answer["usage"]
        return answer

    def _chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and self.reports_usage

        def chunk(delta, finish_reason=None):
            data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish_reason}]}
            if include_usage:
                data["usage"] = None
            return data

        chunks = [chunk({"role": "assistant", "content": ""})]
        if self.tool_calls:
            for n, (name, arguments) in enumerate(self.tool_calls):
                chunks.append(chunk({"tool_calls": [{"index": n, "id": f"call_{n}", "type": "function",
                                                     "function": {"name": name, "arguments": ""}}]}))
                half = len(arguments) // 2  # the arguments arrive in fragments, as OpenAI sends them
                for fragment in (arguments[:half], arguments[half:]):
                    chunks.append(chunk({"tool_calls": [{"index": n, "function": {"arguments": fragment}}]}))
            chunks.append(chunk({}, "tool_calls"))
        else:
            words = self.reply.split(" ")
            for n, word in enumerate(words):
                chunks.append(chunk({"content": word if n == 0 else " " + word}))
            chunks.append(chunk({}, "stop"))
        if include_usage:
            chunks.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                           "model": body["model"], "choices": [], "usage": self._usage(body)})
        return chunks

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n, chunk in enumerate(self._chunks(body)):
                if self.fail_after_chunks is not None and n == self.fail_after_chunks:
                    if self.failure == "drop":
                        if request.transport is not None:
                            request.transport.close()
                        return response
                    if self.failure == "malformed":  # cut short
                        await response.write(b'data: {"id": "chatcmpl-fake", "choices": [{"delta": \n\n')
                        continue
                    if self.failure == "not_json":  # braces, but no JSON inside
                        await response.write(b"data: {not json}\n\n")
                        continue
                    if self.failure == "end":
                        await response.write_eof()
                        return response
                    error = {"error": {"message": "The server had an error while processing your request.",
                                       "type": "server_error", "param": None, "code": None}}
                    await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
                    return response
                if self.chunk_gate is not None and n > 0:
                    await self.chunk_gate.acquire()
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write(b"data: [DONE]\n\n")
            self.stream_finished.set()
        except (asyncio.CancelledError, ConnectionResetError):
            self.client_went_away.set()
            raise
        return response
