"""Fixtures: a real PostgreSQL (the machine's when reachable, else an embedded one), fresh per run."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from riceball_proxy.db import init_connection
from riceball_proxy.db.embedded import EmbeddedPostgres
from riceball_proxy.db.migrate import apply_migrations
from riceball_proxy.settings import Settings

DEFAULT_TEST_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
APP_TABLES = "admins, providers, assistants, api_keys, usage_events, conversations, messages"
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
    """Settings for an app on the emptied shared database."""
    return Settings(database_url=clean_database, data_dir=tmp_path / "var", secret_key=secret_key)


@pytest.fixture
def cli_env(monkeypatch, settings):
    """The environment a ``riceball`` command run in-process sees: the test database and key."""
    for name in list(os.environ):
        if name.startswith("RICEBALL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RICEBALL_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RICEBALL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RICEBALL_SECRET_KEY", settings.secret_key)
    return settings


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
