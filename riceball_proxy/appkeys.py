"""Every typed key under which the application keeps its shared objects.

It imports nothing of the gateway at run time (the types are for type checkers only), so any module,
plugins included, can use these keys without pulling in the rest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from riceball_proxy.alerts import ProviderAlerts
    from riceball_proxy.api.routing import Circuits, RefusedFields
    from riceball_proxy.bodies import BodyBudget, SlowClients
    from riceball_proxy.cache import ConfigCache
    from riceball_proxy.crypto import SecretBox
    from riceball_proxy.db import Database
    from riceball_proxy.inflight import InFlight
    from riceball_proxy.lastused import LastUsedWriter
    from riceball_proxy.limits.admission import Limiter
    from riceball_proxy.metrics import Metrics
    from riceball_proxy.observers import ObserverQueue
    from riceball_proxy.plugins import PluginManager
    from riceball_proxy.retention import UsagePartitions
    from riceball_proxy.settings import Settings
    from riceball_proxy.usage import UsageRecorder

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
PLUGIN_MANAGER: web.AppKey[PluginManager] = web.AppKey("plugin_manager")
SECRET_BOX: web.AppKey[SecretBox] = web.AppKey("secret_box")
DATABASE: web.AppKey[Database] = web.AppKey("database")
HTTP_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_session")
CONFIG_CACHE: web.AppKey[ConfigCache] = web.AppKey("config_cache")
#: The Prometheus metrics.
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: Writes usage rows in batches.
USAGE_RECORDER: web.AppKey[UsageRecorder] = web.AppKey("usage_recorder")
#: Moves API keys' ``last_used_at`` forward, in batches.
LAST_USED: web.AppKey[LastUsedWriter] = web.AppKey("last_used")
USAGE_PARTITIONS: web.AppKey[UsagePartitions] = web.AppKey("usage_partitions")
#: Finished API calls on their way to the ``riceball_request_finished`` observers.
OBSERVERS: web.AppKey[ObserverQueue] = web.AppKey("observers")
#: API calls being answered (for a graceful shutdown).
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")

#: The request's id (the client's X-Request-ID when sane, else a new one).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
#: A client's X-Request-ID that was not taken (unsafe characters, too long): for the access log, quoted.
CLIENT_REQUEST_ID: web.RequestKey[str] = web.RequestKey("client_request_id")
#: The built-in limits policy (``riceball_proxy.builtin.limits``).
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
#: Each fallback target's health in this process (``riceball_proxy.api.routing``).
CIRCUITS: web.AppKey[Circuits] = web.AppKey("circuits")
#: Fields the gateway derived that targets refused (``riceball_proxy.api.routing.RefusedFields``).
REFUSED_FIELDS: web.AppKey[RefusedFields] = web.AppKey("refused_fields")
#: Providers whose upstream refused the gateway's credentials (``riceball_proxy.alerts``).
PROVIDER_ALERTS: web.AppKey[ProviderAlerts] = web.AppKey("provider_alerts")
#: Clients too slow to send their request bodies (``riceball_proxy.bodies``).
SLOW_CLIENTS: web.AppKey[SlowClients] = web.AppKey("slow_clients")
#: Bytes of request bodies held at once, by the process and by each key (``riceball_proxy.bodies``).
BODY_BUDGET: web.AppKey[BodyBudget] = web.AppKey("body_budget")
