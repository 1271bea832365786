"""The application factory: ``create_app(settings)`` builds the gateway's ``web.Application``."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import random
import re
import secrets
from collections.abc import AsyncIterator

import aiohttp
import aiohttp_jinja2
import orjson
from aiohttp import web

from riceball_proxy import __version__, appkeys
from riceball_proxy.admin import setup_admin
from riceball_proxy.alerts import ProviderAlerts
from riceball_proxy.api import setup_api
from riceball_proxy.api.routing import Circuits, RefusedFields
from riceball_proxy.api.stages import CHAT_CONTEXT
from riceball_proxy.bodies import BodyBudget, SlowClients
from riceball_proxy.cache import ConfigCache
from riceball_proxy.crypto import load_secret_box
from riceball_proxy.db import open_database
from riceball_proxy.declared.apply import start_up_applier
from riceball_proxy.errors import APIError
from riceball_proxy.inflight import InFlight
from riceball_proxy.lastused import LastUsedWriter
from riceball_proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from riceball_proxy.metrics import Metrics
from riceball_proxy.observers import ObserverQueue
from riceball_proxy.plugins import PluginManager, make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.proxies import forwarded_middleware
from riceball_proxy.retention import UsagePartitions
from riceball_proxy.settings import Settings
from riceball_proxy.templating import setup_templates, template_dir

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: A client's X-Request-ID is taken when it is made of these (no space, quote or "=": it is written into
#: log lines as it is); another one is replaced, and logged quoted (its first MAX_CLIENT_REQUEST_ID
#: characters) as ``client_request_id``.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+@-]{1,128}")
MAX_CLIENT_REQUEST_ID = 200
#: Draws the request ids: seeded from the system's random source, and again in every forked worker.
_request_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _request_ids.seed(os.urandom(32)))


def new_request_id() -> str:
    """``req_`` and 32 hex digits, as unique as a uuid4 (128 random bits) without a system call each."""
    return f"req_{_request_ids.getrandbits(128):032x}"

#: No bound on the shared pool itself: each provider's ConnectionGate bounds its own calls, so that
#: calls hanging on one provider cannot take the connections another provider needs.
HTTP_POOL_LIMIT = 0
HTTP_POOL_LIMIT_PER_HOST = 0
#: Bytes of one upstream line (an SSE event) read at once; large tool-call chunks need room.
HTTP_READ_BUFSIZE = 2**20
#: What a request line and its headers may hold. The HTTP parser is given room past these (PARSER_ROOM)
#: so that a request over them reaches ``request_middleware`` and is answered in the API's
#: error shape; past the parser's room the connection gets aiohttp's plain 400.
MAX_URL_LENGTH = 8190
MAX_HEADER_LINE = 8190
MAX_HEADERS = 128
PARSER_ROOM = {"max_line_size": 2 * MAX_URL_LENGTH, "max_field_size": 2 * MAX_HEADER_LINE,
               "max_headers": 2 * MAX_HEADERS}
#: Seconds that observers still running at shutdown are given to finish.
OBSERVERS_GRACE = 10.0


def create_app(settings: Settings, *, plugin_manager: PluginManager | None = None) -> web.Application:
    """Build the gateway for ``settings``; resources are opened when the app starts."""
    middlewares = [request_middleware]
    if settings.trusted_proxies:
        middlewares.append(forwarded_middleware(settings.trusted_proxies))
    # A connection that sends no whole request (headers trickling, or idle) is closed after the client read
    # timeout; bodies are read by riceball_proxy.bodies (its deadline, its own decoding).
    handler_args = {**PARSER_ROOM, "keepalive_timeout": settings.client_read_timeout, "auto_decompress": False}
    app = web.Application(client_max_size=settings.max_body_bytes, handler_args=handler_args, middlewares=middlewares)
    app[appkeys.SETTINGS] = settings
    app[appkeys.PLUGIN_MANAGER] = plugin_manager or make_plugin_manager(settings)
    app[appkeys.SECRET_BOX] = load_secret_box(settings)
    app[appkeys.METRICS] = Metrics()
    app[appkeys.IN_FLIGHT] = InFlight()
    app[appkeys.CIRCUITS] = Circuits(max_rest=settings.max_upstream_rest)
    app[appkeys.REFUSED_FIELDS] = RefusedFields()
    # Never less than one body of the largest size, or such a body could never be read.
    app[appkeys.BODY_BUDGET] = BodyBudget(max(settings.max_body_bytes_in_flight, settings.max_body_bytes),
                                          max(settings.max_key_body_bytes_in_flight, settings.max_body_bytes))
    app[appkeys.SLOW_CLIENTS] = SlowClients(logging.getLogger("riceball_proxy.bodies"),
                                            app[appkeys.METRICS].slow_requests.inc)
    # Shutdown: the listening sockets are closed first; then the calls in flight get their time.
    app.on_shutdown.append(drain_in_flight)
    app.on_response_prepare.append(add_request_id_header)
    setup_templates(app)
    # Order matters: plugins start after, and stop before, the resources they use.
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(last_used_ctx)
    app.cleanup_ctx.append(usage_partitions_ctx)
    app.cleanup_ctx.append(provider_alerts_ctx)
    app.cleanup_ctx.append(http_session_ctx)
    app.cleanup_ctx.append(config_cache_ctx)
    app.cleanup_ctx.append(plugins_ctx)
    app.cleanup_ctx.append(observers_ctx)
    if settings.redis_url:
        app.cleanup_ctx.append(shared_circuits_ctx)
    if settings.metrics and settings.metrics_port is not None:
        app.cleanup_ctx.append(metrics_site_ctx)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/readyz", readyz)
    if settings.metrics and settings.metrics_port is None:
        app.router.add_get("/metrics", metrics)
    setup_api(app)
    setup_admin(app)
    return app


async def drain_in_flight(app: web.Application) -> None:
    """Let the API calls in flight finish for ``RICEBALL_SHUTDOWN_TIMEOUT`` seconds, then end the rest."""
    await app[appkeys.IN_FLIGHT].drain(app[appkeys.SETTINGS].shutdown_timeout)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open (and migrate) the database for the app's lifetime; apply RICEBALL_CONFIG_FILE under the
    migration lock."""
    settings = app[appkeys.SETTINGS]
    then = start_up_applier(settings, app[appkeys.SECRET_BOX], provider_types(app[appkeys.PLUGIN_MANAGER]))
    async with open_database(settings, then=then) as database:
        app[appkeys.DATABASE] = database
        yield


async def shared_circuits_ctx(app: web.Application) -> AsyncIterator[None]:
    """Fallback targets' circuits shared with every other process through Redis."""
    from riceball_proxy.circuits_shared import SharedCircuits

    shared = SharedCircuits(app[appkeys.CIRCUITS], app[appkeys.SETTINGS].redis_url or "")  # set, or not called
    await shared.start()
    yield
    await shared.close()


async def provider_alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Providers whose credentials were refused, noted for the admin panel."""
    app[appkeys.PROVIDER_ALERTS] = alerts = ProviderAlerts(app[appkeys.DATABASE].pool)
    yield
    await alerts.close()


async def usage_partitions_ctx(app: web.Application) -> AsyncIterator[None]:
    """The usage table's months: made ahead, and dropped past the retention (riceball_proxy.retention)."""
    app[appkeys.USAGE_PARTITIONS] = upkeep = UsagePartitions(app[appkeys.DATABASE].pool,
                                                              app[appkeys.SETTINGS].usage_retention_days)
    await upkeep.keep()  # before the first call: this month's partition is there
    upkeep.start()
    yield
    await upkeep.close()


async def last_used_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keys' last use, written in the background by the core (whatever plugins are installed)."""
    app[appkeys.LAST_USED] = writer = LastUsedWriter(app[appkeys.DATABASE].pool,
                                                     interval=app[appkeys.SETTINGS].usage_flush_interval)
    writer.start()
    yield
    await writer.close()


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one ClientSession through which every upstream call goes, with keep-alive."""
    connector = aiohttp.TCPConnector(limit=HTTP_POOL_LIMIT, limit_per_host=HTTP_POOL_LIMIT_PER_HOST)
    async with aiohttp.ClientSession(
        connector=connector, read_bufsize=HTTP_READ_BUFSIZE, json_serialize=lambda v: orjson.dumps(v).decode()
    ) as session:
        app[appkeys.HTTP_SESSION] = session
        yield


async def config_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hot-path cache of keys, assistants and providers, and the task that keeps it coherent."""
    cache = ConfigCache(
        app[appkeys.DATABASE].pool,
        app[appkeys.SECRET_BOX],
        provider_types(app[appkeys.PLUGIN_MANAGER]),
        app[appkeys.HTTP_SESSION],
    )
    app[appkeys.CONFIG_CACHE] = cache
    settings = app[appkeys.SETTINGS]
    if settings.database_pooled and settings.listen_database_url is None:
        logger.warning("no connection listens for configuration changes (RICEBALL_LISTEN_DATABASE_URL=none): "
                       "changes made elsewhere are served within %g s", settings.cache_ttl)
        keeper = cache.expire(settings.cache_ttl)
    else:
        keeper = cache.listen(settings.listen_database_url or app[appkeys.DATABASE].url,
                              fallback_ttl=settings.cache_ttl)
    listener = asyncio.create_task(keeper, name="riceball-config-listener")
    yield
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


async def observers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Observers run off the request path, and finish before the resources close."""
    app[appkeys.OBSERVERS] = observers = ObserverQueue(
        app[appkeys.PLUGIN_MANAGER], max_pending=app[appkeys.SETTINGS].observer_queue_size,
        on_backpressure=app[appkeys.METRICS].observer_backpressure.inc)
    yield
    await observers.close(OBSERVERS_GRACE)


async def metrics_site_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve /metrics on a port of its own (shared by the workers), away from the API."""
    metrics_app = web.Application()
    metrics_app[appkeys.METRICS] = app[appkeys.METRICS]
    metrics_app[appkeys.SETTINGS] = app[appkeys.SETTINGS]
    metrics_app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    settings = app[appkeys.SETTINGS]
    await web.TCPSite(runner, settings.host, settings.metrics_port, reuse_port=True).start()
    yield
    await runner.cleanup()


async def plugins_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the plugins' ``riceball_startup`` and ``riceball_shutdown`` hooks."""
    pm = app[appkeys.PLUGIN_MANAGER]
    await pm.run("riceball_startup", app=app)
    yield
    await pm.run("riceball_shutdown", app=app)  # isolated: one plugin's failure stops no other


@web.middleware
async def request_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every request's first stop (one middleware rather than two: each costs on every call).

    A URL or headers past the limits are refused (414, 431; in OpenAI's error shape under ``/api/``);
    every other request gets an id: the client's ``X-Request-ID`` when it is made of safe characters
    (``SAFE_REQUEST_ID``), else a new one.
    """
    headers = request.raw_headers
    if len(request.raw_path) > MAX_URL_LENGTH:
        status, message = 414, f"The request URL is longer than {MAX_URL_LENGTH} bytes."
    elif len(headers) > MAX_HEADERS:
        status, message = 431, f"The request has more than {MAX_HEADERS} headers."
    elif sum(map(len, itertools.chain.from_iterable(headers))) > MAX_HEADER_LINE - 2 and any(
            len(name) + len(value) + 2 > MAX_HEADER_LINE for name, value in headers):  # the loop only when it could
        status, message = 431, f"A request header is longer than {MAX_HEADER_LINE} bytes."
    else:
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id is None or SAFE_REQUEST_ID.fullmatch(request_id) is None:
            if request_id is not None:  # kept for the access log, quoted: never a field of its own
                request[appkeys.CLIENT_REQUEST_ID] = request_id[:MAX_CLIENT_REQUEST_ID]
            request_id = new_request_id()
        request[appkeys.REQUEST_ID] = request_id
        return await handler(request)
    if request.path.startswith("/api/"):
        code = "uri_too_long" if status == 414 else "request_header_fields_too_large"
        return APIError(status, message, code=code).response()
    return web.Response(status=status, text=message)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the request id on every response, streamed and error ones included, and add the headers an
    API call asked for (``ChatContext.response_headers``: its rate limits)."""
    response.headers[REQUEST_ID_HEADER] = request.get(appkeys.REQUEST_ID) or new_request_id()
    ctx = request.get(CHAT_CONTEXT)
    if ctx is not None and ctx.response_headers:
        response.headers.update(ctx.response_headers)


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict:
    """A landing page that says what this server is."""
    return {"version": __version__}


async def favicon(request: web.Request) -> web.FileResponse:
    """The icon browsers ask for on their own (an SVG, which they take whatever the name says)."""
    return web.FileResponse(template_dir() / "static" / "favicon.svg",
                            headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"})


async def healthz(request: web.Request) -> web.Response:
    """200 while the process is alive."""
    return web.json_response({"status": "ok"})


def _from_this_machine(request: web.Request) -> bool:
    """A caller on a loopback address that came straight here (no proxy named another one)."""
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:  # a unix socket peer, or anything else that is no IP address
        return False


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus metrics: open to this machine; others need ``RICEBALL_METRICS_TOKEN`` as a bearer token.

    They name assistants and providers, which are nobody else's business.
    """
    token = request.config_dict[appkeys.SETTINGS].metrics_token
    if not _from_this_machine(request):
        if token is None:
            return web.Response(status=403, text="/metrics is served to this machine only; set "
                                                 "RICEBALL_METRICS_TOKEN to let others scrape it with that token.\n")
        sent = request.headers.get("Authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return web.Response(status=401, text="/metrics needs the metrics token as a bearer token.\n",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body = request.config_dict[appkeys.METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers, 503 otherwise."""
    if await request.app[appkeys.DATABASE].is_ready():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "unavailable", "reason": "database unreachable"}, status=503)
