"""The repository's own test helpers, beside the fixtures every suite gets from the gateway's pytest
plugin (``riceball_proxy.testing``): processes of ``riceball serve``, Redis, the coding agents, the
admin panel's browser."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from riceball_proxy.testing import Gateway, run_sync, usage_rows_of, with_database  # noqa: F401 (used by tests)

DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/13"  # a database number of the suite's own
ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture
async def second_openai(aiohttp_server):
    """Another fake OpenAI upstream (a fallback's)."""
    from riceball_proxy.testing.fake_openai import FakeOpenAI

    fake = FakeOpenAI()
    fake.reply = "Hello from the fallback"
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


@contextlib.contextmanager
def access_log_captured():
    """The access logger ``riceball serve`` uses (pass it to the server as ``access_log``), and a stream
    that gets its lines as JSON while the block runs."""
    from riceball_proxy.logs import ACCESS_LOGGER, JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


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
    return await logged_in_panel(aiohttp_client, settings)


async def logged_in_panel(aiohttp_client, settings):
    """A logged-in admin's browser on a fresh gateway with these settings."""
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
