"""Debian's PgBouncer in transaction mode in front of a PostgreSQL, on a port of its own (tests and benchmarks)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import asyncpg


def pgbouncer_program() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")


@contextlib.contextmanager
def running_pgbouncer(database_url: str, *, pool_size: int = 4, timeout: float = 15.0) -> Iterator[str]:
    """Start PgBouncer (``pool_mode = transaction``, ``pool_size`` server connections a database) in front
    of the server of ``database_url``; yields the same database's URL through it."""
    parts = urllib.parse.urlsplit(database_url)
    host = urllib.parse.parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    user = parts.username or "postgres"
    # Run as root, it becomes the postgres user, who must reach its files: not under a private tmp folder.
    folder = Path(tempfile.mkdtemp(prefix="riceball-pgbouncer-"))
    folder.chmod(0o755)
    port = _free_port()
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""
[databases]
* = host={host} port={parts.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
{"user = postgres" if os.geteuid() == 0 else ""}
""")
    log = open(folder / "pgbouncer.log", "w")
    process = subprocess.Popen([pgbouncer_program(), str(folder / "pgbouncer.ini")], stdout=log,
                               stderr=subprocess.STDOUT)
    url = urllib.parse.urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", parts.path, "", ""))
    try:
        deadline = time.monotonic() + timeout
        while not _answers_now(url):
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {(folder / 'pgbouncer.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("pgbouncer did not answer")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _answers_now(url: str) -> bool:
    """Whether a connection through PgBouncer opens (in a thread: the caller may be inside an event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _answers(url)).result()


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2, statement_cache_size=0)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
