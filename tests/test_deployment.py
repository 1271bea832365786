"""Several gateway processes on one database, directly or through Debian's PgBouncer in transaction mode,
and behind Debian's nginx configured with exactly the file docs/deployment.md gives."""
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import openai
import pytest

from riceball_proxy import crypto
from riceball_proxy.admin.throttle import MAX_FAILURES_PER_USER, _key
from riceball_proxy.db import admins, api_keys, assistants, init_connection, providers
from riceball_proxy.limits import Limits
from tests.pgbouncer import running_pgbouncer
from tests.support import ADMIN_PASSWORD, Panel, environment, free_port, riceball_command, wait_for_http

DOCS = Path(__file__).resolve().parent.parent / "docs"
MESSAGES = [{"role": "user", "content": "hi"}]


def program(name: str) -> str:
    """A Debian package's program; CI has them all (.ci/run installs them), so there it is never skipped."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        assert not os.environ.get("CI"), f"Debian's {name} package is not installed"
        pytest.skip(f"Debian's {name} package is not installed (apt-get install {name})")
    return path


def documented_block(language: str, after: str) -> str:
    text = (DOCS / "deployment.md").read_text()
    return re.search(rf"```{language}\n(.*?)```", text[text.index(after):], re.S).group(1)


# --- PgBouncer ------------------------------------------------------------------------------------------


@pytest.fixture
def pgbouncer(clean_database):
    """PgBouncer in transaction mode in front of the test database, with a pool smaller than the callers;
    the database's URL through it."""
    program("pgbouncer")
    with running_pgbouncer(clean_database, pool_size=4) as url:
        yield url


# --- configuring and driving gateways -------------------------------------------------------------------


async def configure(url: str, upstream: str, secret_key: str) -> dict:
    """A provider on the fake upstream, an assistant, a key, a key limited to 5 requests a minute and an admin."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, init=init_connection)
    try:
        box = crypto.SecretBox([secret_key])
        provider = await providers.create(pool, name="fake", type="openai", base_url=upstream,
                                          api_key_encrypted=box.encrypt("sk-upstream"))
        assistant = await assistants.create(pool, name="helper", provider_id=provider.id, model="gpt-4o",
                                            system_prompt="Version 1")
        keys = {}
        for name, limits in (("free", Limits()), ("limited", Limits(rpm=5))):
            secret = crypto.generate_api_key()
            key = await api_keys.create(pool, name=name, key_hash=crypto.hash_api_key(secret),
                                        prefix=crypto.display_prefix(secret), limits=limits)
            keys[name] = (key.id, secret)
        await admins.create(pool, "root", crypto.hash_password(ADMIN_PASSWORD))
        return {"assistant": assistant.id, "keys": keys}
    finally:
        await pool.close()


class Admin:
    """An admin's browser on one instance's panel (cookies on an IP address need an unsafe jar)."""

    CSRF = Panel.CSRF

    def __init__(self, base: str, **connector):
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             connector=aiohttp.TCPConnector(**connector))

    async def post(self, path: str, fields: dict, form_page: str) -> tuple[int, str]:
        async with self.session.get(self.base + form_page) as response:
            token = self.CSRF.search(await response.text()).group(1)
        async with self.session.post(self.base + path, data={**fields, "csrf_token": token}) as response:
            return response.status, await response.text()

    async def login(self, password: str = ADMIN_PASSWORD) -> int:
        status, _ = await self.post("/admin/login", {"username": "root", "password": password}, "/admin/login")
        return status

    async def close(self):
        await self.session.close()


def base_url(port: int, assistant_id) -> str:
    return f"http://127.0.0.1:{port}/api/v1/assistants/{assistant_id}/v1"


async def system_prompt_seen(client, upstream) -> str:
    await client.chat.completions.create(model="x", messages=MESSAGES)
    return upstream.last["messages"][0]["content"]


async def within(seconds: float, check) -> float:
    """How long ``check()`` took to come true, failing past ``seconds``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def stop(processes) -> list[str]:
    """Stop gateway processes; their stderr."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    return [process.communicate(timeout=30)[1] for process in processes]


# --- several instances ----------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["direct", "pgbouncer", "pgbouncer without listen"])
async def test_two_instances_share_one_configuration_exactly(
        request, database, start_server, clean_database, fake_openai, secret_key, tmp_path):
    config = await configure(clean_database, fake_openai.base_url, secret_key)
    env = environment(RICEBALL_DATABASE_URL=clean_database, RICEBALL_SECRET_KEY=secret_key,
                      RICEBALL_DATA_DIR=str(tmp_path / "var"), RICEBALL_USAGE_FLUSH_INTERVAL="0.05")
    if database != "direct":
        env["RICEBALL_DATABASE_URL"] = request.getfixturevalue("pgbouncer")
        env["RICEBALL_LISTEN_DATABASE_URL"] = clean_database if database == "pgbouncer" else "none"
        env["RICEBALL_CACHE_TTL"] = "0.3"
    ports = [free_port(), free_port()]
    servers = [start_server(env, port) for port in ports]
    for server, port in zip(servers, ports):
        assert await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/readyz", server) == 200
    key_id, key = config["keys"]["free"]
    a, b = (openai.AsyncOpenAI(base_url=base_url(port, config["assistant"]), api_key=key, max_retries=0)
            for port in ports)

    # Calls spread over both instances, streamed and not, concurrently: every one counted once.
    async def call(client, stream: bool) -> int:
        if not stream:
            return (await client.chat.completions.create(model="x", messages=MESSAGES)).usage.total_tokens
        chunks = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        return [chunk async for chunk in chunks][-1].usage.total_tokens

    tokens = await asyncio.gather(*(call((a, b)[n % 2], stream=n % 3 == 0) for n in range(40)))
    async with asyncpg.create_pool(clean_database, min_size=1, max_size=2) as pool:
        async def all_written():
            return await pool.fetchval("SELECT count(*) FROM usage_events") == 40
        await within(10, all_written)
        assert await pool.fetchval("SELECT sum(total_tokens) FROM usage_events") == sum(tokens)

    # A change made on one side (the CLI, through the same database URL) is served by B within 1 s.
    assert await system_prompt_seen(b, fake_openai) == "Version 1"
    cli = await asyncio.create_subprocess_exec(
        *riceball_command(), "assistant", "update", str(config["assistant"]), "--system-prompt", "Version 2",
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert await cli.wait() == 0, await cli.stderr.read()

    async def b_serves_version_2():
        return await system_prompt_seen(b, fake_openai) == "Version 2"

    await within(1.0, b_serves_version_2)

    # A key revoked in A's admin panel is refused by B within 1 s.
    admin = Admin(f"http://127.0.0.1:{ports[0]}")
    assert await admin.login() in (200, 302)
    status, _ = await admin.post(f"/admin/keys/{key_id}/revoke", {}, f"/admin/keys/{key_id}/revoke")
    assert status == 200
    await admin.close()

    async def b_refuses_the_key():
        try:
            await b.chat.completions.create(model="x", messages=MESSAGES)
        except openai.AuthenticationError:
            return True
        return False

    await within(1.0, b_refuses_the_key)

    # Shared limits are exact: 5 requests a minute, 12 calls at once over both instances.
    _, limited = config["keys"]["limited"]
    clients = [openai.AsyncOpenAI(base_url=base_url(port, config["assistant"]), api_key=limited, max_retries=0)
               for port in ports]

    async def limited_call(n):
        try:
            await clients[n % 2].chat.completions.create(model="x", messages=MESSAGES)
            return 200
        except openai.RateLimitError:
            return 429

    assert sorted(await asyncio.gather(*(limited_call(n) for n in range(12)))) == [200] * 5 + [429] * 7
    for client in (a, b, *clients):
        await client.close()
    logs = stop(servers)
    if database == "pgbouncer without listen":
        assert all("no connection listens for configuration changes" in log for log in logs)
    assert not any("prepared statement" in log or "Traceback" in log for log in logs), logs


# --- nginx ----------------------------------------------------------------------------------------------


def nginx_configuration(tmp_path: Path, port: int, gateways: list[int]) -> Path:
    """The documented file, its ports made the test's, inside a minimal nginx.conf of the test's own."""
    site = documented_block("nginx", "## Behind nginx")
    for documented, ours in (("listen 80;", f"listen 127.0.0.1:{port};"),
                             ("server 127.0.0.1:8001;", f"server 127.0.0.1:{gateways[0]};"),
                             ("server 127.0.0.1:8002;", f"server 127.0.0.1:{gateways[1]};")):
        assert site.count(documented) == 1, documented
        site = site.replace(documented, ours)
    folder = tmp_path / "nginx"
    folder.mkdir()
    (folder / "riceball.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log;
{temp}
    include {folder}/riceball.conf;
}}
""")
    return folder


def from_address(address: str) -> aiohttp.ClientSession:
    """A client whose connections leave from this loopback address (nginx sees it as the client)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_nginx_passes_streams_chunk_by_chunk_and_the_real_client_address(
        start_server, clean_database, fake_openai, secret_key, tmp_path):
    binary = program("nginx")
    config = await configure(clean_database, fake_openai.base_url, secret_key)
    env = environment(RICEBALL_DATABASE_URL=clean_database, RICEBALL_SECRET_KEY=secret_key,
                      RICEBALL_DATA_DIR=str(tmp_path / "var"), RICEBALL_TRUSTED_PROXIES="127.0.0.1",
                      RICEBALL_LOG_FORMAT="json")
    gateways = [free_port(), free_port()]
    servers = [start_server(env, port) for port in gateways]
    for server, port in zip(servers, gateways):
        assert await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/readyz", server) == 200
    port = free_port()
    folder = nginx_configuration(tmp_path, port, gateways)
    nginx = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e",
                              str(folder / "error.log")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/healthz", nginx) == 200
        url = f"http://127.0.0.1:{port}/api/v1/assistants/{config['assistant']}/v1/chat/completions"
        _, key = config["keys"]["free"]

        # Each upstream chunk after the next is sent only once the client has received the one before
        # it: were nginx (or the gateway) to hold chunks back, the stream would stall and time out.
        fake_openai.chunk_gate = asyncio.Semaphore(1)
        events = []
        async with from_address("127.0.0.2") as session, asyncio.timeout(30):
            async with session.post(url, json={"model": "x", "messages": MESSAGES, "stream": True},
                                    headers={"Authorization": f"Bearer {key}",
                                             "X-Forwarded-For": "203.0.113.9"}) as response:
                assert response.status == 200
                async for line in response.content:
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip())
                        fake_openai.chunk_gate.release()
        assert events[-1] == b"[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text == fake_openai.reply
        fake_openai.chunk_gate = None

        # The login throttle counts the real client: five failures from 127.0.0.2 lock 127.0.0.2 out,
        # not 127.0.0.3, though both reach the gateways through nginx at 127.0.0.1.
        base = f"http://127.0.0.1:{port}"
        guesser = Admin(base, local_addr=("127.0.0.2", 0))
        statuses = [await guesser.login("wrong password") for _ in range(MAX_FAILURES_PER_USER + 1)]
        assert statuses == [401] * MAX_FAILURES_PER_USER + [429]
        await guesser.close()
        admin = Admin(base, local_addr=("127.0.0.3", 0))
        assert await admin.login() in (200, 302)
        await admin.close()
        async with asyncpg.create_pool(clean_database, min_size=1, max_size=1) as pool:
            counted = {row["key_hash"] for row in await pool.fetch("SELECT key_hash FROM login_failures")}
        assert _key("address", "127.0.0.2") in counted and _key("address", "127.0.0.1") not in counted
    finally:
        nginx.terminate()
        nginx.communicate(timeout=10)
    logs = "".join(stop(servers))
    api_lines = [json.loads(line) for line in logs.splitlines()
                 if line.startswith("{") and "/chat/completions" in line]
    assert [line["remote"] for line in api_lines] == ["127.0.0.2"]


@pytest.mark.parametrize("peer, forwarded_for, client", [
    ("127.0.0.1", ["203.0.113.9, 192.0.2.4"], "192.0.2.4"),  # the proxy appended the client; the rest is the client's
    ("127.0.0.1", ["192.0.2.4, 10.1.2.3", "10.0.0.7"], "192.0.2.4"),  # trusted hops are skipped, over several lines
    ("192.0.2.8", ["203.0.113.9"], "192.0.2.8"),  # not from a trusted proxy: the header is not read
    ("127.0.0.1", [], "127.0.0.1"),  # a trusted proxy's own request
    ("127.0.0.1", ["203.0.113.9, not-an-address, 10.0.0.7"], "10.0.0.7"),  # nothing left of garbage is read
    ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # all trusted: the farthest
    ("::1", ["2001:db8::1"], "2001:db8::1"),
])
def test_the_client_is_the_first_address_from_the_right_that_no_trusted_proxy_has(peer, forwarded_for, client):
    import ipaddress

    from riceball_proxy.proxies import forwarded_client

    trusted = tuple(ipaddress.ip_network(n) for n in ("127.0.0.1", "::1", "10.0.0.0/8"))
    assert forwarded_client(peer, forwarded_for, trusted) == client


# --- the systemd unit -----------------------------------------------------------------------------------


def test_the_documented_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = documented_block("ini", "## systemd")
    assert "ExecStart=/opt/riceball/bin/riceball serve" in unit
    path = tmp_path / f"riceball-{uuid.uuid4().hex[:8]}.service"
    path.write_text(unit.replace("/opt/riceball/bin/riceball", riceball_command()[0]))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


# --- backups --------------------------------------------------------------------------------------------


def test_the_documented_backup_restores_into_a_new_database_and_over_the_old_one(
        cli_env, make_database, tmp_path, capsys, monkeypatch):
    from tests.test_cli import run, run_json

    dump, restore = shutil.which("pg_dump"), shutil.which("pg_restore")
    if dump is None or restore is None:
        assert not os.environ.get("CI"), "PostgreSQL's client programs are not installed"
        pytest.skip("pg_dump and pg_restore are not installed")
    run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai",
             "--base-url", "http://127.0.0.1:9/v1", "--api-key-stdin", stdin="sk-upstream\n")
    run_json(capsys, monkeypatch, "assistant", "add", "--name", "kept", "--provider", "up", "--model", "m")
    before = run(capsys, monkeypatch, "export")[1]

    commands = [line for line in documented_block("sh", "## Backups").replace("\\\n", " ").splitlines()
                if line.startswith(("pg_dump", "pg_restore"))]
    assert len(commands) == 3
    new_database = make_database()
    env = dict(os.environ, RICEBALL_DATABASE_URL=cli_env.database_url, NEW_DATABASE_URL=new_database)
    for command in commands:
        result = subprocess.run(["bash", "-c", command.replace("riceball-2026-11-29.dump", "riceball-$(date +%F).dump")],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        if "server version mismatch" in result.stderr:  # an embedded server newer than the client programs
            assert not os.environ.get("CI"), result.stderr
            pytest.skip(result.stderr.strip())
        assert result.returncode == 0, (command, result.stderr)
    for database in (new_database, cli_env.database_url):
        monkeypatch.setenv("RICEBALL_DATABASE_URL", database)
        assert run(capsys, monkeypatch, "export")[1] == before
