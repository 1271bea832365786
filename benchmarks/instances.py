"""Running several instances: how fast a change reaches another instance, what PgBouncer costs a call
whose limits are counted in PostgreSQL, and how long ``riceball apply`` and ``export`` take.

    python -m benchmarks.instances [--rounds 20] [--assistants 200]

Prints figures, each beside its floor measured in the same run:

- propagation: a change made with the CLI on instance A's database URL, until instance B serves it
  (B asked every 5 ms); directly, through PgBouncer with a direct listen connection, and through
  PgBouncer with none (``RICEBALL_CACHE_TTL``); floor: a bare NOTIFY from one asyncpg connection to
  another;
- a call of a key limited to a high rpm (counted in PostgreSQL), straight to PostgreSQL and through
  PgBouncer in transaction mode, p50 at concurrency 1; floor: the same key's call with its counters in
  memory;
- ``riceball apply`` of a file with one provider, N assistants and N keys: the first apply, a second
  one that changes nothing, and ``riceball export``; floor: ``riceball migrate`` (the command's start
  and the database's opening, which every command pays).

Needs the machine's PostgreSQL (``RICEBALL_BENCH_DATABASE_URL``) and Debian's ``pgbouncer`` for the
PgBouncer rows (left out without it).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import asyncpg

from benchmarks.run import RICEBALL, bench_database, free_port, percentile, riceball, running, upstream_provider
from tests.pgbouncer import pgbouncer_program, running_pgbouncer

MESSAGES = [{"role": "user", "content": "Tell me something."}]


async def notify_floor(url: str, rounds: int) -> list[float]:
    """Seconds from NOTIFY on one connection to its arrival on another."""
    listener, sender = await asyncpg.connect(url), await asyncpg.connect(url)
    arrived = asyncio.Queue()
    await listener.add_listener("riceball_bench", lambda *args: arrived.put_nowait(time.perf_counter()))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await sender.execute("NOTIFY riceball_bench, 'x'")
        times.append(await arrived.get() - started)
    await listener.close()
    await sender.close()
    return times


async def served_model(session: aiohttp.ClientSession, url: str, key: str) -> str:
    """The model that served a call (the assistant exposes its target in ``x-riceball-model``)."""
    async with session.post(url, json={"model": "x", "messages": MESSAGES},
                            headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        return response.headers.get("x-riceball-model", "")


async def propagation(env: dict, assistant_id: str, url_b: str, key: str, rounds: int) -> list[float]:
    """Seconds from the end of ``riceball assistant update --model`` until B's answers name the new model."""
    times = []
    pauses = random.Random(0)
    async with aiohttp.ClientSession() as session:
        for n in range(rounds):
            await asyncio.sleep(pauses.uniform(0, 1))  # out of step with a TTL's flushes
            model = f"bench-v{n}"
            cli = await asyncio.create_subprocess_exec(
                *RICEBALL, "assistant", "update", assistant_id, "--model", model, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await cli.wait()
            changed = time.perf_counter()
            while await served_model(session, url_b, key) != model:
                await asyncio.sleep(0.005)
            times.append(time.perf_counter() - changed)
    return times


async def call_latencies(url: str, key: str, count: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for n in range(count + 50):
            started = time.perf_counter()
            async with session.post(url, json={"model": "bench", "messages": MESSAGES},
                                    headers={"Authorization": f"Bearer {key}"}) as response:
                await response.read()
                assert response.status == 200, response.status
            if n >= 50:  # warm-up
                times.append(time.perf_counter() - started)
    return times


def config_file(assistants: int, upstream: str) -> str:
    lines = ["providers:", f"  - {{name: bench, type: openai, base_url: \"{upstream}\"}}", "assistants:"]
    lines += [f"  - {{name: a{n}, provider: bench, model: bench, system_prompt: Assistant {n}., temperature: 0.5,"
              f" limits: {{rpm: 1000}}}}" for n in range(assistants)]
    lines.append("keys:")
    lines += [f"  - {{name: k{n}, assistants: [a{n}], limits: {{rpm: 100}}}}" for n in range(assistants)]
    return "\n".join(lines) + "\n"


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p90 {percentile(values, 90) * 1000:.2f} ms, " \
           f"max {max(values) * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="changes timed per topology")
    parser.add_argument("--calls", type=int, default=500, help="calls timed per database path")
    parser.add_argument("--assistants", type=int, default=200, help="assistants (and keys) in the applied file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="riceball-bench-"))
    has_pgbouncer = pgbouncer_program() is not None
    with bench_database() as database_url, ExitStack() as stack:
        if database_url is None:
            raise SystemExit("needs a PostgreSQL server (RICEBALL_BENCH_DATABASE_URL)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
        env |= {"RICEBALL_DATA_DIR": str(workdir / "var"), "RICEBALL_PLUGINS": "none",
                "RICEBALL_DATABASE_URL": database_url, "RICEBALL_LOG_LEVEL": "WARNING"}
        upstream = stack.enter_context(upstream_provider(env, workdir))
        assistant = riceball(env, "assistant", "add", "--name", "bench", "--provider", "bench", "--model", "bench",
                             "--expose-target")
        key = riceball(env, "key", "create", "--name", "bench")["key"]
        limited = riceball(env, "key", "create", "--name", "limited", "--rpm", "1000000000")["key"]
        pooled_url = stack.enter_context(running_pgbouncer(database_url, pool_size=10)) if has_pgbouncer else None

        print(f"NOTIFY between two connections (floor): {ms(asyncio.run(notify_floor(database_url, args.rounds)))}")
        topologies = [("direct", {})]
        if pooled_url:
            topologies += [("PgBouncer + listen URL", {"RICEBALL_DATABASE_URL": pooled_url,
                                                       "RICEBALL_LISTEN_DATABASE_URL": database_url}),
                           ("PgBouncer, no listen, TTL 2 s", {"RICEBALL_DATABASE_URL": pooled_url,
                                                              "RICEBALL_LISTEN_DATABASE_URL": "none"})]
        for name, extra in topologies:
            ports = [free_port(), free_port()]
            with ExitStack() as servers:
                for port in ports:
                    servers.enter_context(running([*RICEBALL, "serve", "--port", str(port)], env | extra,
                                                  f"http://127.0.0.1:{port}/readyz", workdir / f"gateway-{port}.log"))
                url_b = f"http://127.0.0.1:{ports[1]}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
                times = asyncio.run(propagation(env | extra, assistant["id"], url_b, key, args.rounds))
                print(f"a change on A served by B, {name}: {ms(times)}")

        for name, extra in [("counters in memory (floor)", {"RICEBALL_LIMITS_BACKEND": "memory"}),
                            ("counters in PostgreSQL, direct", {})] + (
                [("counters in PostgreSQL, through PgBouncer", {"RICEBALL_DATABASE_URL": pooled_url,
                                                               "RICEBALL_LISTEN_DATABASE_URL": database_url})]
                if pooled_url else []):
            port = free_port()
            with running([*RICEBALL, "serve", "--port", str(port)], env | extra,
                         f"http://127.0.0.1:{port}/readyz", workdir / f"gateway-{port}.log"):
                url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
                print(f"a limited key's call, {name}: {ms(asyncio.run(call_latencies(url, limited, args.calls)))}")

        path = workdir / "riceball.yaml"
        path.write_text(config_file(args.assistants, upstream))
        command = [*RICEBALL]
        floor = min(timed([*command, "migrate"], env) for _ in range(3))
        first = timed([*command, "apply", "-f", str(path), "--json"], env)
        again = min(timed([*command, "apply", "-f", str(path), "--json"], env) for _ in range(3))
        export = min(timed([*command, "export"], env) for _ in range(3))
        print(f"riceball apply, {args.assistants} assistants and {args.assistants} keys: first {first:.2f} s, "
              f"unchanged {again:.2f} s; export {export:.2f} s; floor (riceball migrate) {floor:.2f} s")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
