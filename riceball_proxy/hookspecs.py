"""Every hook a RiceBall plugin can implement, in the order a request meets them.

Each spec carries its calling policy (``@runs``), declared here once and honoured by the one runner,
:func:`riceball_proxy.plugins.run_hook`. pluggy itself calls the implementations, so hook wrappers,
``add_hookcall_monitoring`` and tracing see every call:

* ``all``: pluggy calls every implementation; results that are awaitables are then awaited, in call
  order. A synchronous implementation's effects happen while pluggy calls it; an ``async def`` one's
  when its coroutine is awaited, after pluggy's call (and so after any wrapper) returns.
* ``first``: the same, and the first result that is not None (once awaited) wins; the coroutines
  after it are closed unawaited.
* ``fold``: pluggy calls each implementation on its own, in call order, with the previous one's
  result as the folded argument. Wrappers have nothing to wrap there and are refused at registration.
* ``select``: synchronous; the results (not awaitables) are returned as they are.

``isolated``: an implementation that raises is logged and the others still run, the built-ins
included; otherwise the exception ends the call (and is the caller's to answer).

Implementations are called last-registered first: installed plugins before the built-in ones, which
are registered first. Built-ins that another plugin may replace are ``trylast``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import pluggy

hookspec = pluggy.HookspecMarker("riceball")

Spec = TypeVar("Spec", bound=Callable)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How a hook's implementations are called and their results used (see the module's docstring)."""

    how: str
    isolated: bool = False
    #: For ``fold``: the argument each implementation's result replaces.
    fold: str | None = None


def runs(how: str, *, isolated: bool = False, fold: str | None = None) -> Callable[[Spec], Spec]:
    """Declare a spec's calling policy: ``all``, ``first``, ``fold`` or ``select``."""
    if how not in ("all", "first", "fold", "select") or (how == "fold") != (fold is not None):
        raise ValueError(f"not a policy: {how!r} (fold={fold!r})")

    def mark(spec: Spec) -> Spec:
        spec.riceball_policy = Policy(how, isolated, fold)
        return spec

    return mark


# --- lifecycle ------------------------------------------------------------------------------------


@hookspec
@runs("all")
def riceball_startup(app):
    """Called once the application has opened its resources (database pool, HTTP client).

    ``app`` is the ``aiohttp.web.Application``; its shared objects are under the keys of
    ``riceball_proxy.appkeys``. *Awaited*: return None or an awaitable. An exception stops the
    start-up.
    """


@hookspec
@runs("all", isolated=True)
def riceball_shutdown(app):
    """Called when the application stops, before its resources are closed.

    *Awaited*: return None or an awaitable. *Isolated*: an exception is logged, and every other
    implementation (the built-in usage writer's included) still runs.
    """


# --- 1. authenticate ------------------------------------------------------------------------------


@hookspec
@runs("first")
def riceball_authenticate(request, assistant_id):
    """Identify the caller of an API request.

    ``request`` is the ``aiohttp.web.Request``; ``assistant_id`` the ``uuid.UUID`` from its path.
    Return a ``riceball_proxy.context.Principal`` (or an awaitable of one) for a caller you know,
    None when the request is not yours to judge. *Awaited*, in call order; the first Principal wins.
    Raise ``riceball_proxy.errors.APIError`` to refuse the request outright, or return a Principal
    with ``refused`` set for a caller you know but refuse (a revoked key): it is answered 401 and
    still recorded as that caller's call. With no Principal from any plugin the request is answered 401.
    """


# --- 5. prepare the upstream request -------------------------------------------------------------


@hookspec
@runs("all")
def riceball_prepare_request(ctx):
    """Change the request that will be sent upstream.

    ``ctx`` is the ``riceball_proxy.context.ChatContext``: ``ctx.body`` is the upstream request body
    (a dict in OpenAI's Chat Completions format), ``ctx.assistant`` the assistant, ``ctx.principal``
    the caller. Change ``ctx.body`` in place. The built-in assistant-config injection runs first
    (``tryfirst``) and synchronously, so policy plugins and wrappers see the injected body. *Awaited*:
    return None or an awaitable.
    Raise ``riceball_proxy.errors.APIError`` to refuse the request.
    """


# --- 4. admit -----------------------------------------------------------------------------------------


@hookspec
@runs("all")
def riceball_admit_caller(ctx):
    """Admit the caller, or refuse it, before its request's body is read: what can be judged from who
    calls and which assistant alone, so that a caller over such a limit never has its body read and
    parsed (the built-in limits take ``max_parallel``'s slot here).

    ``ctx`` is the ``riceball_proxy.context.ChatContext`` with ``principal`` and ``assistant`` set;
    ``ctx.body`` is still empty. Raise ``riceball_proxy.errors.APIError`` to refuse (429 for a limit).
    What an implementation takes here it gives back in ``riceball_settle``, which is called for every
    call that reached this hook. *Awaited*, in call order; the built-in limits are ``trylast``.
    """


@hookspec
@runs("all")
def riceball_admit(ctx):
    """Admit the call, or refuse it, just before it goes upstream (limits, budgets, quotas).

    ``ctx`` is the ``riceball_proxy.context.ChatContext``, its upstream body prepared (so an
    implementation sees the injected system prompt and the ``max_tokens`` ceiling). Raise
    ``riceball_proxy.errors.APIError`` to refuse (429 for a limit). Whatever an implementation takes
    here (a slot, a reservation) it gives back in ``riceball_settle``, which is called for every call
    that reached this hook, admitted or not. Headers for the answer go in ``ctx.response_headers``.
    *Awaited*, in call order; the built-in limits (``riceball_proxy.builtin.limits``) are ``trylast``.
    """


@hookspec
@runs("all", isolated=True)
def riceball_settle(ctx, outcome):
    """Give back what ``riceball_admit`` took, now that the call is over: ``outcome`` says how it
    ended, ``outcome.usage`` and ``outcome.cost_usd`` what it really used.

    Called as the call ends, after its answer has been sent and before the observers, so that a
    client's next call finds its slot free. *Awaited*. *Isolated*: an exception is logged.
    """


# --- 6. provider selection -------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_provider_types():
    """Offer provider types: return an iterable of ``riceball_proxy.providers.ProviderType``.

    A provider's ``type`` (stored with the provider) selects the ``ProviderType`` of that name, whose
    ``adapter`` builds the ``ProviderAdapter`` that talks to the upstream. When two plugins offer the
    same name, the one called first (the later-registered one) wins, so an installed plugin can
    replace a built-in type. *Selector*: return the types themselves, not an awaitable.
    """


# --- the inbound APIs -----------------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_dialects():
    """Offer dialects: return an iterable of ``riceball_proxy.dialects.Dialect``.

    Each dialect is an inbound API, served under every assistant's base URL at its ``path``
    (``/api/v1/assistants/{id}/v1{path}``) through the same pipeline as Chat Completions: it reads its
    wire format into the internal form (Chat Completions) and renders answers, stream events and
    errors back in its own. When two plugins offer the same name, the one called first (the
    later-registered one) wins. Read when the app is built. *Selector*: return the dialects themselves.
    """


# --- 7. transform the answer ---------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_transform_stream(ctx):
    """Wrap the stream of chunks sent to the client.

    Return None, or a function that takes an async iterator of chunks (dicts in OpenAI's
    ``chat.completion.chunk`` format) and returns an async iterator of chunks. The gateway folds the
    returned functions in call order. When no plugin returns one, upstream bytes are forwarded
    untouched. *Selector*: return the function itself, not an awaitable.
    """


@hookspec
@runs("fold", fold="response")
def riceball_transform_response(ctx, response):
    """Change a non-streamed answer before it is sent.

    ``response`` is the ``chat.completion`` dict. Return a new dict, or None to leave it as it is.
    *Awaited*, in call order: each implementation sees the previous one's result.
    """


# --- 9. request finished ----------------------------------------------------------------------------


@hookspec
@runs("all", isolated=True)
def riceball_request_finished(ctx, outcome):
    """Observe a finished API call, after the response has been sent.

    ``outcome`` is a ``riceball_proxy.context.Outcome``: HTTP status, error type, latency, time to
    first token and token usage. *Awaited*. *Isolated*: an exception is logged, never reaches the
    client, and does not keep the other observers (usage, metrics) from this call.
    """


# --- admin panel ------------------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_admin_setup(admin_app):
    """Extend the admin panel when its sub-application is built.

    ``admin_app`` is the ``aiohttp.web.Application`` mounted at ``/admin/``: add routes with
    ``admin_app.router``. Routes added here are behind the admin session and CSRF checks.
    Synchronous: the return value is ignored.
    """
