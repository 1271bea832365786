"""The OpenAI-compatible API: a sub-application mounted at ``/api/v1``.

    POST /api/v1/assistants/{assistant_id}/v1/chat/completions    api/chat.py (the pipeline)
    GET  /api/v1/assistants/{assistant_id}/v1/models              api/models.py
    GET  /api/v1/assistants/{assistant_id}/v1/models/{model}

The stages the handlers share are in ``api/stages.py``, the SSE answer in ``api/streaming.py``.
Every error it answers is in OpenAI's shape, with the matching status.
"""
from __future__ import annotations

import logging

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.chat import chat_completions
from riceball_proxy.api.models import list_models, retrieve_model
from riceball_proxy.api.stages import CLIENT_CLOSED_REQUEST
from riceball_proxy.bodies import answered_and_closed
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

MOUNT_POINT = "/api/v1"
ASSISTANT_BASE = "/assistants/{assistant_id}/v1"


def unknown_url(request: web.Request) -> APIError:
    """404 for a URL the API does not serve, naming the form it does (the SDK's ``base_url``)."""
    return APIError(404, f"Unknown request URL: {request.method} {request.path}. Each assistant is served at "
                         f"{MOUNT_POINT}{ASSISTANT_BASE}: use that, with the assistant's id, as the SDK's base URL "
                         "(e.g. base_url='http://127.0.0.1:8000/api/v1/assistants/<assistant id>/v1').",
                    code="unknown_url")


async def wrong_base_url(request: web.Request) -> web.Response:
    """Every other URL under ``/v1/`` and ``/api/``: the mistakes a first base URL makes, answered as the SDKs read."""
    return unknown_url(request).response()


def setup_api(app: web.Application) -> web.Application:
    """Mount the API sub-application on ``app``, and answer the URLs near it that it does not serve."""
    api = web.Application(middlewares=[api_error_middleware])
    api.router.add_post(ASSISTANT_BASE + "/chat/completions", chat_completions)
    api.router.add_get(ASSISTANT_BASE + "/models", list_models)
    api.router.add_get(ASSISTANT_BASE + "/models/{model:.+}", retrieve_model)
    app.add_subapp(MOUNT_POINT, api)
    for prefix in ("/v1", "/api"):  # after the sub-app, so that its own URLs resolve first
        app.router.add_route("*", prefix, wrong_base_url)
        app.router.add_route("*", prefix + "/{tail:.*}", wrong_base_url)
    return api


@web.middleware
async def api_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turn every failure into OpenAI's error shape; a traceback goes to the log, never to the client."""
    try:
        return await handler(request)
    except APIError as exc:
        if exc.status == 408:  # a body too slow to come: answered, and the connection let go
            return await answered_and_closed(request, exc.response())
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.config_dict[appkeys.SETTINGS].max_body_bytes
        return APIError(413, f"The request body is too large (the limit is {limit} bytes).",
                        code="request_too_large").response()
    except web.HTTPException as exc:
        if exc.status == 404:
            return unknown_url(request).response()
        if exc.status == 405:
            return APIError(405, f"Method {request.method} is not allowed for {request.path}.",
                            code="method_not_allowed").response(headers={"Allow": exc.headers.get("Allow", "")})
        return APIError(exc.status, exc.reason, type="invalid_request_error").response()
    except ConnectionResetError:
        if request.transport is None or request.transport.is_closing():  # the client went away mid-answer
            return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")  # never sent
        return internal_error(request)
    except Exception:
        return internal_error(request)


def internal_error(request: web.Request) -> web.Response:
    """500 for a failure nobody answered; its traceback goes to the log (call within ``except``)."""
    logger.exception("unhandled error in request %s", request.get(appkeys.REQUEST_ID))
    return APIError(500, "The server had an error while processing your request.", type="server_error",
                    code="internal_error").response()
