"""OpenTelemetry: the gateway's spans and GenAI metrics, received over OTLP/HTTP by a real receiver on
loopback that decodes the protobuf with opentelemetry-proto, as a collector would; the calls are made with
the official SDKs."""
import asyncio
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from riceball_proxy import appkeys
from riceball_proxy.app import create_app
from riceball_proxy.db.assistants import Target
from riceball_proxy.logs import AccessLogger
from riceball_proxy.plugins import TRACING_PLUGIN
from riceball_proxy.settings import GRPC_EXPORTER, Settings, SettingsError, Telemetry
from tests.support import Gateway, access_log_captured, logged_in_panel

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "a secret question"}]
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # Status.STATUS_CODE_ERROR


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


class Span:
    """One received span: its ids in hex, and its attributes as a dict."""

    def __init__(self, span, resource):
        self.name = span.name
        self.kind = span.kind
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.attributes = {attribute.key: _value(attribute.value) for attribute in span.attributes}
        self.status = (span.status.code, span.status.message)
        self.start_ns, self.end_ns = span.start_time_unix_nano, span.end_time_unix_nano
        self.events = {event.name: {a.key: _value(a.value) for a in event.attributes} for event in span.events}
        self.resource = resource

    def __repr__(self):
        return f"<{self.name} {self.kind} {self.attributes}>"


class Collector:
    """An OTLP/HTTP receiver: what the gateway exports to ``/v1/traces`` and ``/v1/metrics``."""

    def __init__(self):
        self.spans: list[Span] = []
        #: The headers of the last export (a collector's token...).
        self.headers: dict[str, str] = {}
        self.metrics: dict[str, list] = {}
        self.arrived = asyncio.Event()

    def app(self):
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/metrics", self.metrics_in)
        return app

    async def _body(self, request):
        body = await request.read()
        return gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body

    async def traces(self, request):
        assert request.headers["Content-Type"] == "application/x-protobuf"
        self.headers = {name.lower(): value for name, value in request.headers.items()}
        message = ExportTraceServiceRequest()
        message.ParseFromString(await self._body(request))
        self.take(message)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def take(self, message: ExportTraceServiceRequest) -> None:
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Span(span, resource) for span in scope_spans.spans)
        self.arrived.set()

    async def metrics_in(self, request):
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await self._body(request))
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points = [({a.key: _value(a.value) for a in point.attributes}, point.count, point.sum)
                              for point in metric.histogram.data_points]
                    self.metrics.setdefault(metric.name, []).append((metric.unit, points))
        self.arrived.set()
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def trace_of(self, request_id, spans=2, timeout=10.0):
        """The spans of the call ``request_id`` (its server span and its attempts), once ``spans`` came."""
        deadline = time.monotonic() + timeout
        while True:
            server = [s for s in self.spans if s.kind == SERVER and s.attributes.get("riceball.request.id") == request_id]
            found = server + [s for s in self.spans if server and s.trace_id == server[0].trace_id and s.kind != SERVER]
            if len(found) >= spans or time.monotonic() > deadline:
                assert len(found) == spans, f"{len(found)} spans of {request_id}, not {spans}: {self.spans}"
                return sorted(found, key=lambda s: (s.kind != SERVER, s.start_ns))
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.2)
            except TimeoutError:
                pass


def tree(spans: list[Span], shown=("error.type", "riceball.attempt", "riceball.attempts", "gen_ai.provider.name",
                                   "gen_ai.response.model", "gen_ai.usage.input_tokens",
                                   "gen_ai.usage.output_tokens", "http.response.status_code")) -> str:
    """A trace's spans as a tree, one line each: name, kind, duration and the attributes ``shown``."""
    kinds = {SERVER: "SERVER", CLIENT: "CLIENT"}
    lines = []
    for span in spans:
        attributes = " ".join(f"{name}={span.attributes[name]}" for name in shown if name in span.attributes)
        line = f"{span.name}  [{kinds.get(span.kind, span.kind)}]  {(span.end_ns - span.start_ns) / 1e6:.1f} ms  {attributes}"
        lines.append(line if span.kind == SERVER else ("└─ " if span is spans[-1] else "├─ ") + line)
    return "\n".join(lines)


@pytest.fixture
async def collector(aiohttp_server):
    collector = Collector()
    server = await aiohttp_server(collector.app())
    collector.url = str(server.make_url(""))
    return collector


@pytest.fixture
def otel_env(monkeypatch, collector):
    """The standard variables that send a gateway's telemetry to ``collector``, exported promptly."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    return monkeypatch


@pytest.fixture
def traced(otel_env, start_gateway, settings, fake_openai):
    """A gateway whose settings come from the variables (as ``riceball serve`` reads them), an assistant
    on the fake upstream and a key for it."""

    async def start(**assistant_fields):
        gateway = await start_gateway(settings.replace(otel=Telemetry.from_env(os.environ)))
        provider = await gateway.provider(fake_openai.base_url, name="upstream-one")
        assistant = await gateway.assistant(provider, name="traced-helper",
                                            parameters={"temperature": 0.3, "max_tokens": 50},
                                            **assistant_fields)
        return gateway, assistant, await gateway.key(name="traced key")

    return start


def sent_traceparent(fake, index=-1):
    """The trace and parent span of the ``traceparent`` an upstream was sent (its flags left out)."""
    sent = {name.lower(): value for name, value in fake.requests[index]["headers"].items()}["traceparent"]
    version, trace_id, parent_id, flags = sent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return f"{trace_id}-{parent_id}"


async def test_a_streamed_call_is_a_server_span_with_a_client_span_per_attempt(traced, fake_openai, collector):
    gateway, assistant, key = await traced()
    async with gateway.client(assistant.id, key) as client:
        response = await client.chat.completions.with_raw_response.create(
            model="anything", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, seed=7,
            stop=["END"], extra_headers={"session-id": "codex-session-1"})
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in response.parse() if chunk.choices])
    assert text == fake_openai.reply
    request_id = response.headers["x-request-id"]
    server, attempt = await collector.trace_of(request_id)
    (row,) = await gateway.usage_rows(1)

    assert (server.name, server.kind, server.parent_id) == (f"chat {assistant.model}", SERVER, "")
    assert server.resource["service.name"] == "gateway-under-test"
    expected = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": assistant.model,
        "gen_ai.response.model": assistant.model, "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.request.temperature": 0.3, "gen_ai.request.max_tokens": 50, "gen_ai.request.seed": 7,
        "gen_ai.request.stop_sequences": ("END",), "gen_ai.request.stream": True,
        "gen_ai.usage.input_tokens": row["prompt_tokens"],
        "gen_ai.usage.output_tokens": row["completion_tokens"],
        "gen_ai.conversation.id": "codex-session-1", "http.response.status_code": 200,
        "http.request.method": "POST", "http.route": "/api/v1/assistants/{assistant_id}/v1/chat/completions",
        "riceball.api": "chat", "riceball.request.id": request_id, "riceball.assistant.id": str(assistant.id),
        "riceball.assistant.name": "traced-helper", "riceball.attempts": 1,
    }
    assert {name: server.attributes.get(name) for name in expected} == expected
    assert server.attributes["riceball.key.prefix"] == key[:len(server.attributes["riceball.key.prefix"])]
    assert 0 < server.attributes["gen_ai.response.time_to_first_chunk"] < 5
    assert server.attributes["gen_ai.response.id"].startswith("chatcmpl")
    assert server.status[0] != ERROR and "error.type" not in server.attributes

    # The attempt: a CLIENT child of the server span, the upstream's address, the traceparent it sent.
    assert (attempt.name, attempt.kind, attempt.parent_id, attempt.trace_id) == (
        f"chat {assistant.model}", CLIENT, server.span_id, server.trace_id)
    host, port = fake_openai.base_url.split("//")[1].split("/")[0].split(":")
    assert {name: attempt.attributes.get(name) for name in ("server.address", "server.port", "riceball.attempt",
                                                            "gen_ai.provider.name", "gen_ai.usage.output_tokens",
                                                            "riceball.provider.name")} == {
        "server.address": host, "server.port": int(port), "riceball.attempt": 1, "gen_ai.provider.name": "openai",
        "gen_ai.usage.output_tokens": row["completion_tokens"], "riceball.provider.name": "upstream-one"}
    assert sent_traceparent(fake_openai) == f"{server.trace_id}-{attempt.span_id}"
    assert server.start_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns

    # Nothing of the conversation, nor the key, is in any span by default.
    everything = repr([server.attributes, attempt.attributes])
    assert "secret question" not in everything and "terse" not in everything and key not in everything


async def test_each_access_log_line_leads_to_its_trace(otel_env, aiohttp_server, settings, fake_openai, collector):
    with access_log_captured() as (logger, stream):
        app = create_app(settings.replace(otel=Telemetry.from_env(os.environ)))
        server = await aiohttp_server(app, access_log_class=AccessLogger, access_log=logger)
        gateway = Gateway(app, server)
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider)
        async with gateway.client(assistant.id, await gateway.key()) as client:
            answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        await server.close()  # the access log is written once each response is done
    (line,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    server_span, _ = await collector.trace_of(answer.headers["x-request-id"])
    assert line["trace_id"] == server_span.trace_id and line["request_id"] == answer.headers["x-request-id"]


async def test_a_whole_answer_and_the_responses_and_messages_apis_are_traced(traced, fake_openai, collector):
    gateway, assistant, key = await traced()
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        chat_id = answer.headers["x-request-id"]
        response = await client.responses.with_raw_response.create(model="x", input="hello",
                                                                    prompt_cache_key="conversation-7")
        responses_id = response.headers["x-request-id"]
    async with gateway.anthropic(assistant.id, key) as client:
        message = await client.messages.with_raw_response.create(
            model="x", max_tokens=20, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Claude-Code-Session-Id": "claude-session-9"})
        messages_id = message.headers["x-request-id"]
    for request_id, api, conversation in ((chat_id, "chat", None), (responses_id, "responses", "conversation-7"),
                                          (messages_id, "messages", "claude-session-9")):
        server, attempt = await collector.trace_of(request_id)
        assert server.attributes["riceball.api"] == api
        assert server.attributes.get("gen_ai.conversation.id") == conversation
        assert server.attributes["gen_ai.request.stream"] is False
        assert server.attributes["gen_ai.usage.input_tokens"] > 0
        assert server.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert "gen_ai.response.time_to_first_chunk" not in server.attributes
        assert attempt.attributes["gen_ai.response.model"] == assistant.model
        assert attempt.parent_id == server.span_id and attempt.end_ns <= server.end_ns
    assert server.attributes["http.route"] == "/api/v1/assistants/{assistant_id}/v1/messages"


async def test_a_playground_call_is_traced_as_the_admins(otel_env, aiohttp_client, settings, fake_openai, collector):
    panel = await logged_in_panel(aiohttp_client, settings.replace(otel=Telemetry.from_env(os.environ)))
    gateway = Gateway(panel.app, panel.client.server)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    response, _ = await panel.post(f"/admin/assistants/{assistant.id}/conversations", csrf_from="/admin/")
    response, _ = await panel.post(response.url.path + "/messages", {"content": "Hello there"},
                                   csrf_from=response.url.path)
    assert response.status == 200
    (row,) = await gateway.usage_rows(1)
    server, attempt = await collector.trace_of(row["request_id"])
    assert server.attributes["riceball.playground"] is True and "riceball.key.prefix" not in server.attributes
    assert server.attributes["riceball.assistant.id"] == str(assistant.id) and attempt.parent_id == server.span_id


async def test_a_native_messages_stream_is_read_for_its_model_and_stop_reason(
        otel_env, start_gateway, settings, fake_anthropic, collector):
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"}),
                                                   otel=Telemetry.from_env(os.environ)))
    provider = await gateway.provider(fake_anthropic.base_url, type="anthropic", name="claude-upstream")
    assistant = await gateway.assistant(provider, model="claude-sonnet-4-5")
    key = await gateway.key()
    async with gateway.anthropic(assistant.id, key) as client:
        async with client.messages.stream(model="x", max_tokens=30,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            await stream.get_final_message()
            request_id = stream.response.headers["x-request-id"]
    server, attempt = await collector.trace_of(request_id)
    assert server.attributes["gen_ai.provider.name"] == "anthropic"
    assert server.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert server.attributes["gen_ai.response.model"].startswith("claude-sonnet-4-5")
    assert server.attributes["gen_ai.response.id"].startswith("msg_")
    assert server.attributes["gen_ai.usage.output_tokens"] > 0 and server.attributes["riceball.api"] == "messages"
    assert attempt.attributes["riceball.provider.name"] == "claude-upstream"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_over_call_shows_each_attempt(traced, fake_openai, second_openai, collector, stream):
    gateway, _, key = await traced()
    primary = await gateway.provider(fake_openai.base_url, name="primary")
    fallback = await gateway.provider(second_openai.base_url, name="fallback")
    assistant = await gateway.assistant(primary, fallbacks=[Target(fallback.id, "backup-model")])
    fake_openai.error = (503, {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}})
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=stream)
        if stream:
            [chunk async for chunk in answer.parse()]
    server, failed, answered = await collector.trace_of(answer.headers["x-request-id"], spans=3)
    print(tree([server, failed, answered]))  # the picture docs/observability.md shows
    assert (failed.attributes["riceball.attempt"], failed.attributes["gen_ai.request.model"]) == (1, assistant.model)
    assert failed.attributes["error.type"] == "overloaded" and failed.status[0] == ERROR
    assert (answered.attributes["riceball.attempt"], answered.attributes["gen_ai.request.model"]) == (2, "backup-model")
    assert "error.type" not in answered.attributes and answered.attributes["gen_ai.usage.output_tokens"] > 0
    assert {failed.parent_id, answered.parent_id} == {server.span_id}
    assert server.attributes["riceball.attempts"] == 2 and "error.type" not in server.attributes
    # Each attempt sent its own span as the parent upstream.
    assert sent_traceparent(fake_openai) == f"{server.trace_id}-{failed.span_id}"
    assert sent_traceparent(second_openai) == f"{server.trace_id}-{answered.span_id}"


async def test_refusals_are_server_spans_with_their_error(traced, fake_openai, collector):
    gateway, assistant, key = await traced(rpm=1)
    async with gateway.client(assistant.id, "sk-not-a-key") as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    (server,) = await collector.trace_of(raised.value.response.headers["x-request-id"], spans=1)
    assert (server.attributes["http.response.status_code"], server.attributes["error.type"]) == (401, "invalid_api_key")
    assert "riceball.assistant.id" not in server.attributes and server.status[0] != ERROR  # a 4xx is the caller's
    async with gateway.client(assistant.id, key) as client:
        admitted = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    server, _ = await collector.trace_of(admitted.headers["x-request-id"])
    assert server.attributes["riceball.limits.decision"] == "admitted"
    assert server.attributes["riceball.limits.remaining_requests"] == 0
    (server,) = await collector.trace_of(raised.value.response.headers["x-request-id"], spans=1)
    assert {name: server.attributes[name] for name in ("riceball.limits.decision", "riceball.limits.refused_by",
                                                       "riceball.limits.kind", "error.type")} == {
        "riceball.limits.decision": "refused", "riceball.limits.refused_by": "rate_limit_exceeded",
        "riceball.limits.kind": "requests", "error.type": "rate_limit_exceeded"}


async def test_a_client_that_leaves_mid_stream_ends_both_spans(traced, fake_openai, collector):
    gateway, assistant, key = await traced()
    fake_openai.chunk_delay = 0.3
    fake_openai.reply = "many words " * 20
    async with gateway.client(assistant.id, key) as client:
        response = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
        stream = response.parse()
        await anext(stream)
        await stream.close()
    server, attempt = await collector.trace_of(response.headers["x-request-id"])
    assert (server.attributes["http.response.status_code"], server.attributes["error.type"]) == (
        499, "client_disconnected")
    assert attempt.attributes["error.type"] == "client_disconnected" and attempt.status[0] == ERROR
    assert attempt.end_ns <= server.end_ns


async def test_a_callers_trace_is_joined_and_its_baggage_stays_inside(traced, fake_openai, collector):
    gateway, assistant, key = await traced()
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(
            model="x", messages=MESSAGES,
            extra_headers={"traceparent": f"00-{caller_trace}-{caller_span}-01", "baggage": "user.id=alice"})
    server, attempt = await collector.trace_of(answer.headers["x-request-id"])
    assert (server.trace_id, server.parent_id) == (caller_trace, caller_span)
    assert sent_traceparent(fake_openai) == f"{caller_trace}-{attempt.span_id}"
    assert "baggage" not in {name.lower() for name in fake_openai.requests[-1]["headers"]}


async def test_cached_and_reasoning_tokens_and_the_cost_are_on_the_spans(otel_env, traced, fake_openai, collector):
    otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer collector-token")  # a hosted collector's
    gateway, assistant, key = await traced(prices=(Decimal("2.5"), Decimal(10), Decimal("1.25"), None))
    fake_openai.usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                         "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100},
                         "completion_tokens_details": {"reasoning_tokens": 250}}
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    server, attempt = await collector.trace_of(answer.headers["x-request-id"])
    (row,) = await gateway.usage_rows(1)
    usage = {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
             "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.cache_creation.input_tokens": 100,
             "gen_ai.usage.reasoning.output_tokens": 250}
    for span in (server, attempt):
        assert {name: span.attributes.get(name) for name in usage} == usage
    assert row["cost_usd"] > 0 and server.attributes["riceball.cost_usd"] == pytest.approx(float(row["cost_usd"]))
    assert collector.headers["authorization"] == "Bearer collector-token"


async def test_a_callers_sampling_decision_is_followed(traced, fake_openai, collector):
    gateway, assistant, key = await traced()
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    async with gateway.client(assistant.id, key) as client:
        skipped = await client.chat.completions.with_raw_response.create(
            model="x", messages=MESSAGES, extra_headers={"traceparent": unsampled})
        sent = {name.lower(): value for name, value in fake_openai.requests[-1]["headers"].items()}["traceparent"]
        kept = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    # Not sampled: the upstream is told so (in the caller's trace), and nothing of it is exported, though
    # the call after it is.
    assert sent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and int(sent.rsplit("-", 1)[1], 16) & 1 == 0
    await collector.trace_of(kept.headers["x-request-id"])
    assert not [span for span in collector.spans if span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
                or span.attributes.get("riceball.request.id") == skipped.headers["x-request-id"]]


async def test_contents_are_captured_only_when_asked(otel_env, traced, fake_openai, collector):
    otel_env.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_AND_EVENT")
    gateway, assistant, key = await traced(system_prompt="Answer in French.")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    async with gateway.client(assistant.id, key) as client:
        whole = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, tools=tools)
        streamed = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
        [chunk async for chunk in streamed.parse()]
    for request_id, offered in ((whole.headers["x-request-id"], True), (streamed.headers["x-request-id"], False)):
        server, attempt = await collector.trace_of(request_id)
        assert "Answer in French." in server.attributes["gen_ai.system_instructions"]
        assert '"content":"a secret question"' in server.attributes["gen_ai.input.messages"]
        assert fake_openai.reply in server.attributes["gen_ai.output.messages"]
        assert "a secret question" in attempt.attributes["gen_ai.input.messages"]
        event = server.events["gen_ai.client.inference.operation.details"]
        assert fake_openai.reply in event["gen_ai.output.messages"]
        assert ('"name":"lookup"' in server.attributes.get("gen_ai.tool.definitions", "")) is offered


async def test_metrics_go_over_otlp_when_asked(otel_env, traced, collector):
    otel_env.setenv("OTEL_METRICS_EXPORTER", "otlp")
    gateway, assistant, key = await traced()
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        [chunk async for chunk in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)]
    deadline = time.monotonic() + 10
    names = {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
             "gen_ai.client.operation.time_to_first_chunk"}
    while not names <= collector.metrics.keys() or not all(
            sum(point[1] for point in collector.metrics[name][-1][1]) >= (1 if "first" in name else 2)
            for name in names):
        assert time.monotonic() < deadline, collector.metrics
        await asyncio.sleep(0.1)
    unit, points = collector.metrics["gen_ai.client.token.usage"][-1]
    assert unit == "{token}"
    by_type = {attributes["gen_ai.token.type"]: (count, total) for attributes, count, total in points}
    rows = await gateway.usage_rows(2)
    assert by_type == {"input": (2, sum(row["prompt_tokens"] for row in rows)),
                       "output": (2, sum(row["completion_tokens"] for row in rows))}
    attributes = points[0][0]
    assert (attributes["gen_ai.request.model"], attributes["gen_ai.provider.name"]) == (assistant.model, "openai")
    unit, points = collector.metrics["gen_ai.client.operation.duration"][-1]
    assert unit == "s" and sum(count for _, count, _ in points) == 2


async def test_spans_go_over_grpc_when_asked(otel_env, start_gateway, settings, fake_openai):
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc, to a real gRPC receiver (the collector's TraceService)."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    collector = Collector()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request, context):
            collector.take(request)
            return ExportTraceServiceResponse()

    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    try:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        gateway = await start_gateway(settings.replace(otel=Telemetry.from_env(os.environ)))
        assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
        async with gateway.client(assistant.id, await gateway.key()) as client:
            answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        server, attempt = await collector.trace_of(answer.headers["x-request-id"])
        assert attempt.parent_id == server.span_id and server.attributes["http.response.status_code"] == 200
    finally:
        await receiver.stop(None)


async def test_a_collector_that_is_away_costs_spans_never_calls(monkeypatch, start_gateway, settings, fake_openai,
                                                                caplog):
    from tests.test_failover import refused_port

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{refused_port()}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    caplog.set_level(logging.WARNING, "opentelemetry")
    gateway = await start_gateway(settings.replace(otel=Telemetry.from_env(os.environ)))
    assert gateway.app[appkeys.PLUGIN_MANAGER].has_plugin(TRACING_PLUGIN)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        for _ in range(20):
            answer = await client.chat.completions.create(model="x", messages=MESSAGES)
            assert answer.choices[0].message.content == fake_openai.reply
            await asyncio.sleep(0.01)  # exports are tried meanwhile, and fail
    assert len(await gateway.usage_rows(20)) == 20
    # Spans were dropped (the queue holds 2), and said so once, not once a span.
    dropped = [record for record in caplog.records if record.getMessage().startswith("Queue full")]
    assert len(dropped) == 1, [record.getMessage() for record in caplog.records]


def test_off_by_default_and_nothing_of_opentelemetry_loads():
    """Without the variables the plugin is not registered, and the SDK is never imported."""
    script = ("import sys\n"
              "from riceball_proxy.app import create_app\n"
              "from riceball_proxy.settings import Settings\n"
              "from cryptography.fernet import Fernet\n"
              "settings = Settings.from_env({'RICEBALL_SECRET_KEY': Fernet.generate_key().decode()})\n"
              "app = create_app(settings)\n"
              "assert settings.otel is None\n"
              "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, Telemetry(traces=("otlp",))),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, Telemetry(traces=("otlp",))),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ({"OTEL_TRACES_EXPORTER": "console"}, Telemetry(traces=("console",))),
    ({"OTEL_METRICS_EXPORTER": "otlp"}, Telemetry(metrics=("otlp",))),
    ({"OTEL_METRICS_EXPORTER": "prometheus"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "otlp",
      "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
     Telemetry(traces=("otlp",), metrics=("otlp",), capture_content="SPAN_ONLY")),
])
def test_the_standard_variables_turn_it_on(environ, expected):
    assert Settings.from_env(environ).otel == expected


def test_grpc_without_its_exporter_is_refused_at_start(monkeypatch):
    monkeypatch.setitem(sys.modules, GRPC_EXPORTER, None)  # as if it were not installed
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    assert "OTLP over gRPC needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc" in str(raised.value)


@pytest.mark.parametrize("environ, says", [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER must be otlp, console or none (not 'jaeger')"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "all"},
     "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT must be one of NO_CONTENT, SPAN_ONLY"),
])
def test_variables_it_cannot_follow_are_refused_at_start(environ, says):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ)
    assert says in str(raised.value)


async def test_the_plugin_can_be_disabled(otel_env, start_gateway, settings):
    settings = settings.replace(otel=Telemetry.from_env(os.environ), disabled_plugins=frozenset({TRACING_PLUGIN}))
    gateway = await start_gateway(settings)
    assert not gateway.app[appkeys.PLUGIN_MANAGER].has_plugin(TRACING_PLUGIN)

