"""OpenTelemetry's SDK set up from the ``OTEL_*`` variables, and the GenAI semantic conventions' names for
what a call asked and got (``gen_ai.*``).

Imported only by the tracing plugin (``riceball_proxy.builtin.tracing``), which is registered only when
``Settings.otel`` asks for telemetry: a gateway without it never loads the SDK. Spans and metrics leave
through the SDK's batch span processor and periodic metric reader, each exporting from a thread of its
own: the event loop only hands them over, and a collector that is slow or away costs spans, never calls.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson
import yarl
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from riceball_proxy import __version__
from riceball_proxy.settings import Telemetry

#: ``service.name`` unless ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``) names the service.
SERVICE_NAME = "riceball"
#: The longest message-content attribute (JSON) a span carries, when contents are captured at all.
MAX_CONTENT_CHARS = 64 * 1024
#: Histogram buckets of the GenAI metrics, as the conventions advise.
TOKEN_BUCKETS = tuple(float(4**power) for power in range(14))  # 1, 4, 16 ... 67,108,864
DURATION_BUCKETS = tuple(0.01 * 2**power for power in range(14))  # 0.01 ... 81.92 s


def resource(environ: Mapping[str, str]) -> Resource:
    """The process's resource: the SDK's (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``), with
    ``service.name`` ``riceball`` when neither names the service, and the gateway's version."""
    attributes = {"service.version": __version__}
    named = environ.get("OTEL_SERVICE_NAME", "").strip() or any(
        pair.split("=", 1)[0].strip() == "service.name" for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","))
    if not named:
        attributes["service.name"] = SERVICE_NAME
    return Resource.create(attributes)


def tracer_provider(telemetry: Telemetry, process: Resource) -> TracerProvider:
    """A tracer provider (its sampler from ``OTEL_TRACES_SAMPLER``) exporting through batch processors."""
    provider = TracerProvider(resource=process)
    for name in telemetry.traces:
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, telemetry.traces_protocol)))
    return provider


def meter_provider(telemetry: Telemetry, process: Resource) -> MeterProvider | None:
    """A meter provider with a periodic reader per metrics exporter (``OTEL_METRIC_EXPORT_INTERVAL``), or
    None when metrics do not go out over OpenTelemetry."""
    if not telemetry.metrics:
        return None
    readers = [PeriodicExportingMetricReader(_metric_exporter(name, telemetry.metrics_protocol))
               for name in telemetry.metrics]
    return MeterProvider(resource=process, metric_readers=readers)


def _span_exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str, protocol: str) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


#: The SDK's loggers that speak once a span or a batch while a collector is away ("Queue full, dropping
#: span", "Failed to export"): each of their messages is let through once a minute at most.
SDK_LOGGERS = (
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


class OncePerMinute(logging.Filter):
    """Lets each message (a logger's format string) through at once, then once a minute at most, saying
    how many like it were held back meanwhile: a collector away for an hour is a few lines, not millions."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # exporters log from their own threads
        #: (logger, format string) -> [when last let through, held back since]; as many as the SDK has messages.
        self._seen: dict[tuple[str, Any], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get((record.name, record.msg))
            if seen is not None and now - seen[0] < self.INTERVAL:
                seen[1] += 1
                return False
            self._seen[(record.name, record.msg)] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {seen[1]} more like it in the last minute)"
        return True


_SDK_FILTER = OncePerMinute()


def quiet_sdk_logs() -> None:
    """Put the once-a-minute filter on the SDK's talkative loggers (once for the process)."""
    for name in SDK_LOGGERS:
        sdk_logger = logging.getLogger(name)
        if _SDK_FILTER not in sdk_logger.filters:
            sdk_logger.addFilter(_SDK_FILTER)


# --- what a call is, in the GenAI conventions' names ------------------------------------------------------

#: ``gen_ai.provider.name`` by the upstream's host (a suffix matches its subdomains), before the type's.
PROVIDER_HOSTS = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure.ai.openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("amazonaws.com", "aws.bedrock"),
    ("api.deepseek.com", "deepseek"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
)
#: ``gen_ai.provider.name`` by provider type, for any other host; a type not here is its own name.
PROVIDER_TYPES = {"openai": "openai", "openai-responses": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}


@functools.lru_cache(maxsize=1024)
def upstream(provider_type: str, base_url: str) -> tuple[str, str | None, int | None]:
    """An upstream's ``gen_ai.provider.name``, ``server.address`` and ``server.port``."""
    try:
        url = yarl.URL(base_url)
        host, port = url.host, url.port
    except (TypeError, ValueError):
        host, port = None, None
    for suffix, name in PROVIDER_HOSTS:
        if host is not None and (host == suffix or host.endswith("." + suffix)):
            return name, host, port
    return PROVIDER_TYPES.get(provider_type, provider_type), host, port


#: Request fields (the internal form's names) and their ``gen_ai.request.*`` attributes; the first of
#: two fields for one attribute wins.
REQUEST_NUMBERS = (
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)
#: ``gen_ai.output.type`` by ``response_format.type``.
OUTPUT_TYPES = {"text": "text", "json_object": "json", "json_schema": "json"}


def request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gen_ai.request.*`` attributes (and ``gen_ai.output.type``) of a request in the internal form."""
    attributes: dict[str, Any] = {}
    for field, name in REQUEST_NUMBERS:
        value = body.get(field)
        if type(value) in (int, float) and name not in attributes:
            attributes[name] = value
    stop = body.get("stop")
    if type(stop) is str:
        attributes["gen_ai.request.stop_sequences"] = (stop,)
    elif type(stop) is list and stop and all(type(item) is str for item in stop):
        attributes["gen_ai.request.stop_sequences"] = tuple(stop)
    choices = body.get("n")
    if type(choices) is int and choices != 1:
        attributes["gen_ai.request.choice.count"] = choices
    response_format = body.get("response_format")
    if type(response_format) is dict and response_format.get("type") in OUTPUT_TYPES:
        attributes["gen_ai.output.type"] = OUTPUT_TYPES[response_format["type"]]
    return attributes


def content_json(value: Any) -> str:
    """Captured content as the JSON an attribute carries, cut at ``MAX_CONTENT_CHARS``."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "...(cut)"


def parts(content: Any) -> list[dict[str, Any]]:
    """A Chat Completions ``content`` as the conventions' parts: text as it is; an image, audio or file
    part as its type and modality alone (its bytes never go into a span)."""
    if type(content) is str:
        return [{"type": "text", "content": content}]
    found: list[dict[str, Any]] = []
    for part in content if type(content) is list else ():
        if type(part) is not dict:
            continue
        kind = part.get("type")
        if kind == "text" and type(part.get("text")) is str:
            found.append({"type": "text", "content": part["text"]})
        elif kind in ("image_url", "input_audio", "file"):
            found.append({"type": "blob", "modality": {"image_url": "image", "input_audio": "audio"}.get(kind, "file")})
    return found


def input_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A request's messages as the conventions' ``gen_ai.system_instructions`` (the parts of its system
    and developer messages) and ``gen_ai.input.messages`` (the others)."""
    system: list[dict[str, Any]] = []
    conversation: list[dict[str, Any]] = []
    for message in messages if type(messages) is list else ():
        if type(message) is not dict:
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(parts(message.get("content")))
            continue
        if role == "tool":
            conversation.append({"role": "tool", "parts": [{"type": "tool_call_response", "id": message.get(
                "tool_call_id"), "response": message.get("content")}]})
            continue
        found = parts(message.get("content"))
        for call in message.get("tool_calls") or () if type(message.get("tool_calls")) is list else ():
            if type(call) is dict and type(call.get("function")) is dict:
                found.append({"type": "tool_call", "id": call.get("id"), "name": call["function"].get("name"),
                              "arguments": call["function"].get("arguments")})
        conversation.append({"role": role, "parts": found})
    return system, conversation


def tool_definitions(tools: Any) -> list[dict[str, Any]]:
    """A request's ``tools`` as the conventions' ``gen_ai.tool.definitions``."""
    return [{"type": "function", "name": tool["function"].get("name"),
             "description": tool["function"].get("description"), "parameters": tool["function"].get("parameters")}
            for tool in (tools if type(tools) is list else ())
            if type(tool) is dict and type(tool.get("function")) is dict]


def output_messages(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A ``chat.completion``'s choices as the conventions' ``gen_ai.output.messages``."""
    found = []
    for choice in answer.get("choices") or () if type(answer.get("choices")) is list else ():
        if type(choice) is not dict or type(choice.get("message")) is not dict:
            continue
        _, (message,) = input_messages([{**choice["message"], "role": "assistant"}])
        found.append({**message, "finish_reason": choice.get("finish_reason")})
    return found


class StreamedOutput:
    """The output messages of a stream, gathered from its ``chat.completion.chunk`` deltas, up to
    ``MAX_CONTENT_CHARS`` of text a choice (what comes after is not kept)."""

    def __init__(self) -> None:
        #: choice index -> {"text": [...], "chars": n, "tool_calls": {index: call}, "finish_reason": ...}
        self.choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        for choice in chunk.get("choices") or () if type(chunk.get("choices")) is list else ():
            if type(choice) is not dict or type(choice.get("index", 0)) is not int:
                continue
            kept = self.choices.setdefault(choice.get("index", 0),
                                           {"text": [], "chars": 0, "tool_calls": {}, "finish_reason": None})
            if choice.get("finish_reason"):
                kept["finish_reason"] = choice["finish_reason"]
            delta = choice.get("delta")
            if type(delta) is not dict:
                continue
            text = delta.get("content")
            if type(text) is str and kept["chars"] < MAX_CONTENT_CHARS:
                kept["text"].append(text)
                kept["chars"] += len(text)
            for call in delta.get("tool_calls") or () if type(delta.get("tool_calls")) is list else ():
                if type(call) is not dict or len(kept["tool_calls"]) >= 128:
                    continue
                held = kept["tool_calls"].setdefault(call.get("index", 0), {"type": "tool_call", "id": None,
                                                                             "name": None, "arguments": ""})
                function: dict[str, Any] = call["function"] if type(call.get("function")) is dict else {}
                held["id"] = held["id"] or call.get("id")
                held["name"] = held["name"] or function.get("name")
                if type(function.get("arguments")) is str and len(held["arguments"]) < MAX_CONTENT_CHARS:
                    held["arguments"] += function["arguments"]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "assistant",
                 "parts": ([{"type": "text", "content": "".join(kept["text"])}] if kept["text"] else [])
                 + list(kept["tool_calls"].values()),
                 "finish_reason": kept["finish_reason"]}
                for _, kept in sorted(self.choices.items())]
