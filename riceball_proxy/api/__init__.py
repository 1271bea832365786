"""The API: a sub-application mounted at ``/api/v1``, each assistant's base at ``/assistants/{id}/v1``.

    POST .../v1/chat/completions           every dialect's call: api/calls.py (the pipeline), at the
    POST .../v1/messages                   dialect's path (riceball_proxy.dialects)
    POST .../v1/messages/count_tokens      api/anthropic.py
    GET  .../v1/models, .../v1/models/{model}    api/models.py
    HEAD, GET /api/v1/assistants/{id}      api/anthropic.py (a client's probe of its base URL)

The stages the handlers share are in ``api/stages.py``, the SSE answer in ``api/streaming.py``.
Every error it answers is in the shape of the handler's dialect: Anthropic's for the Messages API
(and for any request from a client that speaks it), OpenAI's otherwise, with the matching status.
"""
from __future__ import annotations

import logging

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.anthropic import assistant_base, count_tokens, speaks_anthropic
from riceball_proxy.api.calls import call_handler
from riceball_proxy.api.models import list_models, retrieve_model
from riceball_proxy.api.responses import input_tokens, not_stored, responses_socket
from riceball_proxy.api.stages import CLIENT_CLOSED_REQUEST
from riceball_proxy.bodies import answered_and_closed
from riceball_proxy.dialects import dialects
from riceball_proxy.dialects.chat import CHAT
from riceball_proxy.dialects.messages import MESSAGES
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

MOUNT_POINT = "/api/v1"
ASSISTANT_BASE = "/assistants/{assistant_id}/v1"


#: What an assistant serves under its base URL (``.../v1``), for the 404 of any other path there.
SERVED = "chat/completions, responses, messages (Anthropic's), models"
#: OpenAI paths an assistant does not serve, and what a client does instead, where it can.
NOT_SERVED = {
    "completions": "legacy completions are not served: use chat/completions",
    "embeddings": "embeddings are not served: an assistant is a chat model",
    "audio": "audio is not served", "images": "images are not served", "files": "files are not served",
    "batches": "batches are not served", "moderations": "moderations are not served",
    "fine_tuning": "fine-tuning is not served", "vector_stores": "vector stores are not served",
    "assistants": "OpenAI's Assistants API is not served", "threads": "OpenAI's Assistants API is not served",
    "realtime": "the Realtime API is not served", "conversations": "conversations are not stored: send the "
    "whole conversation with every call",
}


def unknown_url(request: web.Request) -> APIError:
    """404 for a URL the API does not serve, naming the form it does (the SDK's ``base_url``; for
    Anthropic's clients, ``ANTHROPIC_BASE_URL``, which has no ``/v1``), with the request's own host. Under
    an assistant's base, it says what is served there instead."""
    host = f"{request.scheme}://{request.host}"
    said = f"Unknown request URL: {request.method} {request.path}."
    under_base = request.path.split("/v1/", 2)
    if request.path.startswith(f"{MOUNT_POINT}/assistants/") and len(under_base) == 3:
        rest = under_base[2]
        reason = NOT_SERVED.get(rest.split("/", 1)[0])
        return APIError(404, f"{said} An assistant serves {SERVED} under its base URL"
                             f"{'; ' + reason if reason else ''}.", code="unknown_url")
    if speaks_anthropic(request):
        return APIError(404, f"{said} Each assistant's Messages API is at {MOUNT_POINT}/assistants/<assistant id>"
                             "/v1/messages: set ANTHROPIC_BASE_URL (or the SDK's base_url) to the assistant's base, "
                             f"without /v1 (e.g. {host}{MOUNT_POINT}/assistants/<assistant id>).", code="unknown_url")
    return APIError(404, f"{said} Each assistant is served at {MOUNT_POINT}{ASSISTANT_BASE}: use that, with the "
                         f"assistant's id, as the SDK's base URL (e.g. base_url='{host}{MOUNT_POINT}/assistants/"
                         "<assistant id>/v1').", code="unknown_url")


async def wrong_base_url(request: web.Request) -> web.Response:
    """Every other URL under ``/v1/`` and ``/api/``: the mistakes a first base URL makes, answered as the SDKs read."""
    return unknown_url(request).response()


def setup_api(app: web.Application) -> web.Application:
    """Mount the API sub-application on ``app``, and answer the URLs near it that it does not serve."""
    api = web.Application(middlewares=[api_error_middleware])
    for dialect in dialects(app[appkeys.PLUGIN_MANAGER]).values():
        api.router.add_post(ASSISTANT_BASE + dialect.path, call_handler(dialect))
    api.router.add_post(ASSISTANT_BASE + "/messages/count_tokens", count_tokens)
    api.router.add_get(ASSISTANT_BASE + "/responses", responses_socket)
    api.router.add_post(ASSISTANT_BASE + "/responses/input_tokens", input_tokens)
    api.router.add_route("*", ASSISTANT_BASE + "/responses/{response_id}", not_stored)
    api.router.add_route("*", ASSISTANT_BASE + "/responses/{response_id}/{tail:.*}", not_stored)
    api.router.add_route("HEAD", "/assistants/{assistant_id}", assistant_base)
    api.router.add_get("/assistants/{assistant_id}", assistant_base, allow_head=False)
    api.router.add_get(ASSISTANT_BASE + "/models", list_models)
    api.router.add_get(ASSISTANT_BASE + "/models/{model:.+}", retrieve_model)
    app.add_subapp(MOUNT_POINT, api)
    for prefix in ("/v1", "/api"):  # after the sub-app, so that its own URLs resolve first
        app.router.add_route("*", prefix, wrong_base_url)
        app.router.add_route("*", prefix + "/{tail:.*}", wrong_base_url)
    return api


@web.middleware
async def api_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turn every failure into an error in the shape of the handler's dialect (OpenAI's when it has
    none); a traceback goes to the log, never to the client."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - every failure is answered
        if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
            return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")  # never sent
        error = _as_api_error(request, exc)
    dialect = getattr(request.match_info.handler, "dialect", None) or (
        MESSAGES if speaks_anthropic(request) else CHAT)
    response = dialect.error_response(error, request.get(appkeys.REQUEST_ID))
    if error.status == 408:  # a body too slow to come: answered, and the connection let go
        return await answered_and_closed(request, response)
    return response


def _as_api_error(request: web.Request, exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.config_dict[appkeys.SETTINGS].max_body_bytes
        return APIError(413, f"The request body is too large (the limit is {limit} bytes).",
                        code="request_too_large")
    if isinstance(exc, web.HTTPException):
        if exc.status == 404:
            return unknown_url(request)
        if exc.status == 405:
            return APIError(405, f"Method {request.method} is not allowed for {request.path}.",
                            code="method_not_allowed", headers={"Allow": exc.headers.get("Allow", "")})
        return APIError(exc.status, exc.reason, type="invalid_request_error")
    return internal_error(request)


def internal_error(request: web.Request) -> APIError:
    """500 for a failure nobody answered; its traceback goes to the log (call within ``except``)."""
    logger.exception("unhandled error in request %s", request.get(appkeys.REQUEST_ID))
    return APIError(500, "The server had an error while processing your request.", type="server_error",
                    code="internal_error")
