"""Every hook a RiceBall plugin can implement, in the order a request meets them.

pluggy calls hooks synchronously. Each hook below says how its results are used:

* *awaited*: an implementation may return a value, an awaitable or None; the gateway awaits each
  result in call order (see :func:`riceball_proxy.plugins.await_me_maybe`).
* *selector*: the implementation returns a plain object (or None) at once; the I/O happens later in
  that object's async methods.

Implementations are called last-registered first: installed plugins before the built-in ones, which
are registered first. Built-ins that another plugin may replace are ``trylast``.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("riceball")


# --- lifecycle ------------------------------------------------------------------------------------


@hookspec
def riceball_startup(app):
    """Called once the application has opened its resources (database pool, HTTP client).

    ``app`` is the ``aiohttp.web.Application``; its shared objects are under the keys of
    ``riceball_proxy.appkeys``. *Awaited*: return None or an awaitable. An exception stops the
    start-up.
    """


@hookspec
def riceball_shutdown(app):
    """Called when the application stops, before its resources are closed.

    *Awaited*: return None or an awaitable. Exceptions are logged and do not stop the shutdown.
    """


# --- 1. authenticate ------------------------------------------------------------------------------


@hookspec
def riceball_authenticate(request, assistant_id):
    """Identify the caller of an API request.

    ``request`` is the ``aiohttp.web.Request``; ``assistant_id`` the ``uuid.UUID`` from its path.
    Return a ``riceball_proxy.context.Principal`` (or an awaitable of one) for a caller you know,
    None when the request is not yours to judge. *Awaited*, in call order; the first Principal wins.
    Raise ``riceball_proxy.errors.APIError`` to refuse the request outright, or return a Principal
    with ``refused`` set for a caller you know but refuse (a revoked key): it is answered 401 and
    still recorded as that caller's call. With no Principal from any plugin the request is answered 401.
    """


# --- 3. prepare the upstream request -------------------------------------------------------------


@hookspec
def riceball_prepare_request(ctx):
    """Change the request that will be sent upstream.

    ``ctx`` is the ``riceball_proxy.context.ChatContext``: ``ctx.body`` is the upstream request body
    (a dict in OpenAI's Chat Completions format), ``ctx.assistant`` the assistant, ``ctx.principal``
    the caller. Change ``ctx.body`` in place. The built-in assistant-config injection runs first
    (``tryfirst``), so policy plugins see the injected body. *Awaited*: return None or an awaitable.
    Raise ``riceball_proxy.errors.APIError`` to refuse the request.
    """


# --- 4. provider selection -------------------------------------------------------------------------


@hookspec
def riceball_provider_types():
    """Offer provider types: return an iterable of ``riceball_proxy.providers.ProviderType``.

    A provider's ``type`` (stored with the provider) selects the ``ProviderType`` of that name, whose
    ``adapter`` builds the ``ProviderAdapter`` that talks to the upstream. When two plugins offer the
    same name, the one called first (the later-registered one) wins, so an installed plugin can
    replace a built-in type. *Selector*: return the types themselves, not an awaitable.
    """


# --- 6. transform the answer ---------------------------------------------------------------------


@hookspec
def riceball_transform_stream(ctx):
    """Wrap the stream of chunks sent to the client.

    Return None, or a function that takes an async iterator of chunks (dicts in OpenAI's
    ``chat.completion.chunk`` format) and returns an async iterator of chunks. The gateway folds the
    returned functions in call order. When no plugin returns one, upstream bytes are forwarded
    untouched. *Selector*: return the function itself, not an awaitable.
    """


@hookspec
def riceball_transform_response(ctx, response):
    """Change a non-streamed answer before it is sent.

    ``response`` is the ``chat.completion`` dict. Return a new dict, or None to leave it as it is.
    *Awaited*, in call order: each implementation sees the previous one's result.
    """


# --- 7. request finished ----------------------------------------------------------------------------


@hookspec
def riceball_request_finished(ctx, outcome):
    """Observe a finished API call, after the response has been sent.

    ``outcome`` is a ``riceball_proxy.context.Outcome``: HTTP status, error type, latency, time to
    first token and token usage. *Awaited*; exceptions are logged and never reach the client.
    """


# --- admin panel ------------------------------------------------------------------------------------


@hookspec
def riceball_admin_setup(admin_app):
    """Extend the admin panel when its sub-application is built.

    ``admin_app`` is the ``aiohttp.web.Application`` mounted at ``/admin/``: add routes with
    ``admin_app.router``. Routes added here are behind the admin session and CSRF checks.
    Synchronous: the return value is ignored.
    """
