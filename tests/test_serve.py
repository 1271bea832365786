"""``riceball serve`` as a real process, the way the README starts it."""
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import asyncpg

from riceball_proxy.db.migrate import available_migrations
from tests.support import environment, free_port, riceball_command, run_sync, wait_for_http


def test_serve_with_no_database_url_runs_an_embedded_database(start_server, tmp_path):
    env = environment(RICEBALL_DATA_DIR=str(tmp_path / "var"))
    port = free_port()
    server = start_server(env, port)
    assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200

    # A command run meanwhile joins the same embedded server, and leaves it running.
    listed = subprocess.run([*riceball_command(), "--json", "provider", "list"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"providers": []}
    assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200

    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    log = server.stderr.read()
    assert "No admin account exists yet. Create one at http://127.0.0.1:" in log
    assert "WARNING riceball_proxy.server: \n\n    No admin account exists yet" in log  # as docs/admin.md shows it
    # The first start applies every migration in one line; a stop says so, last.
    migrations = available_migrations()
    assert len(re.findall("applied .*migration", log)) == 1
    assert f"applied {len(migrations)} migrations: 0001_init .. {migrations[-1].version:04d}_{migrations[-1].name}" in log
    assert log.rstrip().endswith("stopped: 0 calls drained")
    # The link comes last, after the line saying where the server listens, with the panel's address.
    assert log.index("Running on") < log.index("No admin account exists yet")
    assert f"Then the admin panel is at http://127.0.0.1:{port}/admin/" in log
    assert not (tmp_path / "var" / "postgres" / "postmaster.pid").exists()  # the last user stopped it
    assert (tmp_path / "var" / "secret.key").stat().st_mode & 0o777 == 0o600


def test_two_servers_started_together_migrate_once(start_server, make_database, tmp_path):
    url = make_database()
    env = environment(RICEBALL_DATABASE_URL=url, RICEBALL_DATA_DIR=str(tmp_path / "var"))
    ports = [free_port(), free_port()]
    servers = [start_server(env, port) for port in ports]
    for server, port in zip(servers, ports):
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200

    async def applied():
        conn = await asyncpg.connect(url)
        try:
            return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        finally:
            await conn.close()

    assert run_sync(applied) == [m.version for m in available_migrations()]


def test_workers_share_one_port_and_close_a_client_too_slow_with_its_headers(start_server, clean_database, tmp_path):
    import socket

    env = environment(RICEBALL_DATABASE_URL=clean_database, RICEBALL_DATA_DIR=str(tmp_path / "var"),
                      RICEBALL_CLIENT_READ_TIMEOUT="1")
    port = free_port()
    server = start_server(env, port, "--workers", "2")
    for _ in range(10):
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /admin/login HTTP/1.1\r\nHost: gate")
        slow.settimeout(10)
        assert slow.recv(100) == b""  # closed at the deadline, nothing answered
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert "client 127.0.0.1 did not send its request headers within 1 s" in server.stderr.read()


def workers_of(pid: int) -> set[int]:
    """The worker processes ``pid`` started (children running multiprocessing's spawn_main)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if parent == pid and b"spawn_main" in command:
                found.add(int(entry.name))
    return found


def test_a_worker_that_dies_is_replaced(start_server, clean_database, tmp_path):
    import time

    env = environment(RICEBALL_DATABASE_URL=clean_database, RICEBALL_DATA_DIR=str(tmp_path / "var"))
    port = free_port()
    server = start_server(env, port, "--workers", "2")
    assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200
    deadline = time.monotonic() + 30
    while len(workers := workers_of(server.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = max(workers)
    os.kill(victim, signal.SIGKILL)
    while len(workers_of(server.pid) - {victim}) < 2:
        assert time.monotonic() < deadline, "no new worker was started"
        time.sleep(0.1)
    for _ in range(10):
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    log = server.stderr.read()
    assert f"(pid {victim}) exited with -9; starting another" in log
