"""Dialects: the inbound APIs an assistant speaks, each on its own URL beside the others.

A dialect reads its wire format into the gateway's request, and renders answers, stream events and
errors back in that format. Everything between (authentication, the assistant, admission, routing and
failover, usage, observers: ``api/calls.py``) is written once and does not know which dialect it serves.

Inside, a request is always in the internal form, Chat Completions (``ctx.body``): the assistant's
injection, policy plugins, limits and every provider adapter read that. A dialect other than Chat
Completions also keeps the client's request in its own form (``ctx.native_body``), with the
assistant injected in its own terms: a provider whose adapter says it speaks the dialect natively
(``ProviderAdapter.native_dialects``) is sent that body as it is (``complete_native``,
``stream_native``), so that what only that API has (thinking signatures, ``cache_control``, betas)
reaches it untouched; any other provider is sent the internal form and its answer is rendered back.

Dialects are offered by the ``riceball_dialects`` hook, so a plugin can add one:

    CHAT          POST .../v1/chat/completions    dialects/chat.py
    MESSAGES      POST .../v1/messages            dialects/messages.py
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pluggy

from riceball_proxy.errors import APIError

if TYPE_CHECKING:
    from aiohttp import web

    from riceball_proxy.context import ChatContext


class Dialect:
    """One inbound API. A subclass sets ``name`` and ``path`` and implements what its wire needs."""

    #: Its name: recorded on each usage row (``api``) and as a metric label.
    name: str = ""
    #: Where it is served, under an assistant's base (``/api/v1/assistants/{id}/v1``).
    path: str = ""

    def take(self, ctx: ChatContext, request: web.Request, body: Any, raw: bytes) -> None:
        """Take a request's parsed ``body`` (``raw``: its bytes): check it (400 naming the field), and set
        ``ctx.client_body``, ``ctx.body`` (the internal form), ``ctx.stream`` and, for a dialect a provider
        may speak natively, ``ctx.native_body`` and ``ctx.native_headers``."""
        raise NotImplementedError

    def inject(self, ctx: ChatContext) -> None:
        """Apply the assistant to ``ctx.native_body`` in the dialect's own terms (the internal form is
        injected by the ``riceball_prepare_request`` built-in). Nothing to do without a native body."""

    def native_body_for(self, ctx: ChatContext, target) -> dict[str, Any]:
        """``ctx.native_body`` for one of the assistant's targets (its model, its parameters, forced)."""
        native = ctx.native_body or {}  # called only for a call that has one
        if ctx.resolved_assistant.as_prepared(target):
            return native
        body = {**native, "model": target.model}
        self.apply_params(body, target.params, True)
        return body

    def with_breakpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        """A native body with automatic prompt-cache breakpoints (``riceball_proxy.caching``), for a
        provider that caches at breakpoints; as it is for a dialect that has no place for them."""
        return body

    def apply_params(self, body: dict[str, Any], params: dict[str, Any], locked) -> None:
        """Parameters, by their Chat Completions names, on a native body (``locked``: the names forced, or
        True for all of them)."""
        raise NotImplementedError

    def native_usage(self, usage: Any) -> Any:
        """A native answer's usage as Chat Completions usage (what ``ctx.record_usage`` reads)."""
        return usage

    def note_native_answer(self, ctx: ChatContext, answer: dict[str, Any]) -> None:
        """Note a native answer's id, model and finish reasons (``ctx.note_answer``)."""

    async def answer(self, ctx: ChatContext, answer: dict[str, Any]) -> dict[str, Any]:
        """A whole answer as the client gets it: ``answer`` is the native answer when the call was served
        natively (``ctx.served_natively``), else a ``chat.completion`` (transformed by the plugins)."""
        raise NotImplementedError

    def events(self, ctx: ChatContext, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream's bytes as sent to the client, from the adapter's payloads: native events when
        served natively, else ``chat.completion.chunk`` JSON. Records usage on ``ctx`` as it goes."""
        raise NotImplementedError

    def error_response(self, error: APIError, request_id: str | None) -> web.Response:
        """An error answered before the answer began, in the dialect's shape and with its status."""
        return error.response()

    def error_event(self, ctx: ChatContext, error: APIError) -> bytes:
        """The last event of a stream that failed after it began."""
        raise NotImplementedError


#: Headers that name a client's session (Claude Code's, Codex's): a translated call's ``prompt_cache_key``
#: when the client gave none, so that an OpenAI upstream routes the session's calls to one cache.
SESSION_HEADERS = ("x-claude-code-session-id", "session-id")


def session_cache_key(ctx: ChatContext, request: web.Request) -> None:
    """Fill the internal form's ``prompt_cache_key`` from the client's session header, when it has none
    (a derived field: left out for a target that refuses it)."""
    if ctx.body.get("prompt_cache_key"):
        return
    for name in SESSION_HEADERS:
        value = request.headers.get(name)
        if value and len(value) <= 256:
            ctx.body["prompt_cache_key"] = value
            ctx.derived_fields |= {"prompt_cache_key"}
            return


def dialects(pm: pluggy.PluginManager) -> dict[str, Dialect]:
    """Every dialect the registered plugins offer, by name; earlier-called plugins win."""
    found: dict[str, Dialect] = {}
    for offered in pm.hook.riceball_dialects():
        for dialect in offered or ():
            found.setdefault(dialect.name, dialect)
    return found
