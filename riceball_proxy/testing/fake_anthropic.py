"""A fake Anthropic Messages API: a real aiohttp server replaying the wire format of Anthropic's API
reference (named SSE events, content blocks, input_json_delta fragments, ping, error events, thinking
blocks with signatures), and refusing what the real API refuses (``refusal``): a missing ``max_tokens``,
an empty text block, a tool_result that answers no tool_use of the turn before, a thinking block whose
signature it did not issue, a temperature other than 1 with thinking on, a last assistant turn that
calls a tool without its thinking while thinking is enabled (not adaptive), a system message inside ``messages`` without
the beta that allows it, adaptive thinking before Claude 4.6, a thinking budget (or thinking disabled) from
Claude 4.7 on, ``output_config.effort`` before Claude 4.5."""
from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import orjson
from aiohttp import web


def claude_version(model: str) -> tuple[int, int]:
    """A Claude model's generation, ``claude-opus-4-6`` -> (4, 6); (0, 0) for older names."""
    match = re.match(r"claude-[a-z]+-(\d+)(?:-(\d{1,2})(?!\d))?", model)
    return (int(match[1]), int(match[2] or 0)) if match else (0, 0)


class FakeAnthropic:
    #: Its ``/v1`` URL, once a test server serves it (the ``fake_anthropic`` fixture sets it).
    base_url: str = ""

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
        #: The signatures of the thinking blocks it answered with.
        self.signatures: set[str] = set()
        #: A thinking text to answer with first when the request turns thinking on.
        self.thinking = "Let me think."
        #: When set, called with each request's body before it is answered: returns (reply, tool_uses),
        #: which replace ``reply`` and ``tool_uses``.
        self.responder: Any = None
        #: Prompt caching as Anthropic does it: the input counted (a token a word), prefixes ending at a
        #: ``cache_control`` block of ``MIN_CACHED`` tokens or more written to the cache, and read back by
        #: a later request with the same prefix; the usage then reports reads, writes and the rest.
        self.caching = False
        self.cache: dict[bytes, int] = {}
        #: What a structured answer (output_config.format, or a forced tool call) holds.
        self.structured: dict[str, Any] = {"city": "Paris", "celsius": 18}

    #: The shortest prefix Anthropic caches (Claude Sonnet's 1024 tokens).
    MIN_CACHED = 1024

    def cache_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """The input usage of a request under prompt caching (and the cache written by it)."""
        system = body.get("system")
        blocks = [*(body.get("tools") or ()),
                  *([{"type": "text", "text": system}] if isinstance(system, str) else system or ())]
        for message in body["messages"]:
            content = message["content"]
            blocks += [{"type": "text", "text": content}] if isinstance(content, str) else content
        digest, total, boundaries, prefixes = hashlib.sha256(), 0, [], []
        for block in blocks:
            plain = orjson.dumps({k: v for k, v in block.items() if k != "cache_control"},
                                 option=orjson.OPT_SORT_KEYS)
            digest.update(plain)
            total += len(plain.split())
            boundaries.append((digest.copy().digest(), total))
            if "cache_control" in block:
                prefixes.append((len(boundaries) - 1, block["cache_control"].get("ttl", "5m")))
        # A hit is looked for at every block boundary up to 20 blocks before a breakpoint, as Anthropic does.
        read = max((boundaries[n][1] for end, _ in prefixes for n in range(max(0, end - 19), end + 1)
                    if boundaries[n][0] in self.cache), default=0)
        written = {"5m": 0, "1h": 0}
        for end, _ in prefixes:
            key, tokens = boundaries[end]
            if tokens >= self.MIN_CACHED:
                self.cache[key] = tokens
        last = next(((boundaries[end][1], ttl) for end, ttl in reversed(prefixes)
                     if boundaries[end][1] >= self.MIN_CACHED), None)
        if last is not None and last[0] > read:
            written[last[1]] = last[0] - read
        return {"input_tokens": total - read - sum(written.values()), "cache_read_input_tokens": read,
                "cache_creation_input_tokens": sum(written.values()),
                "cache_creation": {"ephemeral_5m_input_tokens": written["5m"],
                                   "ephemeral_1h_input_tokens": written["1h"]}}

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]["body"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.models)
        return app

    def _error(self) -> web.Response:
        status, body = self.error or (500, {})
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

    def refusal(self, body: dict[str, Any], headers, counting: bool = False) -> str | None:
        """What the real API would answer 400 with, or None."""
        if not counting and not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        messages = body.get("messages") or []
        if not messages:
            return "messages: at least one message is required"
        system = body.get("system")
        marked = sum("cache_control" in block for block in [
            *(body.get("tools") or ()), *(system if isinstance(system, list) else ()),
            *(block for m in messages if isinstance(m.get("content"), list) for block in m["content"])])
        if marked > 4:
            return f"A maximum of 4 blocks with cache_control may be provided. Found {marked}."
        kind = (body.get("thinking") or {}).get("type")
        version = claude_version(body.get("model") or "")
        if kind == "adaptive" and version < (4, 6):
            return "adaptive thinking is not supported on this model"
        if kind in ("enabled", "disabled") and version >= (4, 7):
            return f"thinking.type.{kind} is not supported for this model. Use thinking.type.adaptive instead."
        if "effort" in (body.get("output_config") or {}) and version < (4, 5):
            return "output_config.effort: this model does not support the effort parameter"
        if "format" in (body.get("output_config") or {}) and version < (4, 5):
            return "output_config.format: structured outputs are not supported for this model"
        if kind in ("enabled", "adaptive") and (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            return "Thinking may not be enabled when tool_choice forces tool use."
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool" and choice.get("name") not in {t.get("name") for t in body.get("tools") or ()}:
            return f"tool_choice: tool {choice.get('name')!r} not found in tools"
        thinking = kind in ("enabled", "adaptive")
        if thinking and body.get("temperature") not in (None, 1, 1.0):
            return "temperature may only be set to 1 when thinking is enabled"
        budget = (body.get("thinking") or {}).get("budget_tokens")
        if budget is not None and not counting and budget >= body["max_tokens"]:
            return "max_tokens must be greater than thinking.budget_tokens"
        last_assistant = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
        enabled = (body.get("thinking") or {}).get("type") == "enabled"  # adaptive thinking may skip a turn
        if enabled and last_assistant is not None and isinstance(last_assistant.get("content"), list):
            blocks = last_assistant["content"]
            if any(b.get("type") == "tool_use" for b in blocks) and blocks[0].get("type") not in (
                    "thinking", "redacted_thinking"):
                return ("messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` "
                        "is enabled, a final `assistant` message must start with a thinking block.")
        previous: list[Any] = []
        for n, message in enumerate(messages):
            if message.get("role") == "system" and "mid-conversation-system" not in headers.get("anthropic-beta", ""):
                return f'messages.{n}.role: Input should be "user" or "assistant"'
            content = message.get("content")
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            for block in blocks:
                if block.get("type") == "text" and not block.get("text"):
                    return "messages: text content blocks must be non-empty"
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in {
                        b.get("id") for b in previous if isinstance(b, dict) and b.get("type") == "tool_use"}:
                    return ("messages.%d.content: unexpected `tool_use_id` found in `tool_result` blocks: %s"
                            % (n, block.get("tool_use_id")))
                if block.get("type") == "thinking" and block.get("signature") not in self.signatures:
                    return f"messages.{n}.content: Invalid `signature` in `thinking` block"
            previous = blocks if message.get("role") == "assistant" else []
        return None

    def _refuse(self, message: str) -> web.Response:
        return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message": message},
                                  "request_id": "req_fake"}, status=400)

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body, "path": request.path})
        refusal = self.refusal(body, request.headers, counting=True) or (
            "max_tokens: Extra inputs are not permitted" if "max_tokens" in body else None)
        if refusal:
            return self._refuse(refusal)
        return web.json_response({"input_tokens": len(orjson.dumps(body)) // 4})

    def _content(self, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if body and (body.get("thinking") or {}).get("type") in ("enabled", "adaptive") and self.thinking:
            signature = f"sig-{len(self.signatures)}-{len(orjson.dumps(body))}"
            self.signatures.add(signature)
            blocks.append({"type": "thinking", "thinking": self.thinking, "signature": signature})
        choice = (body or {}).get("tool_choice") or {}
        if "format" in ((body or {}).get("output_config") or {}):  # structured output: the JSON is the text
            return blocks + [{"type": "text", "text": orjson.dumps(self.structured).decode()}]
        if choice.get("type") in ("tool", "any") and not self.tool_uses:  # a forced call of the tool asked for
            name = choice.get("name") or (body or {})["tools"][-1]["name"]
            return blocks + [{"type": "tool_use", "id": "toolu_forced", "name": name, "input": self.structured}]
        blocks += [{"type": "text", "text": self.reply}] if self.reply else []
        blocks += [{"type": "tool_use", "id": id_, "name": name, "input": input_}
                   for id_, name, input_ in self.tool_uses]
        return blocks

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if self.error:
            return self._error()
        refusal = self.refusal(body, request.headers)
        if refusal:
            return self._refuse(refusal)
        if self.responder is not None:
            self.reply, self.tool_uses = self.responder(body)
        content = self._content(body)
        stop_reason = "tool_use" if any(block["type"] == "tool_use" for block in content) else "end_turn"
        usage = {**self.usage, **self.cache_usage(body)} if self.caching else self.usage
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_01Fake", "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage,
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")

        await send("message_start", {"type": "message_start", "message": {
            "id": "msg_01Fake", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1}}})
        await send("ping", {"type": "ping"})
        deltas = 0
        for index, block in enumerate(content):
            if block["type"] == "thinking":
                await send("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "thinking", "thinking": ""}})
                await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "thinking_delta", "thinking": block["thinking"]}})
                await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "signature_delta", "signature": block["signature"]}})
            elif block["type"] == "text":
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
