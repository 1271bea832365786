"""The RiceBall pytest plugin: a real PostgreSQL, a running gateway, fake upstreams.

Installed with ``riceball-proxy`` (entry point ``pytest11``), so that its fixtures are there in any
test suite of a venv that has the gateway: a plugin's author tests the way the first-party plugins do.

- ``settings``: gateway settings on an emptied, migrated database (the machine's PostgreSQL at
  ``RICEBALL_TEST_DATABASE_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``, else an
  embedded one); no installed plugin is loaded but those named (``settings.replace(plugins=...)``).
- ``start_gateway(settings)``: a gateway on a real port, as ``riceball serve`` serves it; a
  :class:`Gateway` to configure it (``provider``, ``assistant``, ``key``) and call it (``client``,
  the official OpenAI SDK; ``anthropic``, Anthropic's). ``gateway`` and ``configured`` are ready-made.
- ``fake_openai``, ``fake_anthropic``: fake upstreams that speak those APIs' wire formats on real ports,
  refusing what the real APIs refuse.
- ``install_plugin(module, entry_name, distribution)``: an importable module installed as a plugin
  distribution (a real ``.dist-info``), found by entry point as pip's would be.
- ``db``, ``cli_env``, ``make_database``: a pool on the test database, the environment of an in-process
  ``riceball`` command, more databases.

Tests run in pytest-aiohttp's loop (``asyncio_mode = auto``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import time
import types
import urllib.parse
import uuid

import asyncpg
import pytest
from cryptography.fernet import Fernet

from riceball_proxy.db import init_connection
from riceball_proxy.db.embedded import EmbeddedPostgres
from riceball_proxy.db.migrate import apply_migrations
from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import Limits
from riceball_proxy.settings import Settings

DEFAULT_TEST_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
APP_TABLES = ("admins, admin_sessions, login_failures, providers, assistants, api_keys, usage_events, usage_hourly, "
              "usage_daily, conversations, messages, limit_counters")


def run_sync(coroutine_function, *args):
    """Run a coroutine to completion in a thread of its own (usable inside or outside an event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine_function(*args)).result()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A URL on a PostgreSQL server where the tests may create databases."""
    url = os.environ.get("RICEBALL_TEST_DATABASE_URL", DEFAULT_TEST_SERVER)
    if asyncio.run(_reachable(url)):
        yield url
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("embedded"))
    yield embedded.start()
    embedded.close()


@pytest.fixture(scope="session")
def make_database(postgres_server):
    """Create empty databases on demand; every one is dropped when the run ends."""
    created = []

    async def create(name):
        conn = await asyncpg.connect(postgres_server)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def make() -> str:
        name = f"riceball_test_{uuid.uuid4().hex[:16]}"
        run_sync(create, name)
        created.append(name)
        return with_database(postgres_server, name)

    yield make

    async def drop_all():
        conn = await asyncpg.connect(postgres_server)
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop_all())


@pytest.fixture(scope="session")
def database_url(make_database):
    """One migrated database shared by the run; ``clean_database`` empties it per test."""
    url = make_database()

    async def migrate():
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    return url


@pytest.fixture
def clean_database(database_url):
    """The shared database with every application table emptied."""

    async def truncate():
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"TRUNCATE {APP_TABLES} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    asyncio.run(truncate())
    return database_url


@pytest.fixture
async def db(clean_database):
    """A pool on the emptied shared database."""
    pool = await asyncpg.create_pool(clean_database, min_size=1, max_size=4, init=init_connection)
    yield pool
    await pool.close()


@pytest.fixture
def secret_key():
    return Fernet.generate_key().decode()


@pytest.fixture
def settings(clean_database, tmp_path, secret_key):
    """Settings for an app on the emptied shared database, with no installed plugin loaded but those a
    test names (``settings.replace(plugins=frozenset({"acme"}))``)."""
    return Settings(database_url=clean_database, data_dir=tmp_path / "var", secret_key=secret_key,
                    plugins=frozenset())


@pytest.fixture
def cli_env(monkeypatch, settings):
    """The environment a ``riceball`` command run in-process sees: the test database and key."""
    for name in list(os.environ):
        if name.startswith("RICEBALL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RICEBALL_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RICEBALL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RICEBALL_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("RICEBALL_PLUGINS", ",".join(sorted(settings.plugins)))
    return settings


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install an importable module as a distribution with a ``riceball`` entry point:
    ``install_plugin("riceball_acme", "acme", "riceball-acme")``.

    A real ``.dist-info`` folder on ``sys.path``: importlib.metadata discovers the entry point exactly
    as it does for a plugin installed by pip. Returns the imported module.
    """
    import importlib

    installed = []

    def install(module_name: str, entry_name: str, distribution: str, version: str = "1.0.0"):
        dist_info = tmp_path / f"{distribution.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (dist_info / "entry_points.txt").write_text(f"[riceball]\n{entry_name} = {module_name}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        installed.append(module_name)
        return importlib.import_module(module_name)

    yield install
    for module_name in installed:
        sys.modules.pop(module_name, None)


# --- the gateway and fake upstreams, all real servers ---------------------------------------------


async def _served(fake, aiohttp_server):
    """``fake`` served on a real port, its ``base_url`` set to the server's ``/v1``."""
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


@pytest.fixture
async def fake_openai(aiohttp_server):
    """A fake OpenAI upstream on a real port; ``fake_openai.base_url`` ends in ``/v1``."""
    from riceball_proxy.testing.fake_openai import FakeOpenAI

    return await _served(FakeOpenAI(), aiohttp_server)


@pytest.fixture
async def fake_anthropic(aiohttp_server):
    """A fake Anthropic Messages API on a real port; ``fake_anthropic.base_url`` ends in ``/v1``."""
    from riceball_proxy.testing.fake_anthropic import FakeAnthropic

    return await _served(FakeAnthropic(), aiohttp_server)


class Gateway:
    """A running gateway app and helpers to configure it through the real repositories."""

    def __init__(self, app, server):
        from riceball_proxy import appkeys

        self.app = app
        self.server = server
        self.pool = app[appkeys.DATABASE].pool
        self.cache = app[appkeys.CONFIG_CACHE]
        self.secret_box = app[appkeys.SECRET_BOX]

    def url(self, path: str = "") -> str:
        return str(self.server.make_url(path))

    def base_url(self, assistant_id) -> str:
        return self.url(f"/api/v1/assistants/{assistant_id}/v1")

    async def provider(self, base_url: str, *, api_key: str | None = "sk-upstream-secret", name: str | None = None,
                       type: str = "openai", **fields):
        from riceball_proxy.db import providers

        return await providers.create(
            self.pool, name=name or f"provider-{uuid.uuid4().hex[:8]}", type=type, base_url=base_url,
            api_key_encrypted=None if api_key is None else self.secret_box.encrypt(api_key), **fields,
        )

    async def assistant(self, provider, **fields):
        from riceball_proxy.db import assistants

        values = {"name": f"helper-{uuid.uuid4().hex[:8]}", "model": "gpt-4o"} | fields  # names are unique
        limits = {name: values.pop(name) for name in LIMIT_FIELDS if name in values}
        if limits:
            values["limits"] = Limits(**limits)
        return await assistants.create(self.pool, provider_id=provider.id, **values)

    async def key(self, *, assistant_ids=None, expires_at=None, name=None, **limits) -> str:
        from riceball_proxy.db import api_keys

        name = name or f"test key {uuid.uuid4().hex[:8]}"  # names of keys in force are unique
        _, secret = await api_keys.issue(self.pool, name=name, assistant_ids=assistant_ids, expires_at=expires_at,
                                         limits=Limits(**limits))
        return secret

    def client(self, assistant_id, key: str, **options):
        """The official async OpenAI SDK pointed at an assistant."""
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url(assistant_id), api_key=key, max_retries=0, **options)

    def anthropic(self, assistant_id, key: str, **options):
        """The official async Anthropic SDK pointed at an assistant (its base URL, as Claude Code's)."""
        import anthropic

        return anthropic.AsyncAnthropic(base_url=self.url(f"/api/v1/assistants/{assistant_id}"), api_key=key,
                                        max_retries=0, **options)

    def sync_client(self, assistant_id, key: str, **options):
        """The official sync OpenAI SDK (call it through ``asyncio.to_thread``: the server shares this loop)."""
        import openai

        return openai.OpenAI(base_url=self.base_url(assistant_id), api_key=key, max_retries=0, **options)

    async def usage_rows(self, expected: int) -> list:
        """The usage rows, oldest first, once ``expected`` of them are written."""
        return await usage_rows_of(self.app, expected)

    async def wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.cache.listening:
            assert time.monotonic() < deadline, "the configuration listener did not connect"
            await asyncio.sleep(0.02)


async def usage_rows_of(app, expected: int) -> list:
    """An app's usage rows, oldest first, once ``expected`` of them are written (its recorder flushed)."""
    from riceball_proxy import appkeys

    pool = app[appkeys.DATABASE].pool
    for _ in range(200):
        await app[appkeys.USAGE_RECORDER].flush()
        rows = await pool.fetch("SELECT * FROM usage_events ORDER BY created_at")
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(rows)} usage rows, not {expected}")


@pytest.fixture
async def start_gateway():
    """Start gateway apps on real ports (several may share one database), served as ``riceball serve``
    serves them (``connections.Runner``)."""
    from aiohttp.test_utils import TestServer

    from riceball_proxy.app import create_app
    from riceball_proxy.connections import Runner

    class GatewayServer(TestServer):
        async def _make_runner(self, **kwargs):
            return Runner(self.app, **kwargs)

    servers = []

    async def start(settings, plugin_manager=None) -> Gateway:
        app = create_app(settings, plugin_manager=plugin_manager)
        server = GatewayServer(app)
        await server.start_server()
        servers.append(server)
        gateway = Gateway(app, server)
        await gateway.wait_until_listening()
        return gateway

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def gateway(start_gateway, settings):
    return await start_gateway(settings)


@pytest.fixture
async def configured(gateway, fake_openai):
    """A gateway with one provider on the fake upstream, one assistant and one key for it."""
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    client = gateway.client(assistant.id, key)
    yield types.SimpleNamespace(gateway=gateway, upstream=fake_openai, provider=provider, assistant=assistant,
                                key=key, client=client)
    await client.close()
