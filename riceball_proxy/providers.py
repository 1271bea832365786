"""Provider types and the adapter interface that talks to an upstream."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import pluggy

from riceball_proxy.db.providers import Provider
from riceball_proxy.errors import APIError
from riceball_proxy.upstream import ConnectionGate, ErrorParser, UpstreamCall, json_events, mask_secret, upstream_error

logger = logging.getLogger(__name__)


class ProviderAdapter:
    """Talks to one upstream provider in its own wire format, and to the gateway in OpenAI's.

    An adapter is built per provider (not per request) and shares the app's ClientSession; every call
    made through :meth:`call` waits for a turn at the provider's own :class:`ConnectionGate` (``gate``,
    set by the gateway), so a provider with all its connections busy never delays another provider.
    Errors are raised as ``riceball_proxy.errors.APIError`` already in OpenAI's shape.
    """

    #: The provider's bound on calls at once; None (an adapter built outside the gateway): no bound.
    gate: ConnectionGate | None = None
    #: Turns the upstream's error answers into APIErrors in OpenAI's shape; a provider whose upstream
    #: is sometimes overloaded says which statuses: ``functools.partial(upstream_error, retryable=...)``.
    error_parser: ErrorParser = staticmethod(upstream_error)

    def __init__(self, provider: Provider, api_key: str | None, session: aiohttp.ClientSession):
        self.provider = provider
        self.api_key = api_key
        self.session = session
        # The provider's connect and read timeouts (no total: a stream may last as long as it flows).
        # An adapter is rebuilt when its provider changes, so this is made once.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=provider.connect_timeout, sock_read=provider.read_timeout
        )

    def call(self, method: str, url, *, headers: dict[str, str], body: Any = None,
             error_parser: ErrorParser | None = None, request_id: str | None = None) -> UpstreamCall:
        """An upstream request through the shared session, with the provider's timeouts, gate and key
        redaction; ``request_id`` (the API request's) is sent as ``X-Request-ID``."""
        return UpstreamCall(self.session, method, url, headers=headers, body=body, timeout=self.timeout,
                            secret=self.api_key, error_parser=error_parser or self.error_parser, gate=self.gate,
                            request_id=request_id)

    async def complete(self, body: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        """Send a non-streamed request (OpenAI body) and return the ``chat.completion`` dict.

        ``request_id`` is the API request's id: pass it to :meth:`call`.
        """
        raise NotImplementedError

    #: True for an adapter that sends an assistant message's ``reasoning_details`` (signed reasoning a
    #: dialect restored from its own form) back to its provider; for the others the gateway leaves them out.
    reads_reasoning_details: bool = False
    #: True for a provider that caches a prompt's prefix up to the blocks a request marks with
    #: ``cache_control`` (Anthropic): an assistant with automatic prompt caching places such marks on
    #: calls that set none (``riceball_proxy.caching``).
    cache_breakpoints: bool = False
    #: The dialects (``riceball_proxy.dialects``: ``"messages"``...) the provider's API speaks itself. A
    #: call that came in by one of them is sent as its client wrote it, the assistant injected in that
    #: dialect's terms, through :meth:`complete_native` and :meth:`stream_native`; any other call is
    #: translated to Chat Completions and sent through :meth:`complete` and :meth:`stream`.
    native_dialects: frozenset[str] = frozenset()

    async def complete_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                              request_id: str | None = None) -> dict[str, Any]:
        """Send a non-streamed request in ``dialect``'s own form; return the answer in that form.
        ``headers`` are the client's that the dialect passes on (its API's version and betas)."""
        raise NotImplementedError

    def stream_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                      request_id: str | None = None) -> AsyncIterator[bytes]:
        """Send a streamed request in ``dialect``'s own form; yield each event's JSON bytes, untouched.
        As :meth:`stream`: every failure raises ``APIError`` (an error event, a stream cut short)."""
        raise NotImplementedError

    async def count_tokens_native(self, dialect: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                                  request_id: str | None = None) -> int | None:
        """The tokens of a request's prompt in ``dialect``'s own form, counted by the provider; None when it
        has no way to count them (the gateway then estimates)."""
        return None

    def redact(self, text: str) -> str:
        """``text`` with the provider's API key (or a long enough start of it) masked."""
        return mask_secret(text, self.api_key)

    def stream(self, body: dict[str, Any], *, request_id: str | None = None) -> AsyncIterator[bytes]:
        """Send a streamed request and yield each ``chat.completion.chunk`` as the JSON bytes of an SSE event.

        The ``[DONE]`` sentinel is not yielded. Every failure raises ``APIError``, whenever it happens:
        a refusal, a broken connection, an error event, an event that is not a chunk, a stream that
        ends before the answer is complete. Nothing but chunks is ever yielded.
        """
        raise NotImplementedError

    async def list_models(self) -> list[dict[str, Any]]:
        """The upstream's models as OpenAI ``model`` objects."""
        raise NotImplementedError


def adapter_failed(provider_name: str, exc: Exception) -> APIError:
    """The APIError for an exception an adapter raised that is not an APIError (a bug in a provider
    plugin, an upstream answer it did not expect): 502 ``provider_error``, which fails over and counts
    against the target's circuit like any upstream failure. The traceback goes to the log, with the
    provider's name; the client learns nothing of the plugin's insides.

    The one place plugin exceptions are converted: the gateway calls it around ``complete``,
    ``stream`` and every step of a stream's iteration, so adapters need not list what to catch."""
    logger.error("provider %r: its adapter raised %s", provider_name, type(exc).__name__, exc_info=exc)
    return APIError(502, f"The provider '{provider_name}' failed to handle the call.", type="api_error",
                    code="provider_error")


class StreamTranslator(Protocol):
    """Turns one upstream stream's events into OpenAI chunks (see :class:`TranslatingAdapter`)."""

    #: True once the upstream's last event arrived.
    done: bool

    def feed(self, event: Any) -> list[bytes]:
        """The chunks one upstream event makes; raises ``APIError`` for an error event."""

    def finish(self) -> list[bytes]:
        """The chunks that close the answer (the usage chunk); raises ``APIError`` unless ``done``."""


class TranslatingAdapter(ProviderAdapter):
    """An adapter for an upstream with a wire format of its own, streamed as JSON Server-Sent Events.

    A subclass says where a stream is requested and how its events translate; this class runs the
    stream, so every such adapter fails the same way: every failure raises ``APIError``.
    """

    def headers(self) -> dict[str, str]:
        """The headers of every upstream request (the API key included)."""
        raise NotImplementedError

    def stream_request(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The URL and the upstream body of a streamed request for ``body`` (OpenAI format)."""
        raise NotImplementedError

    #: The translator class: ``translator(model, include_usage)`` makes one for each stream.
    translator: Callable[[str, bool], StreamTranslator]

    def stream_translator(self, body: dict[str, Any]) -> StreamTranslator:
        """A fresh translator for one stream of ``body`` (by default ``translator(model, include_usage)``)."""
        return self.translator(body["model"], bool((body.get("stream_options") or {}).get("include_usage")))

    async def stream(self, body: dict[str, Any], *, request_id: str | None = None) -> AsyncIterator[bytes]:
        url, request = self.stream_request(body)
        translator = self.stream_translator(body)
        async with self.call("POST", url, headers=self.headers(), body=request, request_id=request_id) as response:
            async for event in json_events(response):
                for payload in translator.feed(event):
                    yield payload
                if translator.done:
                    break
        for payload in translator.finish():
            yield payload


@dataclasses.dataclass(frozen=True)
class ProviderType:
    """A kind of upstream that providers can be configured with (``openai``, ``anthropic``...)."""

    name: str
    label: str
    #: Builds the adapter: ``adapter(provider, api_key, session)``.
    adapter: Callable[[Provider, str | None, aiohttp.ClientSession], ProviderAdapter]
    default_base_url: str = ""
    #: What is likely wrong with a base URL, said as a warning when a provider is added or tested (None:
    #: it looks right); for instance a missing version path that every call would then lack.
    check_base_url: Callable[[str], str | None] | None = None

    def base_url_warning(self, base_url: str) -> str | None:
        return None if self.check_base_url is None else self.check_base_url(base_url)


def provider_types(pm: pluggy.PluginManager) -> dict[str, ProviderType]:
    """Every provider type the registered plugins offer, by name; earlier-called plugins win."""
    types: dict[str, ProviderType] = {}
    for offered in pm.hook.riceball_provider_types():
        for provider_type in offered or ():
            types.setdefault(provider_type.name, provider_type)
    return types
