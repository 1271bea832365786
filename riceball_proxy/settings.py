"""Settings read from ``RICEBALL_*`` environment variables and checked once, at start."""
from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A ``RICEBALL_*`` variable holds a value the gateway cannot use; the message names it."""


#: What ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` may say; ``true`` and ``false`` (the older
#: instrumentations' words) are read as ``SPAN_ONLY`` and ``NO_CONTENT``.
CAPTURE_CONTENT = ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT")
#: The OTLP protocols the exporters speak; ``grpc`` needs opentelemetry-exporter-otlp-proto-grpc installed.
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
GRPC_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc"


@dataclasses.dataclass(frozen=True)
class Telemetry:
    """OpenTelemetry, read from the standard ``OTEL_*`` variables (``riceball_proxy.builtin.tracing``):
    where spans and GenAI metrics go (``otlp``, ``console``), over which OTLP protocol, and whether
    message contents go with them. The exporters read their own variables (endpoint, headers, timeout,
    certificates), and the tracer its sampler (``OTEL_TRACES_SAMPLER``)."""

    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    traces_protocol: str = "http/protobuf"
    metrics_protocol: str = "http/protobuf"
    capture_content: str = "NO_CONTENT"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Telemetry | None:
        """What the variables ask for; None when they ask for nothing (then nothing of OpenTelemetry runs).

        Traces go out when ``OTEL_TRACES_EXPORTER`` says so, or when it is unset and an OTLP endpoint is
        (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); metrics only when
        ``OTEL_METRICS_EXPORTER`` says so (Prometheus' ``/metrics`` is served anyway).
        ``OTEL_SDK_DISABLED=true`` turns both off."""

        def get(name: str) -> str:
            return env.get(name, "").strip()

        if get("OTEL_SDK_DISABLED").lower() == "true":
            return None
        endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or get("OTEL_EXPORTER_OTLP_ENDPOINT")
        traces = _exporters(get("OTEL_TRACES_EXPORTER"), "OTEL_TRACES_EXPORTER", "otlp" if endpoint else "")
        metrics = _exporters(get("OTEL_METRICS_EXPORTER"), "OTEL_METRICS_EXPORTER", "")
        capture = get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT").upper() or "NO_CONTENT"
        capture = {"TRUE": "SPAN_ONLY", "FALSE": "NO_CONTENT"}.get(capture, capture)
        if capture not in CAPTURE_CONTENT:
            raise SettingsError("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT must be one of "
                                f"{', '.join(CAPTURE_CONTENT)}")
        protocols = {}
        for signal, exporters in (("TRACES", traces), ("METRICS", metrics)):
            name = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
            protocol = get(name).lower() or get("OTEL_EXPORTER_OTLP_PROTOCOL").lower() or "http/protobuf"
            if "otlp" in exporters:
                if protocol not in OTLP_PROTOCOLS:
                    raise SettingsError(f"{name if get(name) else 'OTEL_EXPORTER_OTLP_PROTOCOL'} must be "
                                        f"{' or '.join(OTLP_PROTOCOLS)}")
                if protocol == "grpc" and not _installed(GRPC_EXPORTER):
                    raise SettingsError("OTLP over gRPC needs its exporter: pip install "
                                        "opentelemetry-exporter-otlp-proto-grpc (or use http/protobuf, the default)")
            protocols[signal] = protocol
        if not traces and not metrics:
            return None
        return cls(traces=traces, metrics=metrics, traces_protocol=protocols["TRACES"],
                   metrics_protocol=protocols["METRICS"], capture_content=capture)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _exporters(raw: str, name: str, default: str) -> tuple[str, ...]:
    """The exporters a comma-separated ``OTEL_*_EXPORTER`` names (``none``: none; ``prometheus``: the
    gateway's own ``/metrics``, nothing more)."""
    names = [part.strip().lower() for part in (raw or default).split(",") if part.strip()]
    unknown = [part for part in names if part not in ("otlp", "console", "none", "prometheus")]
    if unknown:
        raise SettingsError(f"{name} must be otlp, console or none (not {unknown[0]!r})")
    return tuple(dict.fromkeys(part for part in names if part in ("otlp", "console")))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with; build it with :meth:`from_env`."""

    database_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    data_dir: Path = Path("var")
    secret_key: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "INFO"
    #: Names of entry-point plugins to load; ``None`` loads every installed one (``RICEBALL_PLUGINS=none``: none).
    plugins: frozenset[str] | None = None
    #: Names of plugins (built-in or installed) that are not registered.
    disabled_plugins: frozenset[str] = frozenset()
    #: Usage rows: written every this many seconds, or once this many wait; kept in memory up to the bound.
    usage_flush_interval: float = 1.0
    usage_batch_size: int = 500
    usage_max_buffer: int = 10_000
    #: Days usage rows are kept (whole months past it are dropped); None: kept for ever.
    usage_retention_days: int | None = None
    #: Finished calls waiting for the observers at most; past it a finishing request waits for room.
    observer_queue_size: int = 10_000
    #: Bytes of request bodies held at once by the process, and by one API key (see riceball_proxy.bodies).
    max_body_bytes_in_flight: int = 256 * 1024 * 1024
    max_key_body_bytes_in_flight: int = 64 * 1024 * 1024
    #: Seconds a client has to send a request's headers (and an idle connection is kept), and its body.
    client_read_timeout: float = 30.0
    #: Seconds a shutdown waits for the calls in flight before it ends them.
    shutdown_timeout: float = 30.0
    #: ``text`` or ``json`` (one JSON object a line).
    log_format: str = "text"
    #: Serve Prometheus metrics at /metrics; on a port of their own when ``metrics_port`` is set.
    metrics: bool = True
    metrics_port: int | None = None
    #: Bearer token that unlocks /metrics for callers other than this machine (loopback, not proxied).
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    #: Redis shares the limit counters between processes and instances (``redis://host:port/db``).
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    #: Where limit counters live: ``auto`` (Redis with a URL; else memory for one process on the
    #: embedded database; else PostgreSQL), ``memory``, ``redis`` or ``postgres``.
    limits_backend: str = "auto"
    #: What a limited call meets while the shared counters are away: ``open`` (admitted) or ``closed`` (503).
    limits_fail: str = "open"
    #: The longest a failing target rests (skipped by every call), whatever its ``Retry-After`` says.
    max_upstream_rest: float = 60.0
    #: Processes serving this port (``riceball serve --workers N``).
    workers: int = 1
    #: A direct connection for LISTEN when ``database_url`` goes through a pooler in transaction mode.
    listen_database_url: str | None = dataclasses.field(default=None, repr=False)
    #: ``database_url`` is a pooler in transaction mode (RICEBALL_LISTEN_DATABASE_URL is set, to a URL or
    #: ``none``): no prepared statement outlives its transaction, and LISTEN goes elsewhere or nowhere.
    database_pooled: bool = False
    #: Seconds cached keys, assistants and providers are kept when there is no listen connection.
    cache_ttl: float = 2.0
    #: A configuration file applied at start-up (``riceball apply``), and whether that prunes.
    config_file: Path | None = None
    config_prune: bool = False
    #: Every hook call logged with its arguments and results (``RICEBALL_TRACE_PLUGINS=1``): for debugging.
    trace_plugins: bool = False
    #: Networks of the proxies whose X-Forwarded-For names the client (none: the peer is the client).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: OpenTelemetry traces and metrics (from the ``OTEL_*`` variables); None: off, and nothing of it runs.
    otel: Telemetry | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``), raising SettingsError."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        database_url = get("RICEBALL_DATABASE_URL")
        if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("RICEBALL_DATABASE_URL must start with postgresql://")
        log_level = (get("RICEBALL_LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"RICEBALL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        plugins = get("RICEBALL_PLUGINS")
        log_format = (get("RICEBALL_LOG_FORMAT") or "text").lower()
        if log_format not in ("text", "json"):
            raise SettingsError("RICEBALL_LOG_FORMAT must be text or json")
        metrics = (get("RICEBALL_METRICS") or "on").lower()
        if metrics not in ("on", "off"):
            raise SettingsError("RICEBALL_METRICS must be on or off")
        metrics_port = get("RICEBALL_METRICS_PORT")
        redis_url = get("RICEBALL_REDIS_URL")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("RICEBALL_REDIS_URL must start with redis://, rediss:// or unix://")
        limits_backend = (get("RICEBALL_LIMITS_BACKEND") or "auto").lower()
        if limits_backend not in ("auto", "memory", "redis", "postgres"):
            raise SettingsError("RICEBALL_LIMITS_BACKEND must be auto, memory, redis or postgres")
        if limits_backend == "redis" and redis_url is None:
            raise SettingsError("RICEBALL_LIMITS_BACKEND=redis needs RICEBALL_REDIS_URL")
        limits_fail = (get("RICEBALL_LIMITS_FAIL") or "open").lower()
        if limits_fail not in ("open", "closed"):
            raise SettingsError("RICEBALL_LIMITS_FAIL must be open or closed")
        listen_url = get("RICEBALL_LISTEN_DATABASE_URL")
        if listen_url is not None and listen_url.lower() != "none" \
                and not listen_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("RICEBALL_LISTEN_DATABASE_URL must start with postgresql:// (or be none)")
        if listen_url is not None and database_url is None:
            raise SettingsError("RICEBALL_LISTEN_DATABASE_URL needs RICEBALL_DATABASE_URL (the pooler's address)")
        config_prune = (get("RICEBALL_CONFIG_PRUNE") or "off").lower()
        if config_prune not in ("on", "off"):
            raise SettingsError("RICEBALL_CONFIG_PRUNE must be on or off")
        config_file = get("RICEBALL_CONFIG_FILE")
        return cls(
            database_url=database_url,
            data_dir=Path(get("RICEBALL_DATA_DIR") or "var"),
            secret_key=get("RICEBALL_SECRET_KEY"),
            host=get("RICEBALL_HOST") or DEFAULT_HOST,
            port=_integer(env, "RICEBALL_PORT", DEFAULT_PORT, 1, 65535),
            max_body_bytes=_integer(env, "RICEBALL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 2**40),
            log_level=log_level,
            plugins=None if plugins is None else frozenset() if plugins.lower() == "none" else _names(plugins),
            disabled_plugins=_names(get("RICEBALL_DISABLE_PLUGINS") or ""),
            usage_flush_interval=_number(env, "RICEBALL_USAGE_FLUSH_INTERVAL", 1.0, 0.01, 3600),
            usage_batch_size=_integer(env, "RICEBALL_USAGE_BATCH_SIZE", 500, 1, 100_000),
            usage_max_buffer=_integer(env, "RICEBALL_USAGE_MAX_BUFFER", 10_000, 2, 10_000_000),
            usage_retention_days=None if get("RICEBALL_USAGE_RETENTION_DAYS") is None else _integer(
                env, "RICEBALL_USAGE_RETENTION_DAYS", 0, 1, 36_500),
            shutdown_timeout=_number(env, "RICEBALL_SHUTDOWN_TIMEOUT", 30.0, 0, 3600),
            client_read_timeout=_number(env, "RICEBALL_CLIENT_READ_TIMEOUT", 30.0, 0.1, 3600),
            max_body_bytes_in_flight=_integer(env, "RICEBALL_MAX_BODY_BYTES_IN_FLIGHT", 256 * 1024 * 1024,
                                              1024, 2**40),
            max_key_body_bytes_in_flight=_integer(env, "RICEBALL_MAX_KEY_BODY_BYTES_IN_FLIGHT", 64 * 1024 * 1024,
                                                  1024, 2**40),
            observer_queue_size=_integer(env, "RICEBALL_OBSERVER_QUEUE_SIZE", 10_000, 1, 10_000_000),
            log_format=log_format,
            metrics=metrics == "on",
            metrics_port=None if metrics_port is None else _integer(env, "RICEBALL_METRICS_PORT", 0, 1, 65535),
            metrics_token=get("RICEBALL_METRICS_TOKEN"),
            redis_url=redis_url,
            limits_backend=limits_backend,
            limits_fail=limits_fail,
            max_upstream_rest=_number(env, "RICEBALL_MAX_UPSTREAM_REST", 60.0, 1, 86400),
            listen_database_url=None if listen_url is None or listen_url.lower() == "none" else listen_url,
            database_pooled=listen_url is not None,
            cache_ttl=_number(env, "RICEBALL_CACHE_TTL", 2.0, 0.1, 3600),
            config_file=None if config_file is None else Path(config_file),
            config_prune=config_prune == "on",
            trace_plugins=(get("RICEBALL_TRACE_PLUGINS") or "0").lower() in ("1", "on", "true", "yes"),
            trusted_proxies=_networks(get("RICEBALL_TRUSTED_PROXIES") or ""),
            otel=Telemetry.from_env(env),
        )

    @property
    def limits_store(self) -> str:
        """Where the limit counters live: ``memory``, ``redis`` or ``postgres`` (``limits_backend`` resolved)."""
        if self.limits_backend != "auto":
            return self.limits_backend
        if self.redis_url:
            return "redis"
        return "memory" if self.workers == 1 and self.database_url is None else "postgres"

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (command-line options win over the environment)."""
        return dataclasses.replace(self, **changes)


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in raw.replace(" ", ",").split(","):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise SettingsError(f"RICEBALL_TRUSTED_PROXIES takes addresses and networks (10.0.0.0/8), "
                                    f"not {part!r}") from None
    return tuple(networks)


def _names(raw: str) -> frozenset[str]:
    return frozenset(name.strip() for name in raw.split(",") if name.strip())
