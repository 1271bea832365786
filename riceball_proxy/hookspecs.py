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
        spec.riceball_policy = Policy(how, isolated, fold)  # type: ignore[attr-defined]  # a mark on the function
        return spec

    return mark


# --- lifecycle ------------------------------------------------------------------------------------


@hookspec
@runs("all")
def riceball_startup(app):
    """Called once the application has opened its resources (database pool, HTTP client).

    ``app`` is the ``aiohttp.web.Application``; its shared objects are under the keys of
    ``riceball_proxy.appkeys`` (``from riceball_proxy.plugin import appkeys``). *Awaited*: return None
    or an awaitable. An exception stops the start.
    """


@hookspec
@runs("all", isolated=True)
def riceball_shutdown(app):
    """Called when the application stops, before its resources close.

    *Awaited*: return None or an awaitable. *Isolated*: an exception is logged, and every other
    implementation (the built-in usage writer's included) still runs; the shutdown goes on.
    """


# --- 0. a call arrives ------------------------------------------------------------------------------


@hookspec
@runs("all", isolated=True)
def riceball_request_started(request, ctx):
    """Observes an API call as it arrives, before anything is checked: ``request`` is the
    ``aiohttp.web.Request`` (its headers: an inbound W3C ``traceparent``...), ``ctx`` the call's new
    ``ChatContext`` (``ctx.request_id``, ``ctx.started_at``; nothing else is known yet). Every call that
    ``riceball_request_finished`` will observe is announced here first, refused ones included. Set
    ``ctx.trace_id`` to name the trace the call belongs to in its access-log line. *Awaited*, on the
    request path: keep it to microseconds. *Isolated*: an exception is logged, and the call goes on.
    """


# --- 1. authenticate ------------------------------------------------------------------------------


@hookspec
@runs("first")
def riceball_authenticate(request, assistant_id):
    """Identifies the caller of an API request.

    ``request`` is the ``aiohttp.web.Request``, ``assistant_id`` the ``uuid.UUID`` from its path.
    Return a ``Principal`` (or an awaitable of one) for a caller you know, None when the request is
    not yours to judge. *Awaited*, in call order; the first Principal wins. Raise ``APIError`` to
    refuse the request outright, or return a Principal with ``refused`` set for a caller you know but
    refuse: it is answered 401 and still recorded as that caller's call. With no Principal from any
    plugin the request is answered 401. The built-in plugin checks ``Authorization: Bearer sk-...``
    keys: 401 for a missing or unknown key, a refused Principal for a revoked or expired one ("This
    API key is revoked."). A Principal whose ``assistant_ids`` excludes the assistant gets 403.
    """


# --- 5. prepare the upstream request -------------------------------------------------------------


@hookspec
@runs("all")
def riceball_prepare_request(ctx):
    """Changes the request that will be sent upstream: change ``ctx.body`` in place.

    ``ctx`` is the ``ChatContext``: ``ctx.body`` is the upstream request body (a dict in OpenAI's Chat
    Completions format), ``ctx.assistant`` the assistant, ``ctx.principal`` the caller. The built-in
    injection runs first (``tryfirst``; see [api.md](api.md#what-the-assistant-does-to-a-request)), so
    you see the assistant's model, system prompt and parameters already in place. *Awaited*: return
    None or an awaitable. Raise ``APIError`` to refuse the request.
    """


# --- 4. admit -----------------------------------------------------------------------------------------


@hookspec
@runs("all")
def riceball_admit_caller(ctx):
    """Admits the caller, or refuses it, before its request's body is read.

    What can be judged from who calls (``ctx.principal``) and which assistant (``ctx.assistant``)
    alone: a caller refused here never has its body read and parsed, which matters for a gateway's
    memory when bodies are large. ``ctx.body`` is still empty. Raise ``APIError`` to refuse (429 for
    a limit); whatever you take here, give back in ``riceball_settle``, which is called for every call
    that reached this hook. *Awaited*, in call order. The built-in limits are ``trylast``: they take
    ``max_parallel``'s slot here, and the rest in ``riceball_admit``.
    """


@hookspec
@runs("all")
def riceball_admit(ctx):
    """Admits the call, or refuses it, just before it goes upstream: rate limits, budgets, quotas.

    ``ctx.body`` is the prepared upstream body (the system prompt injected, the ``max_tokens`` ceiling
    applied) and ``ctx.provider`` its provider. Raise ``APIError`` to refuse (429 for a limit); put
    headers for the answer (whatever it turns out to be) in ``ctx.response_headers``. Whatever you take
    here (a slot, a reservation), give back in ``riceball_settle``, which is called for every call that
    reached this hook, admitted or not. *Awaited*, in call order. The built-in limits
    ([limits.md](limits.md)) are ``trylast``; disable them
    (``RICEBALL_DISABLE_PLUGINS=riceball_proxy.builtin.limits``) to put a policy of your own in their
    place.
    """


@hookspec
@runs("all", isolated=True)
def riceball_settle(ctx, outcome):
    """Gives back what ``riceball_admit`` took, once the call has ended.

    Called after its answer has been sent and before the observers, so that a client's next call finds
    its slot free: ``outcome.usage`` and ``outcome.cost_usd`` are what the call really used (priced at
    the target that served it; estimated, ``outcome.usage.estimated``, when the upstream reported
    nothing but worked on the call), ``outcome.status`` how it ended. Keep what admission took in
    ``ctx.stash`` under your plugin's name. *Awaited* (the client's next call on the same connection
    waits for it: keep it short). *Isolated*: an exception is logged. A client that goes away can
    cancel the call while it is being settled: shield what must finish (the built-in limits settle
    shared counters in a task of their own).
    """


# --- 6. provider selection -------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_provider_types():
    """Offers provider types: return an iterable of ``ProviderType(name, label, adapter, default_base_url="")``.

    A provider's ``type`` selects the ``ProviderType`` of that name; its ``adapter`` is called as
    ``adapter(provider, api_key, session)`` once per provider and must return a ``ProviderAdapter``,
    whose async ``complete(body)``, ``stream(body)`` and ``list_models()`` talk to the upstream (see
    [writing-a-provider.md](writing-a-provider.md)). When two plugins offer the same name, the one
    called first (the later-registered one: an installed plugin) wins over the built-in. *Selector*:
    return the types themselves, not an awaitable.
    """


# --- the inbound APIs -----------------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_dialects():
    """Offers dialects: return an iterable of ``Dialect``.

    A dialect is an inbound API, served under every assistant's base URL at its ``path``
    (``/api/v1/assistants/{id}/v1{path}``) through the same pipeline as the built-in ones (keys,
    limits, injection, failover, usage, metrics). It reads its wire format into the internal form,
    Chat Completions (``take``), and renders answers (``answer``), stream events (``events``) and errors
    (``error_response``, ``error_event``) back in its own; a dialect that a provider can speak natively
    also keeps the client's body in its own form (``ctx.native_body``, injected by ``inject``) for the
    adapters that declare it in ``native_dialects``. Its ``name`` is recorded on each usage row
    (``api``) and as a metric label. The built-ins are ``chat`` (Chat Completions), ``messages``
    (Anthropic Messages) and ``responses`` (OpenAI Responses); see
    [architecture.md](architecture.md#dialects). When two plugins offer the same name, the one called
    first (an installed plugin) wins over the built-in. Read once, when the app is built. *Selector*:
    return the dialects themselves.
    """


# --- 7. transform the answer ---------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_transform_stream(ctx):
    """Wraps the stream of chunks sent to the client.

    Return None, or a function that takes an async iterator of chunks (dicts in OpenAI's
    ``chat.completion.chunk`` format) and returns one. The gateway folds the returned functions in call
    order. When no plugin returns one, upstream bytes are forwarded as they are (the fast path).
    *Selector*: return the function itself, not an awaitable.
    """


@hookspec
@runs("fold", fold="response")
def riceball_transform_response(ctx, response):
    """Changes a non-streamed answer (the ``chat.completion`` dict) before it is sent.

    Return a new dict, or None to leave it as it is. *Awaited*, in call order: each implementation sees
    the previous one's result.
    """


# --- each upstream attempt -------------------------------------------------------------------------


@hookspec
@runs("all", isolated=True)
def riceball_attempt_started(ctx, target, attempt):
    """Observes an upstream attempt as it starts: ``target`` is the ``Target`` tried (provider id and
    model; ``ctx.selected_provider`` is its provider), ``attempt`` its number (1 for the first; failover
    makes more). Returns headers to add to this attempt's upstream requests (W3C ``traceparent``...), or
    None: every ``UpstreamCall`` the adapter makes meanwhile sends them (beside, never instead of, the
    adapter's own headers). *Awaited*, on the request path, just before the upstream call: keep it to
    microseconds. *Isolated*: an exception is logged, and the attempt goes on.
    """


@hookspec
@runs("all", isolated=True)
def riceball_attempt_finished(ctx, target, attempt, error):
    """Observes the end of an upstream attempt (one ``riceball_attempt_started`` announced): ``error``
    is the ``APIError`` it failed with (the deadline's, for one cut short by it), None when it answered;
    for a stream, answering is its first chunk, and the rest belongs to the call, which
    ``riceball_request_finished`` observes. An attempt cut short by the client leaving (or by the
    gateway's shutdown) gets no call here: ``riceball_request_finished`` then says so
    (``outcome.client_disconnected``, status 499 or 503). *Awaited*, on the request path. *Isolated*.
    """


# --- 9. request finished ----------------------------------------------------------------------------


@hookspec
@runs("all", isolated=True)
def riceball_request_finished(ctx, outcome):
    """Observes a finished API call, after the response has been sent.

    Every call, refused ones included (then ``ctx.principal`` or ``ctx.assistant`` may be None).
    ``outcome`` is an ``Outcome``: HTTP status, error type, latency, time to first token and token
    usage; a client that went away mid-stream gives ``outcome.client_disconnected`` and status 499.
    Observers run off the request path, one outcome after another, and are awaited at shutdown. By
    then ``ctx.body`` and ``ctx.client_body`` no longer hold the request's bulk (``messages``,
    ``tools``, ``functions``, ``response_format``, ``prediction``, ``logit_bias``, ``metadata``): a
    queue of outcomes never holds prompts; read what you need in an earlier hook. The queue holds at
    most ``RICEBALL_OBSERVER_QUEUE_SIZE`` outcomes (10,000); when slow observers let it fill up, a
    finishing request waits for room before its handler returns (back-pressure, counted by
    ``riceball_observer_backpressure_total``), so no outcome, and no usage row, is ever dropped.
    *Awaited*. *Isolated*: an exception is logged, never reaches the client, and does not keep the
    other observers (usage, metrics) from this call.
    """


# --- admin panel ------------------------------------------------------------------------------------


@hookspec
@runs("select")
def riceball_admin_setup(admin_app):
    """Extends the admin panel when its sub-application is built.

    ``admin_app`` is the ``aiohttp.web.Application`` mounted at ``/admin/``: add routes with
    ``admin_app.router``. Routes added here are behind the admin session and CSRF checks.
    Synchronous: the return value is ignored.
    """


def reference(hook: str) -> str:
    """A hook's docstring as the Markdown of its section in docs/plugins.md (``scripts/hook-reference``
    writes them there; a test keeps them equal)."""
    import inspect
    import re

    return re.sub(r"``(.+?)``", r"`\1`", inspect.getdoc(globals()[hook]) or "")
