"""Prometheus metrics (prometheus-client), correct across ``riceball serve --workers N``.

With several workers, ``riceball serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a folder of the data
directory before starting them; each worker then writes its values there and ``/metrics`` on any of them
adds up all of them.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from riceball_proxy.context import ChatContext, Outcome

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The gateway's metrics, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("riceball_requests", "API calls, by assistant, HTTP status and inbound API",
                                ["assistant", "status", "api"], registry=registry)
        self.latency = Histogram("riceball_request_duration_seconds", "Time from request to last byte",
                                 ["assistant", "stream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.time_to_first_token = Histogram("riceball_time_to_first_token_seconds",
                                             "Time from request to the first chunk of the answer", ["assistant"],
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_errors = Counter("riceball_upstream_errors", "Failed upstream calls, by provider and status",
                                       ["provider", "status"], registry=registry)
        self.tokens = Counter("riceball_tokens", "Tokens, by assistant and kind (prompt, completion; of the prompt "
                              "cache_read and cache_write; of the completion reasoning)",
                              ["assistant", "kind"], registry=registry)
        self.usage_dead_letter_rows = Counter(
            "riceball_usage_dead_letter_rows", "Usage rows the database cannot take, kept in the dead-letter folder",
            registry=registry)
        self.invalid_usage = Counter("riceball_upstream_invalid_usage",
                                     "Upstream answers whose token counts were not counts, by provider",
                                     ["provider"], registry=registry)
        self.observer_backpressure = Counter(
            "riceball_observer_backpressure", "Finishing requests that waited because the observers' queue was full",
            registry=registry)
        self.cost = Counter("riceball_cost_usd", "What the calls cost in USD (calls of known price), by assistant",
                            ["assistant"], registry=registry)
        self.rate_limited = Counter("riceball_limited", "Calls refused by a limit, by kind (bucket: rpm or tpm, "
                                    "slots: max_parallel, budget; busy: the counters too busy to ask)", ["kind"], registry=registry)
        self.limits_unavailable_total = Counter(
            "riceball_limits_unavailable", "Limit checks that found the shared counters away, by backend",
            ["backend"], registry=registry)
        self.slow_requests = Counter("riceball_slow_requests", "Requests whose headers or body did not "
                                     "arrive within RICEBALL_CLIENT_READ_TIMEOUT (a late body is answered 408)", registry=registry)
        self.settlements_lost = Counter(
            "riceball_limits_settlements_lost", "Settlements given up (the counters away past the queue's bound, "
            "or at shutdown): their slots come back when the lease ends, budgets keep the reservations",
            registry=registry)
        self.attempts = Counter("riceball_upstream_attempts", "Upstream calls, by provider, model and outcome "
                                "(answered, failed_over, refused, deadline)", ["provider", "model", "outcome"],
                                registry=registry)
        self.circuit_open = Gauge("riceball_circuit_open", "1 while a target's circuit is open (this process "
                                  "skips it), by provider and model", ["provider", "model"], registry=registry,
                                  multiprocess_mode="livemax")
        self._children: dict = {}
        self.streams_in_flight = Gauge("riceball_streams_in_flight", "Streams being answered right now",
                                       registry=registry, multiprocess_mode="livesum")

    def _child(self, metric, *labels: str):
        # labels() validates and locks on every call; the children are kept instead (few label sets).
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, ctx: ChatContext, outcome: Outcome) -> None:
        """Count one finished API call."""
        assistant = str(ctx.assistant.id) if ctx.assistant else "-"
        api = ctx.dialect.name if ctx.dialect is not None else "chat"
        self._child(self.requests, assistant, str(outcome.status), api).inc()
        self._child(self.latency, assistant, "true" if ctx.stream else "false").observe(outcome.latency_ms / 1000)
        if outcome.ttft_ms is not None:
            self._child(self.time_to_first_token, assistant).observe(outcome.ttft_ms / 1000)
        if ctx.upstream_error is not None and ctx.provider is not None:
            self._child(self.upstream_errors, ctx.provider.name, str(ctx.upstream_error.status)).inc()
        if outcome.usage.invalid:
            self._child(self.invalid_usage, ctx.provider.name if ctx.provider else "-").inc()
        usage = outcome.usage
        for kind, count in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens),
                            ("cache_read", usage.cached_tokens), ("cache_write", usage.cache_write_tokens),
                            ("reasoning", usage.reasoning_tokens)):
            if count:
                self._child(self.tokens, assistant, kind).inc(count)
        if outcome.cost_usd:
            self._child(self.cost, assistant).inc(float(outcome.cost_usd))

    def attempt(self, provider: str, model: str, outcome: str) -> None:
        """Count one upstream call of a chat call."""
        self._child(self.attempts, provider, model, outcome).inc()

    def circuit(self, provider: str, model: str, is_open: bool) -> None:
        """Note a target's circuit opening or closing."""
        self._child(self.circuit_open, provider, model).set(1 if is_open else 0)

    def limited(self, kind: str) -> None:
        """Count a call refused by a limit."""
        self._child(self.rate_limited, kind).inc()

    def limits_unavailable(self, backend: str) -> None:
        """Count a limit check that could not reach the shared counters."""
        self._child(self.limits_unavailable_total, backend).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes: all workers' values when several share the port."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
