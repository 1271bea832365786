"""The stages API requests share: the context and its outcome, authentication, the assistant, the body,
the provider."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.bodies import BodyError, content_encoding, read_body, too_large
from riceball_proxy.cache import ProviderNotInstalled
from riceball_proxy.context import ChatContext, Outcome
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimated_usage
from riceball_proxy.inflight import shutting_down
from riceball_proxy.pricing import call_price
from riceball_proxy.providers import ProviderAdapter
from riceball_proxy.proxies import client_address
from riceball_proxy.validation import check_depth, parse_json

logger = logging.getLogger(__name__)

#: Status recorded for a call whose client went away before the answer was complete (nginx's 499).
CLIENT_CLOSED_REQUEST = 499
#: The context of the API request being served (for the access log).
CHAT_CONTEXT = web.RequestKey("chat_context", ChatContext)


def observed(handler):
    """Make an API handler ``handler(request, ctx)`` whose outcome every call reports to the observers
    (see :func:`observe`)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        return await observe(request, handler)

    return wrapper


async def observe(request: web.Request, handler, *args, request_id: str | None = None):
    """Run one call, ``handler(request, ctx, *args)``, with a new context, and report its outcome to the
    observers, however it ends. ``request_id``: the call's own, when one request carries several (a
    WebSocket's).

    The status recorded is the one the client got, or the error that ended a stream already under
    way, or 499 when the client went away first. A call the gateway ends because it is shutting
    down is answered, and recorded, 503.
    """
    app = request.match_info.apps[0]
    ctx = ChatContext(request_id=request_id or request[appkeys.REQUEST_ID], app=app,
                      client_addr=client_address(request))
    request[CHAT_CONTEXT] = ctx
    await app[appkeys.PLUGIN_MANAGER].run("riceball_request_started", request=request, ctx=ctx)
    in_flight = app[appkeys.IN_FLIGHT]
    task = request.task
    in_flight.add(task, ctx)
    status, disconnected = 500, False
    error_type: str | None = "server_error"
    error: APIError | None = None
    try:
        response = await handler(request, ctx, *args)
        error = ctx.error
        status, error_type = (error.status, error.type) if error else (response.status, None)
        return response
    except APIError as exc:
        error = exc
        status, error_type = exc.status, exc.type
        raise
    except asyncio.CancelledError:
        if not ctx.shutting_down:
            status, error_type, disconnected = CLIENT_CLOSED_REQUEST, "client_disconnected", True
            raise
        task.uncancel()  # ended by the shutdown, not by the client: it gets an answer
        error = shutting_down()
        status, error_type = error.status, error.type
        return error.response()
    except ConnectionResetError:
        status, error_type, disconnected = CLIENT_CLOSED_REQUEST, "client_disconnected", True
        raise
    except web.HTTPException as exc:
        status, error_type = exc.status, "invalid_request_error"
        raise
    finally:
        try:
            await finish(ctx, status, error_type, disconnected=disconnected, error=error)
        finally:
            in_flight.discard(task)


async def authenticate(request: web.Request, ctx: ChatContext) -> None:
    """Who is calling, and whether it may use the assistant the path names (``ctx.principal``).

    Order: a malformed id cannot name an assistant (404); then who is calling (401); then whether
    that caller may use the id (403) before anything is said of the assistant.
    """
    try:
        assistant_id = uuid.UUID(request.match_info["assistant_id"])
    except ValueError:
        raise await _not_an_id(request, ctx, request.match_info["assistant_id"]) from None
    pm = ctx.app[appkeys.PLUGIN_MANAGER]
    principal = await pm.run("riceball_authenticate", request=request, assistant_id=assistant_id)
    if principal is None:
        raise APIError(401, "No API key was accepted for this request.", code="invalid_api_key")
    ctx.principal = principal
    if principal.refused:
        raise APIError(401, principal.refused, code="invalid_api_key")
    if not principal.allows(assistant_id):
        raise APIError(403, f"The assistant '{assistant_id}' does not exist, or this API key may not use it.",
                       type="permission_error", code="assistant_not_allowed")
    ctx.assistant_id = assistant_id


async def resolve_assistant(ctx: ChatContext) -> None:
    """The assistant the caller named (``ctx.assistant``); 404 when it does not exist or is disabled."""
    assistant = None if ctx.assistant_id is None else await ctx.app[appkeys.CONFIG_CACHE].assistant(ctx.assistant_id)
    if assistant is None or not assistant.enabled:
        raise assistant_not_found(str(ctx.assistant_id))
    ctx.assistant = assistant


async def _not_an_id(request: web.Request, ctx: ChatContext, text: str) -> APIError:
    """404 for a path whose assistant is no id. When the text is the name of an assistant that the
    caller's key may use, the message says that the URL takes an id, and gives that assistant's; to
    anyone else it says no more than for an id that names nothing."""
    try:
        found = await ctx.app[appkeys.CONFIG_CACHE].assistant_named(text) if 0 < len(text) <= 200 else None
        if found is not None:
            pm = ctx.app[appkeys.PLUGIN_MANAGER]
            principal = await pm.run("riceball_authenticate", request=request, assistant_id=found.id)
            if principal is not None and not principal.refused and principal.allows(found.id):
                return APIError(404, f"The assistant '{text}' does not exist: the URL takes an assistant's id, "
                                     f"not its name. The assistant named '{text}' has the id {found.id}: use "
                                     f"/api/v1/assistants/{found.id}/v1 as the base URL.", code="assistant_not_found")
    except Exception:  # no key, a refused one, the database away: nothing more is said
        pass
    return assistant_not_found(text)


def assistant_not_found(assistant_id: str) -> APIError:
    """404 for an assistant that does not exist, is disabled, or cannot be an id at all."""
    return APIError(404, f"The assistant '{assistant_id}' does not exist.", code="assistant_not_found")


async def read_request_body(request: web.Request, ctx: ChatContext | None = None) -> bytes:
    """The request's body, decoded (``riceball_proxy.bodies``); 408, 413 or 400 in OpenAI's shape when it
    comes too slowly, is too large or is not in its declared encoding. With ``ctx``, the body is first
    counted in the body budget (503 or 429 beyond it), for as long as the call lasts."""
    settings = request.config_dict[appkeys.SETTINGS]
    try:
        if ctx is not None:
            declared = request.content_length
            if declared is not None and declared > settings.max_body_bytes:
                raise too_large(settings.max_body_bytes)
            # A body of no declared size, or compressed, may grow to the limit: it is counted at the limit.
            size = settings.max_body_bytes if declared is None or content_encoding(request) else declared
            request.config_dict[appkeys.BODY_BUDGET].take(_caller(ctx), size)
            ctx.held_body_bytes = size
        return await read_body(request, limit=settings.max_body_bytes)
    except BodyError as exc:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        raise APIError(exc.status, exc.message, code=exc.code, type="server_error" if exc.status == 503 else
                       "invalid_request_error", headers=headers) from None


def _caller(ctx: ChatContext):
    """Whom a call's body bytes count against: its API key (or, with none, its address)."""
    if ctx.principal is not None and ctx.principal.key_id is not None:
        return ctx.principal.key_id
    return ctx.client_addr


async def read_json_request(request: web.Request, ctx: ChatContext | None = None) -> tuple[object, bytes]:
    """The request body parsed as JSON (400 when it is not, or nests too deep; 413 when too large), and
    its bytes. Whether it is a request of the dialect is the dialect's to check."""
    raw = await read_request_body(request, ctx)
    try:
        body = parse_json(raw)
    except ValueError:  # orjson's and json's errors, and bytes that are not UTF-8
        raise APIError(400, "We could not parse the JSON body of your request. Send valid JSON.",
                       code="invalid_json") from None
    check_depth(raw, body)
    return body, raw


async def select_provider(ctx: ChatContext, provider_id: int | None = None) -> ProviderAdapter:
    """A provider of the assistant (its primary by default) into ``ctx``, and its adapter."""
    try:
        provider, adapter = await ctx.app[appkeys.CONFIG_CACHE].provider(
            ctx.resolved_assistant.provider_id if provider_id is None else provider_id)
    except (ProviderNotInstalled, LookupError) as exc:  # a type no plugin offers; a provider gone meanwhile
        logger.error("assistant %s: target skipped: %s", ctx.resolved_assistant.id, exc)
        raise APIError(502, "The assistant's provider is not available on this gateway.", type="api_error",
                       code="provider_unavailable") from None
    ctx.provider = provider
    return adapter


async def admit_caller(ctx: ChatContext) -> None:
    """What can be judged before the body is read (``riceball_admit_caller``: calls at once): 429 when over."""
    ctx.admission_started = True
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_admit_caller", ctx=ctx)


async def admit(ctx: ChatContext) -> None:
    """Limits, budgets and any other admission policy (``riceball_admit``): 429 when over."""
    ctx.admission_started = True
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_admit", ctx=ctx)


def _upstream_used(ctx: ChatContext, status: int, disconnected: bool) -> bool:
    """True when an upstream worked on this call, so that it cost something even though no usage came
    back: it answered (some or all of the answer was relayed), or the client left while it worked."""
    if ctx.target is None:
        return False  # no upstream was asked
    return ctx.first_token_at is not None or status < 400 or (disconnected and ctx.upstream_error is None)


#: The longest error message an outcome keeps.
MAX_ERROR_MESSAGE = 500


async def finish(ctx: ChatContext, status: int, error_type: str | None, *, disconnected: bool = False,
                 error: APIError | None = None) -> None:
    """Price the call, settle what admission took (``riceball_settle``), then hand the outcome to the
    ``riceball_request_finished`` observers, off the request path, and note the key's use. Returns once
    settled, unless the observers are so far behind that their queue is full."""
    now = time.perf_counter()
    if ctx.usage.prompt_tokens is None and _upstream_used(ctx, status, disconnected):
        invalid = ctx.usage.invalid  # what the upstream did report, unusable, stays noted
        ctx.usage = estimated_usage(ctx.body, ctx.relayed_chars)
        ctx.usage.invalid = invalid
    usage = ctx.usage
    if usage.prompt_tokens is not None and ctx.assistant is not None:
        price = call_price(ctx)  # the target that served: a fallback has its own price
        ctx.cost_usd = None if price is None else price.cost(usage)
    outcome = Outcome(
        status=status,
        error_type=error_type,
        latency_ms=(now - ctx.started_at) * 1000,
        ttft_ms=None if ctx.first_token_at is None else (ctx.first_token_at - ctx.started_at) * 1000,
        usage=ctx.usage,
        client_disconnected=disconnected,
        error_code=None if error is None else error.code,
        error_message=None if error is None else error.message[:MAX_ERROR_MESSAGE],
        cost_usd=ctx.cost_usd,
    )
    if ctx.admission_started:
        await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_settle", ctx=ctx, outcome=outcome)
    if status < 400 and ctx.principal is not None and ctx.principal.key_id is not None:
        ctx.app[appkeys.LAST_USED].used(ctx.principal.key_id, ctx.received_at)
    if ctx.held_body_bytes:  # the prompt is let go of next (release_bodies): so are its bytes
        ctx.app[appkeys.BODY_BUDGET].give(_caller(ctx), ctx.held_body_bytes)
        ctx.held_body_bytes = 0
    await ctx.app[appkeys.OBSERVERS].put(ctx, outcome)
