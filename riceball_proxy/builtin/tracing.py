"""Traces and GenAI metrics over OpenTelemetry, made on the hooks like any plugin's.

One SERVER span per API call (every dialect), from its arrival (``riceball_request_started``: a
caller's W3C ``traceparent`` makes it a child of the caller's span) to its end
(``riceball_request_finished``, off the request path, with the end time the call really had). One CLIENT
span per upstream attempt, a child of it (``riceball_attempt_started`` / ``riceball_attempt_finished``),
whose ``traceparent`` goes with the attempt's upstream requests; a failed attempt carries ``error.type``,
and a stream's answering attempt lasts until the stream ends. Names and attributes follow the GenAI
semantic conventions (``gen_ai.*``); the gateway's own are under ``riceball.*``. Never the API key, and
message contents only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks.

Registered only when ``Settings.otel`` is set (``riceball_proxy.plugins``), as
``riceball_proxy.builtin.tracing``; without it nothing of OpenTelemetry is imported. See
docs/observability.md.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from riceball_proxy import __version__, hookimpl, telemetry
from riceball_proxy.dialects import SESSION_HEADERS
from riceball_proxy.settings import Telemetry

#: Where a call's spans wait in ``ctx.stash``.
STASH = "tracing"
#: What a call is, in the conventions' words (each dialect's call is a chat).
OPERATION = "chat"
#: The one event that carries contents, when they go as an event (``EVENT_ONLY``, ``SPAN_AND_EVENT``).
CONTENT_EVENT = "gen_ai.client.inference.operation.details"
#: Only the trace context goes upstream: a caller's W3C baggage stays inside (it may say who its users are).
OUTBOUND = TraceContextTextMapPropagator()
#: Error codes of the built-in limits: a call refused with one of them was refused by a limit.
LIMIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "limits_busy", "limits_unavailable",
                         "budget_needs_price"})


class CallTrace:
    """One call's spans while it lasts (in ``ctx.stash["tracing"]``)."""

    __slots__ = ("server", "context", "start_ns", "attempt", "answering", "answered_ns", "conversation",
                 "content", "output")

    def __init__(self, server: trace.Span, context: Any, start_ns: int, conversation: str | None) -> None:
        self.server = server
        #: The context the attempts' spans are children of (the server span's).
        self.context = context
        self.start_ns = start_ns
        #: The attempt under way, and the one that answered (kept until the call ends) with when it did.
        self.attempt: trace.Span | None = None
        self.answering: trace.Span | None = None
        self.answered_ns: int | None = None
        self.conversation = conversation
        #: Captured contents (attribute name -> JSON), when they are captured; the output's gathering.
        self.content: dict[str, str] | None = None
        self.output: Any = None


class Tracing:
    """The plugin: its tracer and meters are made at start-up and flushed at shutdown."""

    def __init__(self, settings: Telemetry) -> None:
        self.settings = settings
        self.capture_in_spans = settings.capture_content in ("SPAN_ONLY", "SPAN_AND_EVENT")
        self.capture_in_event = settings.capture_content in ("EVENT_ONLY", "SPAN_AND_EVENT")
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.tracer: trace.Tracer | None = None
        self.histograms: dict[str, Any] = {}

    # --- lifecycle ------------------------------------------------------------------------------------

    @hookimpl
    def riceball_startup(self, app):
        telemetry.quiet_sdk_logs()
        process = telemetry.resource(os.environ)
        if self.settings.traces:
            self.tracer_provider = telemetry.tracer_provider(self.settings, process)
            self.tracer = self.tracer_provider.get_tracer("riceball_proxy", __version__)
        self.meter_provider = telemetry.meter_provider(self.settings, process)
        if self.meter_provider is not None:
            meter = self.meter_provider.get_meter("riceball_proxy", __version__)
            self.histograms = {
                "tokens": meter.create_histogram(
                    "gen_ai.client.token.usage", unit="{token}", description="Tokens used by a call, by type",
                    explicit_bucket_boundaries_advisory=telemetry.TOKEN_BUCKETS),
                "duration": meter.create_histogram(
                    "gen_ai.client.operation.duration", unit="s", description="A call, from request to last byte",
                    explicit_bucket_boundaries_advisory=telemetry.DURATION_BUCKETS),
                "first_chunk": meter.create_histogram(
                    "gen_ai.client.operation.time_to_first_chunk", unit="s",
                    description="A streamed call, from request to its first chunk",
                    explicit_bucket_boundaries_advisory=telemetry.DURATION_BUCKETS),
            }

    @hookimpl
    async def riceball_shutdown(self, app):
        """Export what is left (each provider waits at most its exporter's timeout), off the event loop."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                await asyncio.to_thread(provider.shutdown)

    # --- a call's spans -----------------------------------------------------------------------------------

    @hookimpl
    def riceball_request_started(self, request, ctx):
        if self.tracer is None:
            return
        start_ns = time.time_ns()
        parent = propagate.extract(request.headers)  # OTEL_PROPAGATORS: W3C trace context and baggage
        url = request.url
        resource = request.match_info.route.resource
        span = self.tracer.start_span(OPERATION, context=parent, kind=SpanKind.SERVER, start_time=start_ns,
                                      attributes=_present({
                                          "gen_ai.operation.name": OPERATION,
                                          "http.request.method": request.method,
                                          "http.route": None if resource is None else resource.canonical,
                                          "url.path": request.path,
                                          "url.scheme": url.scheme,
                                          "server.address": url.host,
                                          "server.port": url.port,
                                          "client.address": ctx.client_addr,
                                          "user_agent.original": request.headers.get("User-Agent"),
                                          "riceball.request.id": ctx.request_id,
                                      }))
        context = span.get_span_context()
        if context.is_valid:
            ctx.trace_id = format(context.trace_id, "032x")
        conversation = next((request.headers[name][:256] for name in SESSION_HEADERS if request.headers.get(name)),
                            None)
        ctx.stash[STASH] = CallTrace(span, trace.set_span_in_context(span, parent), start_ns, conversation)

    @hookimpl
    def riceball_attempt_started(self, ctx, target, attempt):
        call: CallTrace | None = ctx.stash.get(STASH)
        if call is None:
            return None
        attributes: dict[str, Any] = {}
        if call.server.is_recording():
            provider = ctx.selected_provider
            name, host, port = telemetry.upstream(provider.type, provider.base_url)
            attributes = _present({
                "gen_ai.operation.name": OPERATION,
                "gen_ai.provider.name": name,
                "gen_ai.request.model": target.model,
                "gen_ai.request.stream": ctx.stream,
                "server.address": host,
                "server.port": port,
                "riceball.attempt": attempt,
                "riceball.provider.id": provider.id,
                "riceball.provider.name": provider.name,
                **telemetry.request_attributes({**ctx.body, **target.params}),
            })
            if (self.capture_in_spans or self.capture_in_event) and call.content is None:
                call.content = _input_content(ctx.body)
            if self.capture_in_spans:
                attributes.update(call.content or {})
        call.attempt = span = self.tracer.start_span(  # type: ignore[union-attr]  # a call's trace implies a tracer
            f"{OPERATION} {target.model}", context=call.context, kind=SpanKind.CLIENT, attributes=attributes)
        headers: dict[str, str] = {}
        OUTBOUND.inject(headers, context=trace.set_span_in_context(span))
        return headers

    @hookimpl
    def riceball_attempt_finished(self, ctx, target, attempt, error):
        call: CallTrace | None = ctx.stash.get(STASH)
        if call is None or call.attempt is None:
            return
        span, call.attempt = call.attempt, None
        if error is None:  # it answered: it ends with the call, which knows what it used
            call.answering, call.answered_ns = span, time.time_ns()
            return
        _failed(span, error.code or str(error.status), error.message)
        span.end()

    @hookimpl
    def riceball_request_finished(self, ctx, outcome):
        call: CallTrace | None = ctx.stash.pop(STASH, None)
        common = self._call_attributes(ctx, outcome)
        if call is not None:
            self._end_spans(ctx, outcome, call, common)
        if self.histograms:
            self._record_metrics(ctx, outcome, common)

    def _call_attributes(self, ctx, outcome) -> dict[str, Any]:
        """What the server span, the answering attempt's span and the metrics share."""
        attributes: dict[str, Any] = {"gen_ai.operation.name": OPERATION}
        if ctx.provider is not None:
            attributes["gen_ai.provider.name"] = telemetry.upstream(ctx.provider.type, ctx.provider.base_url)[0]
        if ctx.response_model is not None:
            attributes["gen_ai.response.model"] = ctx.response_model
        if outcome.status >= 400:
            attributes["error.type"] = outcome.error_code or outcome.error_type or str(outcome.status)
        if ctx.dialect is not None:
            attributes["riceball.api"] = ctx.dialect.name
        return attributes

    def _end_spans(self, ctx, outcome, call: CallTrace, common: dict[str, Any]) -> None:
        end_ns = call.start_ns + int(outcome.latency_ms * 1_000_000)
        answer = _answer_attributes(ctx, outcome)
        if call.attempt is not None:  # cut short: the client left, or the gateway stopped
            _failed(call.attempt, common.get("error.type", "cancelled"), outcome.error_message or
                    "The call ended before this attempt did.")
            call.attempt.end(end_ns)
        if call.answering is not None:
            call.answering.set_attributes(answer)
            if ctx.error is not None or outcome.client_disconnected:  # the stream it was answering broke
                _failed(call.answering, common["error.type"], outcome.error_message or "The client went away.")
            call.answering.end(end_ns if ctx.stream else call.answered_ns)
        server = call.server
        if not server.is_recording():
            server.end(end_ns)
            return
        assistant = ctx.assistant
        if assistant is not None:
            server.update_name(f"{OPERATION} {assistant.model}")
        conversation = call.conversation or ctx.body.get("prompt_cache_key")
        server.set_attributes(_present({
            **common,
            **answer,
            **telemetry.request_attributes(ctx.body),
            "gen_ai.request.model": None if assistant is None else assistant.model,
            "gen_ai.request.stream": ctx.stream if ctx.body else None,
            "gen_ai.conversation.id": conversation[:256] if type(conversation) is str else None,
            "http.response.status_code": outcome.status,
            "riceball.assistant.id": None if assistant is None else str(assistant.id),
            "riceball.assistant.name": None if assistant is None else assistant.name,
            "riceball.key.prefix": None if ctx.principal is None else ctx.principal.key_prefix,
            "riceball.playground": True if ctx.principal is not None and ctx.principal.admin_id else None,
            "riceball.attempts": ctx.attempts,
            "riceball.cost_usd": None if outcome.cost_usd is None else float(outcome.cost_usd),
            **_limits(ctx, outcome),
        }))
        if call.content is not None:
            content = dict(call.content)
            if call.output is not None:
                output = call.output if isinstance(call.output, list) else call.output.messages()
                content["gen_ai.output.messages"] = telemetry.content_json(output)
            if self.capture_in_spans:
                server.set_attributes(content)
            if self.capture_in_event:
                server.add_event(CONTENT_EVENT, content, timestamp=end_ns)
        if outcome.status >= 500:
            server.set_status(Status(StatusCode.ERROR, outcome.error_message))
        server.end(end_ns)

    def _record_metrics(self, ctx, outcome, common: dict[str, Any]) -> None:
        attributes = dict(common)
        if ctx.assistant is not None:
            attributes["gen_ai.request.model"] = ctx.assistant.model
        if ctx.provider is not None:
            _, host, port = telemetry.upstream(ctx.provider.type, ctx.provider.base_url)
            attributes.update(_present({"server.address": host, "server.port": port}))
        self.histograms["duration"].record(outcome.latency_ms / 1000, attributes)
        if ctx.stream and outcome.ttft_ms is not None:
            self.histograms["first_chunk"].record(outcome.ttft_ms / 1000, attributes)
        for kind, count in (("input", outcome.usage.prompt_tokens), ("output", outcome.usage.completion_tokens)):
            if count is not None:
                self.histograms["tokens"].record(count, {**attributes, "gen_ai.token.type": kind})


class TracingWithContent(Tracing):
    """The plugin when message contents are captured: it also gathers the answers (a stream's through a
    transformer of its own, which takes the call off the fast path)."""

    @hookimpl
    def riceball_transform_response(self, ctx, response):
        call: CallTrace | None = ctx.stash.get(STASH)
        if call is not None and isinstance(response, dict):
            call.output = telemetry.output_messages(response)

    @hookimpl
    def riceball_transform_stream(self, ctx):
        call: CallTrace | None = ctx.stash.get(STASH)
        if call is None or not call.server.is_recording():
            return None
        gathered = call.output = telemetry.StreamedOutput()

        def gather(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
            async def gathering() -> AsyncIterator[dict]:
                async for chunk in chunks:
                    gathered.add(chunk)
                    yield chunk
            return gathering()

        return gather


def plugin(settings: Telemetry) -> Tracing:
    """The tracing plugin these settings ask for."""
    return TracingWithContent(settings) if settings.capture_content != "NO_CONTENT" else Tracing(settings)


def _present(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes that have a value (OpenTelemetry takes no None)."""
    return {name: value for name, value in attributes.items() if value is not None}


def _failed(span: trace.Span, error_type: str, message: str | None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))


def _answer_attributes(ctx, outcome) -> dict[str, Any]:
    """What the upstream said of its answer, and what the call used."""
    usage = outcome.usage
    return _present({
        "gen_ai.response.id": ctx.response_id,
        "gen_ai.response.model": ctx.response_model,
        "gen_ai.response.finish_reasons": ctx.finish_reasons or None,
        "gen_ai.response.time_to_first_chunk": None if not ctx.stream or outcome.ttft_ms is None
        else outcome.ttft_ms / 1000,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
        "riceball.usage.estimated": True if usage.estimated else None,
    })


def _limits(ctx, outcome) -> dict[str, Any]:
    """The limits' decision: ``refused`` (by what: the error's code and type, ``rate_limit_exceeded``
    and ``requests``...) for a call a limit refused before any upstream was asked, ``admitted`` for a
    call with limits that went upstream, and what its tightest limits had left (the ``x-ratelimit-*``
    headers it was answered with); nothing where no limit applied."""
    if ctx.attempts == 0 and outcome.error_code in LIMIT_CODES:
        decision = {"riceball.limits.decision": "refused", "riceball.limits.refused_by": outcome.error_code,
                    "riceball.limits.kind": outcome.error_type}
    elif ctx.attempts and ((ctx.principal is not None and ctx.principal.limits) or ctx.resolved_assistant.limits):
        decision = {"riceball.limits.decision": "admitted"}
    else:
        return {}
    for kind in ("requests", "tokens"):
        remaining = (ctx.response_headers or {}).get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.isdigit():
            decision[f"riceball.limits.remaining_{kind}"] = int(remaining)
    return decision


def _input_content(body: dict[str, Any]) -> dict[str, str]:
    """A request's contents as the conventions' attributes (JSON): system instructions, input messages,
    tool definitions."""
    system, conversation = telemetry.input_messages(body.get("messages"))
    content = {"gen_ai.input.messages": telemetry.content_json(conversation)}
    if system:
        content["gen_ai.system_instructions"] = telemetry.content_json(system)
    tools = telemetry.tool_definitions(body.get("tools"))
    if tools:
        content["gen_ai.tool.definitions"] = telemetry.content_json(tools)
    return content
