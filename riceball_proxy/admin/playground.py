"""The playground: chat with an assistant from the admin panel, conversations saved, two side by side.

Every page works without JavaScript (a message is answered whole, then the page shows it). With it,
``static/playground.js`` posts the same forms with ``Accept: text/event-stream`` and the answer streams
in as ``data: {"delta": "..."}`` events, then one ``data: {"done": true, "meta": {...}}``; a stopped
request (the browser aborts it) cancels the upstream call and the partial answer is kept, marked
stopped. The calls go through the API's stages (``riceball_proxy.api.panel``).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from aiohttp import web

from riceball_proxy.admin.assistants import assistant_or_404
from riceball_proxy.admin.pages import ADMIN, confirm, db_pool, flash, redirect, render, url
from riceball_proxy.api import panel
from riceball_proxy.api.calls import whole_answer
from riceball_proxy.api.stages import observed
from riceball_proxy.context import ChatContext
from riceball_proxy.db import assistants, conversations
from riceball_proxy.errors import APIError
from riceball_proxy.inflight import shutting_down

logger = logging.getLogger(__name__)

#: The longest message the playground sends.
MAX_MESSAGE = 100_000
#: What a playground call is about: (conversation, the messages to send), for the observed handlers.
CALL = web.RequestKey("playground_call", tuple)
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
               "X-Accel-Buffering": "no"}


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/assistants/{id}/playground", playground, name="playground")
    router.add_post("/assistants/{id}/conversations", conversation_new, name="conversation_new")
    router.add_get("/conversations/{id}", conversation_page, name="conversation")
    router.add_post("/conversations/{id}/messages", message_send, name="conversation_send")
    router.add_post("/conversations/{id}/rename", conversation_rename, name="conversation_rename")
    router.add_get("/conversations/{id}/delete", conversation_delete_confirm, name="conversation_delete")
    router.add_post("/conversations/{id}/delete", conversation_delete)
    router.add_get("/compare", compare_page, name="compare")
    router.add_post("/compare", compare_send)


def _uuid(value: str | None, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value or "")
    except ValueError:
        raise web.HTTPNotFound(text=f"No such {what}.") from None


async def _conversation_or_404(request: web.Request, conversation_id: str | None = None):
    conversation = await conversations.get(db_pool(request),
                                           _uuid(conversation_id or request.match_info["id"], "conversation"))
    if conversation is None:
        raise web.HTTPNotFound(text="No such conversation (it may have been deleted).")
    return conversation


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


# --- pages -------------------------------------------------------------------------------------------


async def playground(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request)
    pool = db_pool(request)
    return await render(request, "admin/playground.html", {
        "assistant": assistant,
        "conversations": await conversations.list_for_assistant(pool, assistant.id),
        "assistants": await assistants.list_all(pool),
    })


async def conversation_new(request: web.Request) -> web.StreamResponse:
    """A new conversation; with a message (the playground's first), that message sent in it too."""
    assistant = await assistant_or_404(request)
    first = str((await request.post()).get("content", "")).strip()
    conversation = await conversations.create(db_pool(request), admin_id=request[ADMIN].id,
                                              assistant_id=assistant.id)
    if "application/json" in request.headers.get("Accept", ""):  # the playground's script sends it next
        return web.json_response({"id": str(conversation.id),
                                  "url": url(request, "conversation", id=conversation.id),
                                  "send_url": url(request, "conversation_send", id=conversation.id)})
    if first:
        return await _send(request, conversation)
    raise redirect(request, "conversation", id=conversation.id)


async def conversation_page(request: web.Request) -> web.Response:
    conversation = await _conversation_or_404(request)
    pool = db_pool(request)
    assistant = None if conversation.assistant_id is None else await assistants.get(pool, conversation.assistant_id)
    return await render(request, "admin/conversation.html", {
        "conversation": conversation, "assistant": assistant,
        "chat_messages": await conversations.messages(pool, conversation.id),
    })


async def conversation_rename(request: web.Request) -> web.Response:
    conversation = await _conversation_or_404(request)
    title = " ".join(str((await request.post()).get("title", "")).split())[:conversations.MAX_TITLE]
    await conversations.rename(db_pool(request), conversation.id, title)
    await flash(request, "success", "Conversation renamed.")
    raise redirect(request, "conversation", id=conversation.id)


async def conversation_delete_confirm(request: web.Request) -> web.Response:
    conversation = await _conversation_or_404(request)
    return await confirm(request, title=f"Delete the conversation “{conversation.title or 'Untitled'}”?",
                         message="Its messages are deleted with it, for every admin. Usage rows stay. "
                                 "This cannot be undone.",
                         button="Delete conversation", back="conversation", id=conversation.id)


async def conversation_delete(request: web.Request) -> web.Response:
    conversation = await _conversation_or_404(request)
    await conversations.delete(db_pool(request), conversation.id)
    await flash(request, "success", "Conversation deleted.")
    if conversation.assistant_id is not None:
        raise redirect(request, "playground", id=conversation.assistant_id)
    raise redirect(request, "assistants")


# --- sending -----------------------------------------------------------------------------------------


async def _message_from(request: web.Request) -> str:
    content = str((await request.post()).get("content", "")).strip()
    if not content:
        raise _Refused("Write a message first.")
    if len(content) > MAX_MESSAGE:
        raise _Refused(f"A message may have at most {MAX_MESSAGE:,} characters.")
    return content


class _Refused(Exception):
    """A message the playground does not send (empty, too long, no assistant)."""


async def _start(request: web.Request, conversation, content: str) -> list[dict[str, Any]]:
    """Save the admin's message; the conversation as the messages to send (failed answers left out)."""
    if conversation.assistant_id is None:
        raise _Refused("This conversation's assistant was deleted: start a new conversation.")
    pool = db_pool(request)
    history = await conversations.messages(pool, conversation.id)
    await conversations.add_message(pool, conversation.id, "user", content)
    sent = [{"role": m.role, "content": m.content} for m in history
            if m.role in ("user", "assistant") and not m.meta.get("error")]
    return sent + [{"role": "user", "content": content}]


async def message_send(request: web.Request) -> web.StreamResponse:
    """One message of a conversation: streamed to the playground's script, or answered whole."""
    return await _send(request, await _conversation_or_404(request))


async def _send(request: web.Request, conversation) -> web.StreamResponse:
    stream = _wants_stream(request)
    try:
        messages = await _start(request, conversation, await _message_from(request))
    except _Refused as exc:
        if stream:
            return web.json_response({"error": str(exc)}, status=400)
        await flash(request, "error", str(exc))
        raise redirect(request, "conversation", id=conversation.id) from None
    request[CALL] = (conversation, messages)
    try:
        if stream:
            return await _streamed(request)
        await _whole(request)
    except APIError as exc:  # refused before any answer: kept in the conversation as what happened
        await _save(request, conversation, "", {"error": exc.message, "status": exc.status})
        if stream:
            return web.json_response({"error": exc.message}, status=exc.status)
        await flash(request, "error", exc.message)
    raise redirect(request, "conversation", id=conversation.id)


@observed
async def _whole(request: web.Request, ctx: ChatContext) -> web.Response:
    conversation, messages = request[CALL]
    await panel.prepare(ctx, request[ADMIN], conversation.assistant_id, messages, stream=False)
    answer = await whole_answer(ctx)
    await _save(request, conversation, panel.answer_text(answer), panel.call_meta(ctx))
    return web.Response(status=200)  # what is observed; the admin is sent back to the conversation


@observed
async def _streamed(request: web.Request, ctx: ChatContext) -> web.StreamResponse:
    conversation, messages = request[CALL]
    await panel.prepare(ctx, request[ADMIN], conversation.assistant_id, messages, stream=True)
    deltas = panel.text_deltas(ctx)
    parts: list[str] = []
    response = None
    try:
        async for text in deltas:
            if response is None:  # the first text: the call went through (an error before is an HTTP status)
                response = web.StreamResponse(headers=SSE_HEADERS)
                await response.prepare(request)
            parts.append(text)
            await response.write(_event({"delta": text}))
    except asyncio.CancelledError:
        if not ctx.shutting_down or response is None:
            # The admin pressed Stop (or left): the upstream call ends with this task; the text so far is kept.
            await asyncio.shield(_save(request, conversation, "".join(parts), panel.call_meta(ctx, stopped=True)))
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the gateway is stopping: the stream ends with a last event
        error = shutting_down()
        ctx.error = error
        meta = panel.call_meta(ctx, error=error.message)
        message = await _save(request, conversation, "".join(parts), meta)
        await response.write(_event({"error": error.message, "meta": meta, "id": message.id}))
        await response.write_eof()
        return response
    except ConnectionResetError:
        await asyncio.shield(_save(request, conversation, "".join(parts), panel.call_meta(ctx, stopped=True)))
        raise
    except APIError as exc:
        if response is None:
            raise
        ctx.error = exc  # the stream broke after it began: observed as this error; the text so far is kept
        meta = panel.call_meta(ctx, error=exc.message)
        message = await _save(request, conversation, "".join(parts), meta)
        await response.write(_event({"error": exc.message, "meta": meta, "id": message.id}))
        await response.write_eof()
        return response
    finally:
        aclose = getattr(deltas, "aclose", None)  # an async generator's
        if aclose is not None:
            await aclose()
    if response is None:
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
    meta = panel.call_meta(ctx)
    message = await _save(request, conversation, "".join(parts), meta)
    await response.write(_event({"done": True, "meta": meta, "id": message.id}))
    await response.write_eof()
    return response


def _event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _save(request: web.Request, conversation, text: str, meta: dict[str, Any]):
    return await conversations.add_message(db_pool(request), conversation.id, "assistant", text, meta)


# --- compare -----------------------------------------------------------------------------------------


async def compare_page(request: web.Request) -> web.Response:
    pool = db_pool(request)
    sides = []
    for side in ("a", "b"):
        assistant_id = request.query.get(side)
        conversation_id = request.query.get(f"c{side}")
        conversation = None
        if conversation_id:
            conversation = await conversations.get(pool, _uuid(conversation_id, "conversation"))
        sides.append({
            "name": side,
            "assistant_id": assistant_id or "",
            "conversation": conversation,
            "chat_messages": await conversations.messages(pool, conversation.id) if conversation else [],
        })
    return await render(request, "admin/compare.html", {"sides": sides, "assistants": await assistants.list_all(pool)})


async def compare_send(request: web.Request) -> web.Response:
    """Without JavaScript: the message to both sides, one after the other, each its own conversation."""
    form = await request.post()
    pool = db_pool(request)
    query: dict[str, str] = {}
    try:
        content = await _message_from(request)
        for side in ("a", "b"):
            assistant = await assistant_or_404(request, str(form.get(side, "")))
            conversation = None
            if form.get(f"c{side}"):
                conversation = await conversations.get(pool, _uuid(str(form.get(f"c{side}")), "conversation"))
            if conversation is None or conversation.assistant_id != assistant.id:
                conversation = await conversations.create(pool, admin_id=request[ADMIN].id, assistant_id=assistant.id)
            query |= {side: str(assistant.id), f"c{side}": str(conversation.id)}
            request[CALL] = (conversation, await _start(request, conversation, content))
            try:
                await _whole(request)
            except APIError as exc:
                await _save(request, conversation, "", {"error": exc.message, "status": exc.status})
    except _Refused as exc:
        await flash(request, "error", str(exc))
        query = {side: str(form.get(side, "")) for side in ("a", "b")} | {
            f"c{side}": str(form.get(f"c{side}", "")) for side in ("a", "b")}
    raise web.HTTPSeeOther(request.app.router["compare"].url_for().with_query(
        {name: value for name, value in query.items() if value}))
