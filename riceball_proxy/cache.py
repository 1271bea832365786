"""In-process copies of API keys, assistants and providers, kept coherent through LISTEN/NOTIFY.

Triggers (migration 0002) notify channel ``riceball_config`` with ``<table>:<id>`` on every change.
A dedicated connection listens; each notification drops the matching entry. While that connection
is down every lookup reads the database (nothing new is cached), and all entries are dropped when it
comes back, so a change made while it was down is never served stale. Behind a pooler in transaction
mode LISTEN needs a direct connection (RICEBALL_LISTEN_DATABASE_URL); without one, entries live a few
seconds instead (:meth:`ConfigCache.expire`). When the database itself cannot
be reached, lookups fall back to the entries held from before: requests keep being served through an
outage, and nobody can change a key or an assistant meanwhile anyway.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

import aiohttp
import asyncpg
from cachetools import LRUCache

from riceball_proxy.crypto import SecretBox
from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.db.api_keys import ApiKey
from riceball_proxy.db.assistants import Assistant
from riceball_proxy.db.providers import Provider
from riceball_proxy.errors import APIError
from riceball_proxy.faults import FailureLog, database_away
from riceball_proxy.providers import ProviderAdapter, ProviderType
from riceball_proxy.upstream import ConnectionGate

logger = logging.getLogger(__name__)

CHANNEL = "riceball_config"
LISTENER_APPLICATION_NAME = "riceball-config-listener"
#: Entries kept, least recently used dropped first. Unknown keys and assistant ids are remembered apart
#: (so that a flood of bad ones neither reaches the database nor pushes out the entries in use).
MAX_KEYS = 100_000
MAX_UNKNOWN_KEYS = 10_000
MAX_ASSISTANTS = 10_000
MAX_UNKNOWN_ASSISTANTS = 10_000
MAX_PROVIDERS = 1_000
#: Seconds between liveness checks of the listening connection, and before reconnecting.
LISTENER_PING_INTERVAL = 5.0
LISTENER_RETRY_DELAY = 1.0
#: Seconds a lookup may wait for the database before it serves the entry held from before.
LOOKUP_TIMEOUT = 3.0
#: Seconds the read of an entry held nowhere may take (its only alternative is a 503). Longer, because
#: every call wanting it waits on this one read, and a burst of calls that keeps the event loop busy
#: delays its answer too: 10,000 streams arriving at once took more than 3 s of a 2-core machine.
COLD_LOOKUP_TIMEOUT = 15.0


class ProviderNotInstalled(LookupError):
    """A provider's type is offered by no registered plugin."""


def _store(known: MutableMapping, unknown: MutableMapping, cache_key: Any, value: Any) -> None:
    if value is not None:
        known[cache_key] = value
        unknown.pop(cache_key, None)
    else:
        unknown[cache_key] = None


class ConfigCache:
    """Hot-path lookups that need no database round trip once warm."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        secret_box: SecretBox,
        provider_types: dict[str, ProviderType],
        session: aiohttp.ClientSession,
    ):
        self.pool = pool
        self.secret_box = secret_box
        self.provider_types = provider_types
        self.session = session
        #: True while the listening connection is up; nothing is cached otherwise.
        self.listening = False
        self._keys: LRUCache[bytes, ApiKey] = LRUCache(MAX_KEYS)
        self._unknown_keys: LRUCache[bytes, None] = LRUCache(MAX_UNKNOWN_KEYS)
        self._assistants: LRUCache[uuid.UUID, Assistant] = LRUCache(MAX_ASSISTANTS)
        self._unknown_assistants: LRUCache[uuid.UUID, None] = LRUCache(MAX_UNKNOWN_ASSISTANTS)
        self._providers: LRUCache[int, tuple[Provider, ProviderAdapter]] = LRUCache(MAX_PROVIDERS)
        # One gate per provider, kept across adapter rebuilds so that the bound holds whatever is cached.
        self._gates: dict[int, ConnectionGate] = {}
        # Bumped by every invalidation: a read that started before one must not store its result.
        self._generation = 0
        #: The reads under way: (which cache, entry, generation) -> the read, which later lookups share.
        self._reads: dict[tuple, asyncio.Future] = {}
        self.listener_failures = FailureLog(logger, "the configuration listener")

    # --- lookups -----------------------------------------------------------------------------------

    async def api_key(self, key_hash: bytes) -> ApiKey | None:
        """The key with this SHA-256, or None."""
        key = self._keys.get(key_hash)
        if self.listening and (key is not None or key_hash in self._unknown_keys):
            return key
        return await self._load(lambda: api_keys.get_by_hash(self.pool, key_hash), self._store_key, key_hash,
                                self._keys)

    async def assistant(self, assistant_id: uuid.UUID) -> Assistant | None:
        """The assistant with this id, or None."""
        if self.listening:
            assistant = self._assistants.get(assistant_id)
            if assistant is not None or assistant_id in self._unknown_assistants:
                return assistant
        return await self._load(lambda: assistants.get(self.pool, assistant_id), self._store_assistant,
                                assistant_id, self._assistants)

    async def assistant_named(self, name: str) -> Assistant | None:
        """The assistant with this name, or None (from the database: only a mistaken URL asks)."""
        return await assistants.get_by_name(self.pool, name)

    async def provider(self, provider_id: int) -> tuple[Provider, ProviderAdapter]:
        """The provider with this id and its adapter (built once per provider, not per request)."""
        if self.listening and provider_id in self._providers:
            return self._providers[provider_id]

        async def load():
            provider = await providers.get(self.pool, provider_id)
            if provider is None:
                raise LookupError(f"no provider with id {provider_id}")
            return provider, self._adapter(provider)

        return await self._load(load, self._providers.__setitem__, provider_id, self._providers)

    def _adapter(self, provider: Provider) -> ProviderAdapter:
        provider_type = self.provider_types.get(provider.type)
        if provider_type is None:
            raise ProviderNotInstalled(f"provider type {provider.type!r} is not installed")
        api_key = None
        if provider.api_key_encrypted is not None:
            api_key = self.secret_box.decrypt(provider.api_key_encrypted)
        adapter = provider_type.adapter(provider, api_key, self.session)
        adapter.gate = self._gate(provider)
        return adapter

    def _gate(self, provider: Provider) -> ConnectionGate:
        gate = self._gates.get(provider.id)
        if gate is None or (gate.limit, gate.wait, gate.provider_name) != (
                provider.max_connections, provider.queue_timeout, provider.name):
            # Calls under the old gate finish under it; new calls count against the new bound.
            gate = self._gates[provider.id] = ConnectionGate(provider.name, provider.max_connections,
                                                             provider.queue_timeout)
        return gate

    async def _load(self, read: Callable, store: Callable[[Any, Any], None], cache_key: Any,
                    held: MutableMapping[Any, Any]) -> Any:
        """The value ``read`` gives, stored under ``cache_key``. Lookups of one entry made while its read
        is under way wait for that read rather than making their own (a cold entry under load, after a
        start or a change, costs one database round trip, not one per request); a lookup made after an
        invalidation never joins a read that began before it."""
        flight_key = (id(held), cache_key, self._generation)
        flight = self._reads.get(flight_key)
        if flight is None:
            flight = self._reads[flight_key] = asyncio.ensure_future(self._read(read, store, cache_key, held))
            flight.add_done_callback(lambda done: self._read_done(flight_key, done))
        return await asyncio.shield(flight)  # one caller going away leaves the read to the others

    def _read_done(self, flight_key: tuple, flight: asyncio.Future) -> None:
        self._reads.pop(flight_key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here too, for when every caller went away before it ended

    async def _read(self, read: Callable, store: Callable[[Any, Any], None], cache_key: Any,
                    held: MutableMapping[Any, Any]) -> Any:
        generation = self._generation
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT if cache_key in held else COLD_LOOKUP_TIMEOUT):
                value = await read()
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
            if cache_key in held:  # the database is away: serve what was known before
                return held[cache_key]
            logger.warning("configuration lookup failed: %s", type(exc).__name__)
            raise APIError(503, "The gateway cannot reach its database right now; retry shortly.",
                           type="api_error", code="database_unavailable") from None
        if self.listening and generation == self._generation:
            store(cache_key, value)
        return value

    def _store_key(self, key_hash: bytes, key: ApiKey | None) -> None:
        _store(self._keys, self._unknown_keys, key_hash, key)

    def _store_assistant(self, assistant_id: uuid.UUID, assistant: Assistant | None) -> None:
        _store(self._assistants, self._unknown_assistants, assistant_id, assistant)

    def entries(self) -> dict[str, int]:
        """How many entries each part of the cache holds (each is bounded)."""
        return {"keys": len(self._keys), "unknown_keys": len(self._unknown_keys),
                "assistants": len(self._assistants), "unknown_assistants": len(self._unknown_assistants),
                "providers": len(self._providers)}

    # --- invalidation ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Drop every entry."""
        self._generation += 1
        self._keys.clear()
        self._unknown_keys.clear()
        self._assistants.clear()
        self._unknown_assistants.clear()
        self._providers.clear()

    def invalidate(self, payload: str) -> None:
        """Drop what a ``<table>:<id>`` notification names (everything, if it cannot be read)."""
        self._generation += 1
        table, _, raw_id = payload.partition(":")
        try:
            if table == "api_keys":
                key_id = uuid.UUID(raw_id)
                for key_hash, key in list(self._keys.items()):
                    if key.id == key_id:
                        del self._keys[key_hash]
                self._unknown_keys.clear()  # a new key may have a hash seen before as unknown
            elif table == "assistants":
                assistant_id = uuid.UUID(raw_id)
                self._assistants.pop(assistant_id, None)
                self._unknown_assistants.pop(assistant_id, None)
            elif table == "providers":
                self._providers.pop(int(raw_id), None)
            else:
                self.flush()
        except ValueError:
            self.flush()

    async def expire(self, ttl: float) -> None:
        """Where no connection can listen (a pooler in transaction mode and no direct URL): keep entries,
        and drop them all every ``ttl`` seconds, so that a change is served within ``ttl``. Until cancelled."""
        self.listening = True
        try:
            while True:
                await asyncio.sleep(ttl)
                self.flush()
        finally:
            self.listening = False

    async def listen(self, url: str, *, fallback_ttl: float = 2.0) -> None:
        """Listen for changes until cancelled, reconnecting whenever the database is away; after any other
        failure (a bug, which no reconnection fixes) entries expire every ``fallback_ttl`` seconds instead."""
        broken = False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(url, server_settings={"application_name": LISTENER_APPLICATION_NAME})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())  # this connection's event
                await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: self.invalidate(payload))
                self.flush()
                self.listening = True
                self.listener_failures.recovered()
                logger.info("listening for configuration changes")
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), LISTENER_PING_INTERVAL)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=LISTENER_PING_INTERVAL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop caching, reconnect after a pause
                away = database_away(exc)
                self.listener_failures.failed(exc, retrying=away)
                if not away:  # a bug: no reconnection fixes it; entries expire on a clock instead
                    broken = True
            finally:
                # Entries are kept as a fallback for an outage; the next connection starts with a flush.
                self.listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if broken:
                logger.error("configuration listener stopped: cached entries now expire every %g s", fallback_ttl)
                await self.expire(fallback_ttl)
                return
            await asyncio.sleep(LISTENER_RETRY_DELAY)
