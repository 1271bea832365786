"""Limits under a burst: 1,000 calls at once on limited keys, with the counters in Redis and in
PostgreSQL, the gateway serving with ``--workers 2``.

    python -m benchmarks.limits [--calls 1000] [--workers 2] [--backends redis,postgres]

For each backend, one burst of ``--calls`` streamed calls at once per limit, each on a connection of
its own, and prints:

- ``rpm``: calls admitted beyond the limit (the bucket's refill during the burst allowed);
- ``max_parallel``: the most answers seen at once by the client beyond the limit (an answer seen is
  inside its slot, so this can only under-count what the gateway held);
- ``budget_usd``: USD spent beyond the budget, from the usage rows, beside the most the calls in flight
  could be worth;
- the latency a limit adds: p50 and p99 of one call at a time of the rpm-limited key, beside the same
  calls of a key with no limits (the floor) on the same gateway.

Needs the machine's PostgreSQL (``RICEBALL_BENCH_DATABASE_URL``) and Redis (``RICEBALL_BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6379/14``, emptied first).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from benchmarks.instances import call_latencies
from benchmarks.run import RICEBALL, bench_database, free_port, percentile, riceball, running, upstream_provider

MESSAGES = [{"role": "user", "content": "Tell me something."}]
#: The fake upstream streams 20 chunks this many seconds apart: a call holds its slot about 0.2 s.
MODEL = "delay-0.01"
RPM, MAX_PARALLEL = 100, 10
#: USD per million tokens in and out: the fake upstream's 12 + 18 tokens cost $0.03 a call.
PRICE = 1000
BUDGET_USD = Decimal(3)
MAX_TOKENS = 50


async def burst(url: str, key: str, calls: int) -> tuple[list[int], list[tuple[float, float]], float]:
    """``calls`` streamed calls at once: their statuses, the (first byte, end) of each answered one, and
    the burst's length in seconds."""

    async def call(session: aiohttp.ClientSession):
        async with session.post(url, json={"model": "x", "messages": MESSAGES, "stream": True},
                                headers={"Authorization": f"Bearer {key}"}) as response:
            first = time.perf_counter()
            await response.read()
            return response.status, (first, time.perf_counter())

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(call(session) for _ in range(calls)))
        elapsed = time.perf_counter() - started
    return [status for status, _ in results], [span for status, span in results if status == 200], elapsed


def peak(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


async def spent(database_url: str, key_id: str) -> tuple[Decimal, int]:
    """USD and answered calls of a key, from its usage rows, once they stop changing."""
    conn = await asyncpg.connect(database_url)
    try:
        previous = None
        while True:
            await asyncio.sleep(1.5)  # the workers write usage rows every second
            row = await conn.fetchrow("SELECT coalesce(sum(cost_usd), 0) AS usd, count(*) FILTER (WHERE status = "
                                      "200) AS answered FROM usage_events WHERE api_key_id = $1::uuid", key_id)
            if row == previous:
                return row["usd"], row["answered"]
            previous = row
    finally:
        await conn.close()


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p99 {percentile(values, 99) * 1000:.2f} ms"


async def flush_redis(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def measure(backend: str, env: dict, database_url: str, workdir: Path, args) -> None:
    port = free_port()
    env = env | {"RICEBALL_DATABASE_URL": database_url}
    if backend == "redis":
        env["RICEBALL_REDIS_URL"] = args.redis_url
        asyncio.run(flush_redis(args.redis_url))
    with upstream_provider(env, workdir, f"bench-{backend}", log=f"upstream-{backend}.log"):
        assistant = riceball(env, "assistant", "add", "--name", f"bench-{backend}", "--provider", f"bench-{backend}",
                             "--model", MODEL, "--max-tokens", str(MAX_TOKENS), "--price-input", str(PRICE),
                             "--price-output", str(PRICE))
        keys = {name: riceball(env, "key", "create", "--name", f"{name}-{backend}", *options)
                for name, options in [("rpm", ["--rpm", str(RPM)]), ("parallel", ["--max-parallel", str(MAX_PARALLEL)]),
                                      ("budget", ["--budget-usd", str(BUDGET_USD), "--budget-period", "total"]),
                                      ("floor", []), ("latency", ["--rpm", "1000000000"])]}
        with running([*RICEBALL, "serve", "--port", str(port), "--workers", str(args.workers)], env,
                     f"http://127.0.0.1:{port}/readyz", workdir / f"gateway-{backend}.log"):
            time.sleep(2)  # every worker up
            url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
            label = f"{backend}, {args.workers} workers, {args.calls} calls at once"

            statuses, _, elapsed = asyncio.run(burst(url, keys["rpm"]["key"], args.calls))
            allowed = RPM + int(elapsed * RPM / 60)  # the bucket refills during the burst
            admitted = statuses.count(200)
            print(f"rpm {RPM} ({label}): {admitted} admitted in {elapsed:.2f} s, {allowed} allowed: overshoot "
                  f"{max(0, admitted - allowed)} calls; others {sorted(set(statuses) - {200})}")

            statuses, spans, elapsed = asyncio.run(burst(url, keys["parallel"]["key"], args.calls))
            print(f"max_parallel {MAX_PARALLEL} ({label}): {statuses.count(200)} admitted in {elapsed:.2f} s, at most "
                  f"{peak(spans)} answers at once seen: overshoot {max(0, peak(spans) - MAX_PARALLEL)}; "
                  f"others {sorted(set(statuses) - {200})}")

            statuses, _, elapsed = asyncio.run(burst(url, keys["budget"]["key"], args.calls))
            usd, answered = asyncio.run(spent(database_url, keys["budget"]["id"]))
            in_flight_worth = Decimal(args.calls) * Decimal(12 + MAX_TOKENS) * PRICE / 1_000_000
            print(f"budget_usd ${BUDGET_USD} ({label}): {answered} answered, ${usd:.4f} spent: overshoot "
                  f"${max(Decimal(0), usd - BUDGET_USD):.4f} (the calls in flight's worth: at most "
                  f"${in_flight_worth:.2f}); others {sorted(set(statuses) - {200})}")

            floor = asyncio.run(call_latencies(url, keys["floor"]["key"], args.latency_calls))
            limited = asyncio.run(call_latencies(url, keys["latency"]["key"], args.latency_calls))
            added = statistics.median(limited) - statistics.median(floor)
            print(f"latency ({backend}): an rpm-limited key {ms(limited)}; no limits (floor) {ms(floor)}: "
                  f"+{added * 1000:.2f} ms at p50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls at once in each burst")
    parser.add_argument("--workers", type=int, default=2, help="riceball serve --workers")
    parser.add_argument("--latency-calls", type=int, default=300, help="calls timed one at a time")
    parser.add_argument("--backends", default="redis,postgres")
    parser.add_argument("--redis-url", default=os.environ.get("RICEBALL_BENCH_REDIS_URL",
                                                              "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="riceball-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
    env |= {"RICEBALL_DATA_DIR": str(workdir / "var"), "RICEBALL_PLUGINS": "none", "RICEBALL_LOG_LEVEL": "WARNING"}
    try:
        for backend in args.backends.split(","):
            with bench_database() as database_url:
                if database_url is None:
                    raise SystemExit("needs a PostgreSQL server (RICEBALL_BENCH_DATABASE_URL)")
                measure(backend, env, database_url, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
