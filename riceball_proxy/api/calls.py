"""``POST .../v1/chat/completions``, ``.../v1/messages`` and every other dialect's call: one request,
stage by stage (the pipeline of DESIGN.md), the same for every dialect (``riceball_proxy.dialects``).

Admission comes in two steps. What depends on the caller alone (calls at once) is taken before the body
is read (4a.), so that a caller over it never costs the memory of its body; the rest (4.) comes after the
request is prepared (5.) and its provider known (6.): limits then see the body that will really be sent
(the system prompt, the ``max_tokens`` ceiling) and its price. The body's bytes are counted against the
process's and the key's bounds on bodies in flight before it is read (3.).
"""
from __future__ import annotations

import time

import orjson
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.routing import call_upstream
from riceball_proxy.api.stages import (
    admit,
    admit_caller,
    authenticate,
    observed,
    read_json_request,
    resolve_assistant,
    select_provider,
)
from riceball_proxy.api.streaming import answer_stream
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects import Dialect
from riceball_proxy.estimates import answer_chars


def call_handler(dialect: Dialect):
    """The aiohttp handler of ``dialect``'s calls."""

    @observed  # 9. observe: whatever happens below, the outcome goes to the observers (usage, metrics...)
    async def call(request: web.Request, ctx: ChatContext) -> web.StreamResponse:
        """One call, streamed or not; every failure is an APIError, answered in the dialect's shape."""
        await admitted(request, ctx, dialect, lambda: read_json_request(request, ctx))  # 1-6.
        if ctx.stream:
            return await answer_stream(request, ctx)                # 6-8. call (with failover), transform, SSE
        answer = await dialect.answer(ctx, await whole_answer(ctx))  # 6-7. call (with failover), transform
        response = web.Response(body=orjson.dumps(answer), content_type="application/json")  # 8. answer
        await response.prepare(request)  # sent now, so that settling the call (9.) never delays it
        await response.write_eof()
        return response

    call.dialect = dialect
    return call


async def admitted(request: web.Request, ctx: ChatContext, dialect: Dialect, read) -> None:
    """A call of ``dialect`` up to the upstream call: who calls, the assistant, the request (``read()``
    gives its parsed body and bytes), prepared and admitted. Raises the APIError that refuses it."""
    ctx.dialect = dialect
    pm = ctx.app[appkeys.PLUGIN_MANAGER]
    await authenticate(request, ctx)                            # 1. who is calling (401, 403)
    await resolve_assistant(ctx)                                # 2. the assistant it names (404)
    await admit_caller(ctx)                                     # 4a. calls at once, before the body (429)
    dialect.take(ctx, request, *await read())                   # 3. a valid request (400, 413)
    await pm.run("riceball_prepare_request", ctx=ctx)           # 5. inject the assistant, then policies
    dialect.inject(ctx)                                         #    (and in the dialect's own terms)
    await select_provider(ctx)                                  # 6. the primary provider (its price)
    await admit(ctx)                                            # 4. limits and budgets (429)


async def whole_answer(ctx: ChatContext) -> dict:
    """A call answered whole: the upstream call, failing over (api/routing.py), and its usage; an answer
    in the internal form also goes through the plugins' ``riceball_transform_response``."""
    answer = await call_upstream(ctx, stream=False)
    ctx.first_token_at = time.perf_counter()
    if ctx.served_natively:
        ctx.record_usage(ctx.dialect.native_usage(answer.get("usage") if isinstance(answer, dict) else None))
        if isinstance(answer, dict):
            ctx.dialect.note_native_answer(ctx, answer)
        return answer
    ctx.record_usage(answer.get("usage") if isinstance(answer, dict) else None)
    if isinstance(answer, dict):
        ctx.note_chunk(answer)
    if ctx.usage.prompt_tokens is None and isinstance(answer, dict):  # to estimate what it used
        ctx.relayed_chars = answer_chars(answer.get("choices"), "message")
    return await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_transform_response", ctx=ctx, response=answer)
