"""Every typed key under which the application keeps its shared objects."""
from __future__ import annotations


import aiohttp
from aiohttp import web

from riceball_proxy.cache import ConfigCache
from riceball_proxy.crypto import SecretBox
from riceball_proxy.db import Database
from riceball_proxy.inflight import InFlight
from riceball_proxy.metrics import Metrics
from riceball_proxy.observers import ObserverQueue
from riceball_proxy.plugins import PluginManager
from riceball_proxy.settings import Settings
from riceball_proxy.usage import UsageRecorder

SETTINGS = web.AppKey("settings", Settings)
PLUGIN_MANAGER = web.AppKey("plugin_manager", PluginManager)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
DATABASE = web.AppKey("database", Database)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
CONFIG_CACHE = web.AppKey("config_cache", ConfigCache)
#: The Prometheus metrics.
METRICS = web.AppKey("metrics", Metrics)
#: Writes usage rows in batches.
USAGE_RECORDER = web.AppKey("usage_recorder", UsageRecorder)
#: Finished API calls on their way to the ``riceball_request_finished`` observers.
OBSERVERS = web.AppKey("observers", ObserverQueue)

#: API calls being answered (for a graceful shutdown).
IN_FLIGHT = web.AppKey("in_flight", InFlight)

#: The request's id (the client's X-Request-ID when sane, else a new one).
REQUEST_ID = web.RequestKey("request_id", str)
