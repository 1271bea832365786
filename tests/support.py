"""Fixtures: a real PostgreSQL (the machine's when reachable, else an embedded one), fresh per run."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from riceball_proxy.db import init_connection
from riceball_proxy.db.embedded import EmbeddedPostgres
from riceball_proxy.db.migrate import apply_migrations
from riceball_proxy.limits import FIELDS as LIMIT_FIELDS, Limits
from riceball_proxy.settings import Settings

DEFAULT_TEST_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
APP_TABLES = ("admins, admin_sessions, login_failures, providers, assistants, api_keys, usage_events, "
              "conversations, messages, limit_counters")
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/13"  # a database number of the suite's own
ROOT = Path(__file__).resolve().parent.parent


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
    """Settings for an app on the emptied shared database, with no installed plugin but those a test installs."""
    return Settings(database_url=clean_database, data_dir=tmp_path / "var", secret_key=secret_key,
                    plugins=frozenset({"recorder", "shout"}))


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


PLUGINS_DIR = Path(__file__).parent / "plugins"


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a module of ``tests/plugins`` as a distribution with a ``riceball`` entry point.

    A real ``.dist-info`` folder on ``sys.path``: importlib.metadata discovers the entry point exactly
    as it does for a plugin installed by pip. Returns the imported module.
    """
    import importlib

    installed = []
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))

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


#: Where ``scripts/install-agents`` puts what the end-to-end tests run from npm.
AGENTS = Path(__file__).resolve().parent.parent / "var" / "agents" / "node_modules"


def installed_agent(path: str, what: str) -> Path:
    """``AGENTS / path`` when ``scripts/install-agents`` installed it; else the test is skipped (failed in
    CI, which always installs it)."""
    found = AGENTS / path
    if not found.exists():
        assert not os.environ.get("CI"), f"{what} is not installed (scripts/install-agents installs it)"
        pytest.skip(f"{what} is not installed (scripts/install-agents installs it)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def riceball_command() -> list[str]:
    """The installed ``riceball`` console script of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "riceball")]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> int:
    """Poll ``url`` until it answers; return its status. Fails if ``process`` exits first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()!r}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


# --- riceball serve as a real process ----------------------------------------------------------------


def environment(**values):
    """The test's environment without RICEBALL_* variables, and with no installed plugin loaded."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RICEBALL_")}
    env["RICEBALL_PLUGINS"] = "none"
    env.update(values)
    return env


@pytest.fixture
def start_server():
    """Start ``riceball serve`` processes; each is stopped with SIGTERM at the end of the test."""
    processes = []

    def start(env, port, *options):
        process = subprocess.Popen([*riceball_command(), "serve", "--port", str(port), *options], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        process.stderr.close()


# --- Redis ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis: the machine's (``RICEBALL_TEST_REDIS_URL``, default db 13 on the usual port), else
    one started from Debian's ``redis-server`` on a free port for the run."""
    import redis

    url = os.environ.get("RICEBALL_TEST_REDIS_URL") or DEFAULT_TEST_REDIS
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis at 127.0.0.1:6379 and no redis-server to start: apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                               stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/13"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait()


@pytest.fixture
def redis_url(redis_server):
    """The test Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


# --- the gateway and a fake upstream, both real servers ---------------------------------------------


@pytest.fixture
async def fake_openai(aiohttp_server):
    """A fake OpenAI upstream on a real port; ``fake_openai.base_url`` ends in ``/v1``."""
    from tests.fake_openai import FakeOpenAI

    fake = FakeOpenAI()
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


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
        from riceball_proxy import crypto
        from riceball_proxy.db import api_keys

        secret = crypto.generate_api_key()
        name = name or f"test key {secret[3:11]}"  # names of keys in force are unique
        await api_keys.create(self.pool, name=name, key_hash=crypto.hash_api_key(secret),
                              prefix=crypto.display_prefix(secret), assistant_ids=assistant_ids, expires_at=expires_at,
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


# --- the admin panel ------------------------------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery"


class Panel:
    """An admin's browser without JavaScript: an aiohttp test client with a cookie jar."""

    CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

    def __init__(self, client):
        self.client = client

    async def get(self, path: str, **kwargs):
        response = await self.client.get(path, **kwargs)
        return response, await response.text()

    async def csrf_token(self, page: str = "/admin/login") -> str:
        _, text = await self.get(page)
        match = self.CSRF.search(text)
        if match is None:  # logged in already: the login page redirected
            _, text = await self.get("/admin/")
            match = self.CSRF.search(text)
        return match.group(1)

    async def post(self, path: str, data=None, *, csrf: bool = True, csrf_from: str = "/admin/login", **kwargs):
        fields = list((data or {}).items()) if isinstance(data, dict) else list(data or [])
        if csrf:
            fields.append(("csrf_token", await self.csrf_token(csrf_from)))
        response = await self.client.post(path, data=fields, **kwargs)
        return response, await response.text()

    async def login(self, username: str = "root", password: str = ADMIN_PASSWORD):
        return await self.post("/admin/login", {"username": username, "password": password})


@pytest.fixture
async def panel(aiohttp_client, settings):
    """A logged-in admin's browser on a fresh gateway."""
    from riceball_proxy import appkeys, crypto
    from riceball_proxy.app import create_app
    from riceball_proxy.db import admins

    app = create_app(settings)
    client = await aiohttp_client(app)
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    browser = Panel(client)
    response, _ = await browser.login()
    assert response.url.path == "/admin/"
    browser.app = app
    browser.pool = app[appkeys.DATABASE].pool
    return browser
