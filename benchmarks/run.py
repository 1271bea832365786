"""``make bench``: each scenario straight to a fake upstream and through the gateway, in the same run.

    python -m benchmarks.run [--quick] [--write docs/performance.md]

Prints a table of figures and, with --write, puts it with a description of the machine into a
Markdown file. Needs `wrk` (Debian's package) for the requests/s figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The ``riceball`` command, run as a module so that a ``--tree`` on PYTHONPATH (another checkout) is the
#: code that runs, whatever its console script's entry point was.
RICEBALL = [sys.executable, "-m", "riceball_proxy"]
MESSAGES = [{"role": "user", "content": "Tell me something."}]
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
#: The Redis that limit counters use in the benchmark (a database number of its own).
BENCH_REDIS = os.environ.get("RICEBALL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


@contextmanager
def upstream_provider(env: dict, workdir: Path, name: str = "bench", *options: str, log: str = "upstream.log"):
    """The fake upstream (``benchmarks.fake_upstream``) running, and a provider ``name`` on it added with
    ``riceball provider add`` (and ``options``); yields the upstream's base URL."""
    port = free_port()
    with running([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(port)],
                 env | {"PYTHONPATH": str(ROOT)}, f"http://127.0.0.1:{port}/", workdir / log):
        url = f"http://127.0.0.1:{port}/v1"
        riceball(env, "provider", "add", "--name", name, "--type", "openai", "--base-url", url, *options)
        yield url


@contextmanager
def running(argv: list[str], env: dict, ready_url: str, log: Path):
    """A server process, stopped with SIGTERM on exit."""
    with open(log, "ab") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=output, start_new_session=True)
        try:
            wait_for(ready_url, process)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def otlp_sink(env: dict, workdir: Path):
    """``benchmarks.otlp_sink`` running; yields the URL it answers its span count at."""
    port = free_port()
    with running([sys.executable, "-m", "benchmarks.otlp_sink", "--port", str(port)], env | {"PYTHONPATH": str(ROOT)},
                 f"http://127.0.0.1:{port}/spans", workdir / "otlp-sink.log"):
        yield f"http://127.0.0.1:{port}"


def traced_env(sink_url: str) -> dict[str, str]:
    """The variables that turn tracing on, every call sampled, its spans sent to ``sink_url``."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_TRACES_SAMPLER": "always_on"}


def spans_received(sink_url: str) -> int:
    with urllib.request.urlopen(f"{sink_url}/spans", timeout=10) as answer:
        return int(answer.read())


@contextmanager
def bench_database():
    """A fresh database on the machine's PostgreSQL when it answers (dropped afterwards), else none (embedded)."""
    server = os.environ.get("RICEBALL_BENCH_DATABASE_URL", DEFAULT_SERVER)

    async def run(sql):
        conn = await asyncpg.connect(server, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    name = f"riceball_bench_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        yield None
        return
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def riceball(env: dict, *argv: str, stdin: str | None = None) -> dict:
    result = subprocess.run([*RICEBALL, "--json", *argv], env=env, input=stdin, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


#: Seconds over which the paced streams start, evenly: about one stream's length, so that ``count`` of
#: them are open at once at the peak without all arriving in the same instant.
PACED_RAMP = 1.2


async def paced_streams(url: str, headers: dict, count: int) -> tuple[list[float], list[float], int]:
    """``count`` streams of the ``realistic`` model, started evenly over PACED_RAMP seconds: (seconds to the
    first event of each, seconds between consecutive events, failed streams)."""
    first, gaps, failures = [], [], 0
    body = json.dumps({"model": "realistic", "messages": MESSAGES, "stream": True}).encode()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers | {"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(n: int):
            nonlocal failures
            await asyncio.sleep(n * PACED_RAMP / count)
            started = time.perf_counter()
            try:
                async with session.post(url, data=body) as response:
                    last = None
                    async for line in response.content:
                        if not line.startswith(b"data: "):
                            continue
                        now = time.perf_counter()
                        if last is None:
                            first.append(now - started)
                        else:
                            gaps.append(now - last)
                        last = now
                    if response.status != 200:
                        failures += 1
            except aiohttp.ClientError:
                failures += 1

        await asyncio.gather(*(one(n) for n in range(count)))
    return first, gaps, failures


def raise_file_limit(wanted: int) -> None:
    """Let this process and the servers it starts open ``wanted`` files (root may raise the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"note: open files limited to {hard}; {wanted} wanted", file=sys.stderr)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory in KiB (``VmRSS``; ``VmHWM``: its peak so far), 0 when not found."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --- measurements ---------------------------------------------------------------------------------------


async def latencies(url: str, headers: dict, body: dict, count: int, *, first_byte: bool) -> list[float]:
    """Seconds per request, one at a time over one keep-alive connection (to the first byte for streams)."""
    times = []
    payload = json.dumps(body).encode()
    async with aiohttp.ClientSession(headers=headers | {"Content-Type": "application/json"}) as session:
        for n in range(count + count // 10):  # the first tenth warms up and is not counted
            started = time.perf_counter()
            async with session.post(url, data=payload) as response:
                if first_byte:
                    await response.content.readany()
                    elapsed = time.perf_counter() - started
                    await response.read()
                else:
                    await response.read()
                    elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise SystemExit(f"{url} answered {response.status}")
            if n >= count // 10:
                times.append(elapsed)
    return times


async def paired_latencies(url: str, free: dict, limited: dict, body: dict, count: int, *,
                           other_url: str | None = None) -> tuple[list, list]:
    """Latencies of a key without limits and of a limited one on the same gateway (or of ``url`` and
    ``other_url`` with the same key), in alternating rounds, so that the machine's drift weighs on both alike."""
    without, with_limits = [], []
    rounds = 4
    for _ in range(rounds):
        without += await latencies(url, free, body, count // rounds, first_byte=False)
        with_limits += await latencies(other_url or url, limited, body, count // rounds, first_byte=False)
    return without, with_limits


async def redis_round_trips(url: str, count: int) -> list[float]:
    """Seconds per bare script call (``return 1``) from redis-py, one at a time: the floor of any
    counter kept in Redis, from the client the gateway uses."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    script = client.register_script("return 1")
    times = []
    try:
        for n in range(count + count // 10):
            started = time.perf_counter()
            await script(keys=["riceball:bench"], args=[1])
            if n >= count // 10:
                times.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return times


def redis_reachable(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def wrk_output(url: str, headers: dict, body: dict, connections: int, seconds: int, workdir: Path) -> str:
    """What wrk prints after POSTing ``body`` at ``connections`` concurrent connections for ``seconds``."""
    script = workdir / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                          capture_output=True, text=True, check=True).stdout


class Load(typing.NamedTuple):
    """What one wrk run measured: requests/s, non-2xx answers, and the CPU the server process (and its
    workers) spent per request, in µs, when its pid was given."""

    rps: float
    errors: int
    cpu_us: float | None = None


def wrk(url: str, headers: dict, body: dict, connections: int, seconds: int, workdir: Path,
        pid: int | None = None) -> Load:
    """Requests/s and non-2xx answers at ``connections`` concurrent connections, measured by wrk, and
    the CPU time of process ``pid`` (with its children) per request served."""
    before = None if pid is None else process_tree_cpu(pid)
    output = wrk_output(url, headers, body, connections, seconds, workdir)
    used = None if pid is None else process_tree_cpu(pid) - before
    requests = int(output.split(" requests in ")[0].split()[-1])
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Load(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), int(errors.group(1)) if errors else 0,
                None if used is None else used / max(requests, 1) * 1e6)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (from ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime and stime


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children alive now (a supervisor and its workers)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += process_tree_cpu(int(child))
    return total


async def hold_streams(url: str, headers: dict, body: dict, count: int, gateway_pid: int) -> tuple[int, int, int]:
    """Open ``count`` slow streams at once; returns (RSS before in KiB, peak RSS in KiB, failed streams)."""
    before = rss_kib(gateway_pid)
    peak = before
    started = asyncio.Event()
    opened = 0
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers | {"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one():
            nonlocal opened, failures
            try:
                async with session.post(url, json=body) as response:
                    await response.content.readline()
                    opened += 1
                    if opened == count:
                        started.set()
                    text = await response.text()
                    if response.status != 200 or not text.rstrip().endswith("data: [DONE]"):
                        failures += 1
            except aiohttp.ClientError:
                failures += 1
                opened += 1
                if opened == count:
                    started.set()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while not all(task.done() for task in tasks):
            peak = max(peak, rss_kib(gateway_pid))
            await asyncio.sleep(0.2)
    return before, peak, failures


# --- the run --------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))) // 1024 // 1024
    import uvloop

    return (f"{os.cpu_count()} x {cpu}, {memory} GiB, Linux {platform.release()}, Python {platform.python_version()}, "
            f"uvloop {uvloop.__version__}, aiohttp {aiohttp.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter runs")
    parser.add_argument("--write", metavar="FILE", help="write the table into this Markdown file")
    parser.add_argument("--streams", type=int, help="slow streams held at once (default 10,000; --quick: 200)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    count, seconds, streams = (300, 3, 200) if args.quick else (2000, 10, 10_000)
    streams = args.streams or streams
    raise_file_limit(4 * streams + 1024)  # client, gateway (both sides) and upstream share the machine

    workdir = Path(tempfile.mkdtemp(prefix="riceball-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    with bench_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RICEBALL_", "OTEL_"))}
        env |= {"RICEBALL_DATA_DIR": str(workdir / "var"), "RICEBALL_PLUGINS": "none"}
        if database_url:
            env["RICEBALL_DATABASE_URL"] = database_url
        # 10,000 streams at once, none queued.
        with upstream_provider(env, workdir, "bench", "--max-connections", "100000") as upstream_url:
            fast = riceball(env, "assistant", "add", "--name", "fast", "--provider", "bench", "--model", "bench")
            slow = riceball(env, "assistant", "add", "--name", "slow", "--provider", "bench", "--model", "delay-0.5")
            realistic = riceball(env, "assistant", "add", "--name", "realistic", "--provider", "bench",
                                 "--model", "realistic")
            # The same as fast, able to fail over (its primary stays healthy).
            resilient = riceball(env, "assistant", "add", "--name", "resilient", "--provider", "bench", "--model",
                                 "bench", "--fallback", "bench:bench-fallback")
            key = riceball(env, "key", "create", "--name", "bench")["key"]
            auth = {"Authorization": f"Bearer {key}"}
            # Every kind of limit, none of them ever reached: what checking them costs.
            limited_key = riceball(env, "key", "create", "--name", "bench-limited", "--rpm", "1000000000",
                                   "--tpm", "2000000000", "--max-parallel", "100000",
                                   "--budget-tokens", "1000000000000000")["key"]
            direct = upstream_url + "/chat/completions"
            plain = {"model": "bench", "messages": MESSAGES}
            streamed = plain | {"stream": True}

            def through(assistant, port):
                return f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"

            results = {}
            for workers in (1, 2):
                port = free_port()
                gateway_argv = [*RICEBALL, "serve", "--port", str(port), "--workers", str(workers)]
                with running(gateway_argv, env, f"http://127.0.0.1:{port}/healthz",
                             workdir / f"gateway-{workers}.log") as gateway:
                    if workers == 1:
                        d = asyncio.run(latencies(direct, {}, plain, count, first_byte=False))
                        g = asyncio.run(latencies(through(fast, port), auth, plain, count, first_byte=False))
                        results["latency"] = (d, g)
                        d = asyncio.run(latencies(direct, {}, streamed, count, first_byte=True))
                        g = asyncio.run(latencies(through(fast, port), auth, streamed, count, first_byte=True))
                        results["ttfb"] = (d, g)
                        paced = 200 if args.quick else 2000
                        results["paced"] = (asyncio.run(paced_streams(direct, {}, paced)),
                                            asyncio.run(paced_streams(through(realistic, port), auth, paced)), paced)
                        results["failover"] = asyncio.run(paired_latencies(
                            through(fast, port), auth, auth, plain, count, other_url=through(resilient, port)))
                        for name, body in (("rps", plain), ("rps_stream", streamed)):
                            results[name] = (wrk(direct, {}, body, 64, seconds, workdir),
                                             wrk(through(fast, port), auth, body, 64, seconds, workdir, gateway.pid))
                        slow_body = {"model": "x", "messages": MESSAGES, "stream": True}
                        results["streams"] = asyncio.run(hold_streams(through(slow, port), auth, slow_body, streams,
                                                                      gateway.pid))
                    else:
                        results["rps_workers"] = wrk(through(fast, port), auth, plain, 64, seconds, workdir,
                                                     gateway.pid)
            # OpenTelemetry on, every call sampled, its spans exported to a collector on loopback.
            with otlp_sink(env, workdir) as sink_url:
                port = free_port()
                with running([*RICEBALL, "serve", "--port", str(port)], env | traced_env(sink_url),
                             f"http://127.0.0.1:{port}/healthz", workdir / "gateway-traced.log") as gateway:
                    for name, body in (("rps_traced", plain), ("rps_stream_traced", streamed)):
                        results[name] = wrk(through(fast, port), auth, body, 64, seconds, workdir, gateway.pid)
                results["traced_spans"] = spans_received(sink_url)
            for backend in ("memory", "redis", "postgres"):
                backend_env = env | {"RICEBALL_LIMITS_BACKEND": backend}
                if backend == "redis":
                    if not redis_reachable(BENCH_REDIS):
                        continue
                    backend_env["RICEBALL_REDIS_URL"] = BENCH_REDIS
                port = free_port()
                with running([*RICEBALL, "serve", "--port", str(port)], backend_env,
                             f"http://127.0.0.1:{port}/healthz", workdir / f"gateway-limits-{backend}.log"):
                    url = through(fast, port)
                    results[f"limits_{backend}"] = asyncio.run(paired_latencies(
                        url, auth, {"Authorization": f"Bearer {limited_key}"}, plain, count))
                    if backend == "redis":
                        results["redis_floor"] = asyncio.run(redis_round_trips(BENCH_REDIS, count))
            from benchmarks import dialects  # (it imports this module's helpers)

            results["dialects"] = dialects.measure(env, workdir, seconds, 1)

            def minimal_proxy(*options: str):
                port = free_port()
                argv = [sys.executable, "-m", "benchmarks.minimal_proxy", "--port", str(port), "--upstream",
                        upstream_url.removesuffix("/v1"), *options]
                return port, running(argv, env | {"PYTHONPATH": str(ROOT)}, f"http://127.0.0.1:{port}/",
                                     workdir / f"minimal-proxy{''.join(options)}.log")

            # The bare proxy doing the work no gateway of this design can skip (benchmarks.minimal_proxy).
            proxy_port, started = minimal_proxy("--gateway-work")
            with started as proxy:
                least_url, least_auth = through(fast, proxy_port), {"Authorization": "Bearer sk-" + "0" * 48}
                results["rps_least"] = wrk(least_url, least_auth, plain, 64, seconds, workdir, proxy.pid)
                results["rps_stream_least"] = wrk(least_url, least_auth, streamed, 64, seconds, workdir, proxy.pid)
            proxy_port, started = minimal_proxy("--workers", "2")
            with started as proxy:
                results["rps_workers_floor"] = wrk(f"http://127.0.0.1:{proxy_port}/x", {}, plain, 64, seconds, workdir,
                                                   proxy.pid)
            proxy_port, started = minimal_proxy()
            with started as proxy:
                floor_url = f"http://127.0.0.1:{proxy_port}/x"
                results["latency_floor"] = asyncio.run(latencies(floor_url, {}, plain, count, first_byte=False))
                results["ttfb_floor"] = asyncio.run(latencies(floor_url, {}, streamed, count, first_byte=True))
                results["rps_floor"] = wrk(floor_url, {}, plain, 64, seconds, workdir, proxy.pid)
                results["rps_stream_floor"] = wrk(floor_url, {}, streamed, 64, seconds, workdir, proxy.pid)
                results["paced_floor"] = asyncio.run(paced_streams(floor_url, {}, results["paced"][2]))
                # Last, as for the gateway: 10,000 connections leave a process slower for a while.
                results["streams_floor"] = asyncio.run(hold_streams(
                    floor_url, {}, {"model": "delay-0.5", "messages": MESSAGES, "stream": True}, streams, proxy.pid))

    ms = lambda seconds_: f"{seconds_ * 1000:.3f} ms"  # noqa: E731
    d, g = results["latency"]
    rows.append(("added latency p50, c=1, non-stream", ms(statistics.median(g) - statistics.median(d)),
                 f"direct {ms(statistics.median(d))}, gateway {ms(statistics.median(g))}", "<= 0.5 ms"))
    rows.append(("added latency p99, c=1, non-stream", ms(percentile(g, 99) - percentile(d, 99)),
                 f"direct {ms(percentile(d, 99))}, gateway {ms(percentile(g, 99))}", ""))
    d, g = results["ttfb"]
    rows.append(("added time to first byte p50, c=1, stream", ms(statistics.median(g) - statistics.median(d)),
                 f"direct {ms(statistics.median(d))}, gateway {ms(statistics.median(g))}", "<= 0.5 ms"))
    for name, label in (("rps", "non-stream"), ("rps_stream", "stream of 20 chunks")):
        direct, gateway = results[name]
        rows.append((f"requests/s, c=64, {label}", f"{gateway.rps / direct.rps:.0%} of direct",
                     f"direct {direct.rps:,.0f}/s, gateway {gateway.rps:,.0f}/s, errors {direct.errors + gateway.errors}",
                     ">= 35%"))
    before, peak, failures = results["streams"]
    rows.append((f"{streams} concurrent slow streams", f"+{(peak - before) / 1024:.1f} MB RSS",
                 f"RSS {before / 1024:.1f} MB before, {peak / 1024:.1f} MB at peak, {failures} failed",
                 "<= 300 MB for 10,000, 0 failed"))
    before, peak, failures = results["streams_floor"]
    rows.append((f"{streams} concurrent slow streams, the bare aiohttp proxy", f"+{(peak - before) / 1024:.1f} MB RSS",
                 f"RSS {before / 1024:.1f} MB before, {peak / 1024:.1f} MB at peak, {failures} failed", ""))
    floor = results["rps_floor"]
    rows.append(("requests/s, c=64, non-stream, a 20-line aiohttp proxy (no gateway logic)",
                 f"{floor.rps / results['rps'][0].rps:.0%} of direct",
                 f"{floor.rps:,.0f}/s, errors {floor.errors}: the ceiling of aiohttp's server and client here", ""))
    # Against that floor, measured in the same run.
    for name, label in (("rps", "non-stream"), ("rps_stream", "stream of 20 chunks")):
        floor, gateway, least = results[f"{name}_floor"], results[name][1], results[f"{name}_least"]
        rows.append((f"requests/s, c=64, {label}, against the bare aiohttp proxy", f"{gateway.rps / floor.rps:.0%}",
                     f"bare proxy {floor.rps:,.0f}/s, gateway {gateway.rps:,.0f}/s, errors {floor.errors + gateway.errors}",
                     ">= 70%"))
        rows.append((f"requests/s, c=64, {label}, the bare proxy doing only a gateway's least work, against the "
                     "bare proxy", f"{least.rps / floor.rps:.0%}",
                     f"{least.rps:,.0f}/s, errors {least.errors}: key hashed, body parsed, injected and serialised, "
                     "answer parsed, a usage row, a request id, a log line (benchmarks/minimal_proxy.py)", ""))
        rows.append((f"CPU per request, c=64, {label}", f"{gateway.cpu_us:,.0f} µs",
                     f"bare proxy {floor.cpu_us:,.0f} µs, bare proxy with a gateway's least work "
                     f"{least.cpu_us:,.0f} µs", ""))
    for name, label in (("rps", "non-stream"), ("rps_stream", "stream of 20 chunks")):
        untraced, traced = results[name][1], results[f"{name}_traced"]
        rows.append((f"CPU per request, c=64, {label}, traced", f"{traced.cpu_us:,.0f} µs",
                     f"untraced {untraced.cpu_us:,.0f} µs (+{traced.cpu_us - untraced.cpu_us:,.0f} µs); every call "
                     f"sampled, {results['traced_spans']:,} spans received by a collector on loopback; "
                     f"{traced.rps:,.0f}/s, errors {traced.errors}", ""))
    one_worker, two_workers = results["rps"][1], results["rps_workers"]
    floor_one, floor_two = results["rps_floor"], results["rps_workers_floor"]
    rows.append(("CPU per request, c=64, non-stream, --workers 2", f"{two_workers.cpu_us:,.0f} µs",
                 f"1 worker {one_worker.cpu_us:,.0f} µs (both workers' CPU added up); the bare proxy in 2 processes "
                 f"{floor_two.cpu_us:,.0f} µs, in 1 {floor_one.cpu_us:,.0f} µs", "not above 1 worker's"))
    for name, label in (("latency", "latency p50, c=1, non-stream"), ("ttfb", "time to first byte p50, c=1, stream")):
        d, g = results[name]
        f = results[f"{name}_floor"]
        rows.append((f"added {label}, over the bare aiohttp proxy", ms(statistics.median(g) - statistics.median(f)),
                     f"upstream {ms(statistics.median(d))}, bare proxy {ms(statistics.median(f))}, "
                     f"gateway {ms(statistics.median(g))}", "<= 0.1 ms"))
    (d_first, d_gaps, d_failed), (g_first, g_gaps, g_failed), paced = results["paced"]
    f_first, f_gaps, f_failed = results["paced_floor"]
    for label, d, g, f in (("time to first token", d_first, g_first, f_first),
                           ("gap between chunks", d_gaps, g_gaps, f_gaps)):
        rows.append((f"added {label} p99, {paced} streams started over {PACED_RAMP:g} s (first chunk at 200 ms, "
                     "then 50 every 20 ms)",
                     ms(percentile(g, 99) - percentile(d, 99)),
                     f"upstream p99 {ms(percentile(d, 99))}, gateway p99 {ms(percentile(g, 99))}; the bare aiohttp "
                     f"proxy p99 {ms(percentile(f, 99))} (+{ms(percentile(f, 99) - percentile(d, 99))}); "
                     f"failed {d_failed + g_failed + f_failed}", "<= 5 ms"))
    plain_fast, resilient_fast = results["failover"]
    rows.append(("added latency p50 of an assistant able to fail over (primary healthy), c=1",
                 ms(statistics.median(resilient_fast) - statistics.median(plain_fast)),
                 f"without fallbacks {ms(statistics.median(plain_fast))}, with one {ms(statistics.median(resilient_fast))}",
                 "nothing measurable"))
    rows.append(("requests/s, c=64, --workers 2 vs 1", f"{two_workers.rps / one_worker.rps:.2f}x",
                 f"1 worker {one_worker.rps:,.0f}/s, 2 workers {two_workers.rps:,.0f}/s, errors {two_workers.errors}",
                 ">= 1.6x"))

    for backend in ("memory", "redis", "postgres"):
        if f"limits_{backend}" not in results:
            rows.append((f"added latency p50 of a limited key, counters in {backend}", "not measured",
                         f"no Redis at {BENCH_REDIS}", ""))
            continue
        free, limited = results[f"limits_{backend}"]
        floor = (f"; floor: one bare Redis script call from redis-py {ms(statistics.median(results['redis_floor']))}"
                 if backend == "redis" else "")
        rows.append((f"added latency p50 of a limited key, c=1, counters in {backend}",
                     ms(statistics.median(limited) - statistics.median(free)),
                     f"key without limits {ms(statistics.median(free))}, with rpm, tpm, max_parallel and a token "
                     f"budget {ms(statistics.median(limited))}{floor}", "<= 0.1 ms" if backend == "redis" else ""))

    from benchmarks import dialects

    rows += dialects.rows(results["dialects"])

    table = ["| measure | result | detail | target |", "| --- | --- | --- | --- |"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    described = machine()
    print(f"\nMachine: {described}\n")
    print("\n".join(table))
    if args.write:
        write(Path(args.write), described, table, args.quick)
    shutil.rmtree(workdir, ignore_errors=True)


def write(path: Path, described: str, table: list[str], quick: bool) -> None:
    text = path.read_text() if path.exists() else ""
    block = (f"<!-- bench:start -->\nMeasured by `make bench` on {time.strftime('%Y-%m-%d')}"
             f"{' (--quick)' if quick else ''}. Machine: {described}.\n\n" + "\n".join(table) + "\n<!-- bench:end -->")
    if "<!-- bench:start -->" in text:
        text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
