"""What Responses clients ask of an assistant besides its HTTP calls (``dialects/responses.py``):

    GET .../v1/responses (Upgrade: websocket)  the Responses API over a WebSocket (Codex's transport)
    POST .../v1/responses/input_tokens         the tokens of a request's input
    GET, DELETE .../v1/responses/{id}, ...     404: nothing is stored (the API is stateless)
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from riceball_proxy import appkeys
from riceball_proxy.api.calls import admitted
from riceball_proxy.api.routing import call_upstream
from riceball_proxy.api.stages import authenticate, observe, read_json_request, resolve_assistant
from riceball_proxy.api.streaming import relay
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects import openai_responses as wire
from riceball_proxy.dialects.names import ToolNames
from riceball_proxy.dialects.responses import RESPONSES
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimate_prompt_tokens
from riceball_proxy.proxies import client_address

logger = logging.getLogger(__name__)
#: How the events that end a response begin (the renderer writes ``type`` first).
LAST_EVENTS = (b'{"type":"response.completed"', b'{"type":"response.incomplete"', b'{"type":"response.failed"')
#: Seconds between the pings that keep an idle socket (a developer reading) open through proxies.
HEARTBEAT = 30.0


def _context(request: web.Request) -> ChatContext:
    return ChatContext(request_id=request[appkeys.REQUEST_ID], app=request.match_info.apps[0],
                       client_addr=client_address(request), dialect=RESPONSES)


async def input_tokens(request: web.Request) -> web.Response:
    """The tokens a Responses request's input would take, the assistant's system prompt included: an
    estimate on the high side. Free: no usage row, no limit."""
    ctx = _context(request)
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    body, raw = await read_json_request(request)
    RESPONSES.take(ctx, request, body, raw)
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_prepare_request", ctx=ctx)
    return web.json_response({"object": "response.input_tokens", "input_tokens": estimate_prompt_tokens(ctx.body)})


async def not_stored(request: web.Request) -> web.Response:
    """404 for a stored response (to get, delete, cancel or list the input of): there are none."""
    ctx = _context(request)
    await authenticate(request, ctx)
    raise APIError(404, f"No response '{request.match_info['response_id']}' is stored: this gateway's Responses API is "
                        "stateless. Send the whole conversation in 'input' with every call (store: false).",
                   param="response_id", code="not_stored")


class SocketConversation:
    """What one WebSocket remembers between its calls: the last response's id, and the whole input and
    output it was made of. Codex sends a later call as that id and the new items alone; the socket puts
    the whole conversation back together, so that each call is still one stateless call. Nothing outlives
    the socket, and only its own responses can be named."""

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.items: list[Any] = []

    def whole(self, body: dict[str, Any]) -> dict[str, Any]:
        previous = body.pop("previous_response_id", None)
        if previous is None:
            return body
        if previous != self.response_id:
            raise wire.stateless("previous_response_id")
        added = body.get("input") or []
        body["input"] = [*self.items, *([{"role": "user", "content": added}] if isinstance(added, str) else added)]
        return body

    def remember(self, body: dict[str, Any], response: dict[str, Any] | None) -> None:
        if response is None or response.get("status") != "completed":
            self.response_id, self.items = None, []
            return
        given = body["input"]
        self.items = [*([{"role": "user", "content": given}] if isinstance(given, str) else given),
                      *response.get("output", ())]
        self.response_id = response["id"]




async def responses_socket(request: web.Request) -> web.StreamResponse:
    """The Responses API over a WebSocket: each ``response.create`` frame is one call through the same
    pipeline as ``POST .../responses`` (keys, limits, injection, failover, usage), its events sent back
    as frames, one JSON event each. A call refused before it began is one ``error`` frame (with its
    HTTP status); the socket stays open for the next. The caller is authenticated before the upgrade,
    so that a client without a valid key gets an HTTP 401 and no socket."""
    ctx = _context(request)
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT,
                                   max_msg_size=request.config_dict[appkeys.SETTINGS].max_body_bytes)
    if not socket.can_prepare(request).ok:
        raise APIError(405, "GET .../responses is the Responses API over a WebSocket: send 'Upgrade: websocket', "
                            "or POST .../responses.", code="method_not_allowed")
    await socket.prepare(request)
    conversation = SocketConversation()
    calls = 0
    async for message in socket:
        if message.type != WSMsgType.TEXT:
            continue
        calls += 1
        request_id = f"{request[appkeys.REQUEST_ID]}-{calls}"
        try:
            frame = orjson.loads(message.data)
            if not isinstance(frame, dict) or frame.get("type") != "response.create":
                raise APIError(400, "Each frame is a JSON object of type 'response.create' with the request's "
                                    "fields.", param="type", code="invalid_value")
            body = conversation.whole({name: value for name, value in frame.items() if name != "type"})
            body["stream"] = True
            if body.pop("generate", True) is False:  # a warm-up: nothing to generate, nothing to ask upstream
                final = await _prewarmed(socket, ctx.resolved_assistant.model, body)
            else:
                final = await observe(request, _socket_call, socket, body, request_id=request_id)
            conversation.remember(body, final.get("response"))
        except orjson.JSONDecodeError:
            await _send_error(socket, APIError(400, "A frame is not JSON.", code="invalid_json"), request_id)
        except APIError as exc:
            conversation.remember({}, None)
            await _send_error(socket, exc, request_id)
    return socket


async def _socket_call(request: web.Request, ctx: ChatContext, socket: web.WebSocketResponse,
                       body: dict[str, Any]) -> dict[str, Any]:
    """One ``response.create``: its events sent as frames; returns its last event (for the status recorded
    and the conversation), whose ``status`` is the call's."""
    raw = orjson.dumps(body)

    async def read():
        return body, raw

    await admitted(request, ctx, RESPONSES, read)
    last: dict[str, Any] = {}

    async def send(data: bytes) -> None:
        nonlocal last
        for event in data.split(b"\n\n"):
            if event:
                json = event.split(b"\ndata: ", 1)[1].rstrip()
                await socket.send_str(json.decode())
                if json.startswith(LAST_EVENTS):
                    last = orjson.loads(json)

    first, upstream = await call_upstream(ctx, stream=True)
    try:
        await relay(ctx, first, upstream, send)
    finally:
        await upstream.aclose()
    return _Outcome(last)


async def _prewarmed(socket: web.WebSocketResponse, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """A ``generate: false`` call (Codex warms a socket up with one): answered at once with an empty
    completed response, which later calls may name as their ``previous_response_id``."""
    wire.check_request(body)
    renderer = wire.StreamRenderer(body, ToolNames(), model)
    events = [*renderer.start(), *renderer.finish({})]
    for event in events:
        await socket.send_str(event.split(b"\ndata: ", 1)[1].decode().rstrip())
    return orjson.loads(events[-1].split(b"\ndata: ", 1)[1])


class _Outcome(dict):
    """A call's last event, with the status ``observe`` records (the socket itself answered 101)."""

    status = 200


async def _send_error(socket: web.WebSocketResponse, error: APIError, request_id: str) -> None:
    """A call refused before it began, as one ``error`` frame with its HTTP status; a code is always given
    (what Codex reads: ``rate_limit_exceeded`` with when to try again...)."""
    message = error.message
    wait = (error.headers or {}).get("Retry-After")
    if wait and "try again in" not in message:
        message = f"{message} Please try again in {wait}s."
    await socket.send_str(orjson.dumps({"type": "error", "status": error.status, "error": {
        "type": error.type, "code": error.code or wire.failure_code(error), "message": message,
        "param": error.param}, "request_id": request_id}).decode())
