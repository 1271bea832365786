"""CPU time the gateway process spends per request, for comparing two versions of the code on a noisy machine.

    python -m benchmarks.cpu_per_request [--stream] [--runs 3] [--seconds 8] [--tree PATH ...]
                                         [--limits memory|redis|postgres] [--floor] [--workers N] [--traced]

Each run starts the fake upstream and a one-worker gateway (from the working tree, or from each
``--tree``: a checkout of another commit, put first on ``PYTHONPATH``), loads it with
``wrk -t2 -c64``, and divides the gateway's user+system CPU time (from ``/proc``) by the requests wrk
counted. ``--limits`` gives the key every kind of limit (none ever reached), with its counters in that
backend (Redis: ``RICEBALL_BENCH_REDIS_URL``). ``--floor`` measures the bare aiohttp proxy
(``benchmarks.minimal_proxy``) the same way in each run, alone and doing the work no gateway can skip
(``--gateway-work``): the least any aiohttp gateway spends. ``--workers N`` serves with N processes and
adds up their CPU (the floors too). ``--traced`` also measures the working tree with OpenTelemetry on
(every call sampled; its spans exported to ``benchmarks.otlp_sink`` on loopback, and counted). Runs alternate, so that a machine that slows down or speeds up does
so for all. Prints one line per run and the mean of each.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.run import (
    BENCH_REDIS,
    MESSAGES,
    RICEBALL,
    ROOT,
    bench_database,
    free_port,
    otlp_sink,
    process_tree_cpu,
    riceball,
    running,
    spans_received,
    traced_env,
    upstream_provider,
    wrk_output,
)

LIMITS = ("--rpm", "1000000000", "--tpm", "2000000000", "--max-parallel", "100000", "--budget-tokens",
          "1000000000000000")


def floor_run(stream: bool, seconds: int, workdir: Path, gateway_work: bool = False,
              workers: int = 1) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of the bare aiohttp proxy in front of the fake upstream; with
    ``gateway_work``, of the same proxy doing the work no gateway can skip (``benchmarks.minimal_proxy``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")} | {"PYTHONPATH": str(ROOT)}
    upstream_port, proxy_port = free_port(), free_port()
    with running([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(upstream_port)], env,
                 f"http://127.0.0.1:{upstream_port}/", workdir / "upstream.log"):
        argv = [sys.executable, "-m", "benchmarks.minimal_proxy", "--port", str(proxy_port), "--upstream",
                f"http://127.0.0.1:{upstream_port}", "--workers", str(workers)]
        argv += ["--gateway-work"] if gateway_work else []
        with running(argv, env, f"http://127.0.0.1:{proxy_port}/", workdir / "proxy.log") as proxy:
            path = f"/api/v1/assistants/{uuid.uuid4()}/v1/chat/completions" if gateway_work else "/v1/chat/completions"
            url = f"http://127.0.0.1:{proxy_port}{path}"
            headers = {"Authorization": "Bearer sk-" + "0" * 48} if gateway_work else {}
            body = {"model": "bench", "messages": MESSAGES, "stream": stream}
            wrk_output(url, headers, body, 64, 2, workdir)
            before = process_tree_cpu(proxy.pid)
            output = wrk_output(url, headers, body, 64, seconds, workdir)
            used = process_tree_cpu(proxy.pid) - before
    requests = int(output.split(" requests in ")[0].split()[-1])
    return requests / seconds, used / requests * 1e6


def one_run(tree: Path | None, stream: bool, seconds: int, workdir: Path,
            limits: str | None = None, workers: int = 1, traced: bool = False) -> tuple[float, float]:
    """(requests/s, gateway CPU µs per request) for the code in ``tree`` (None: this working tree)."""
    with contextlib.ExitStack() as stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RICEBALL_", "OTEL_"))}
        sink_url = stack.enter_context(otlp_sink(env, workdir)) if traced else None
        result = _one_run(tree, stream, seconds, workdir, limits, workers, sink_url)
        if sink_url is not None:
            print(f"  (the collector received {spans_received(sink_url):,} spans)", flush=True)
        return result


def _one_run(tree: Path | None, stream: bool, seconds: int, workdir: Path, limits: str | None, workers: int,
             sink_url: str | None) -> tuple[float, float]:
    with bench_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RICEBALL_", "OTEL_"))}
        env |= {"RICEBALL_DATA_DIR": str(workdir / f"var-{uuid.uuid4().hex[:8]}"), "RICEBALL_PLUGINS": "none"}
        if database_url:
            env["RICEBALL_DATABASE_URL"] = database_url
        if sink_url is not None:
            env |= traced_env(sink_url)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        if limits is not None:
            env["RICEBALL_LIMITS_BACKEND"] = limits
            if limits == "redis":
                env["RICEBALL_REDIS_URL"] = BENCH_REDIS
        gateway_port = free_port()
        with upstream_provider(env, workdir):
            assistant = riceball(env, "assistant", "add", "--name", "fast", "--provider", "bench", "--model", "bench")
            key = riceball(env, "key", "create", "--name", "bench", *(LIMITS if limits else ()))["key"]
            url = f"http://127.0.0.1:{gateway_port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
            body = {"model": "bench", "messages": MESSAGES, "stream": stream}
            auth = {"Authorization": f"Bearer {key}"}
            argv = [*RICEBALL, "serve", "--port", str(gateway_port), "--workers", str(workers)]
            with running(argv, env, f"http://127.0.0.1:{gateway_port}/healthz", workdir / "gateway.log") as gateway:
                wrk_output(url, auth, body, 64, 2, workdir)  # warm up
                before = process_tree_cpu(gateway.pid)
                output = wrk_output(url, auth, body, 64, seconds, workdir)
                used = process_tree_cpu(gateway.pid) - before
    requests = int(output.split(" requests in ")[0].split()[-1])
    return requests / seconds, used / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", action="store_true", help="20-chunk streams instead of plain answers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--limits", choices=("memory", "redis", "postgres"),
                        help="a limited key, its counters in this backend (this working tree only)")
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="another checkout to measure beside this working tree (repeatable)")
    parser.add_argument("--floor", action="store_true", help="also measure the bare aiohttp proxy")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (this working tree only)")
    parser.add_argument("--traced", action="store_true", help="also the working tree with OpenTelemetry on")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    trees: list[Path | str | None] = [None, *args.tree, *(["traced"] if args.traced else [])]
    results: dict[str, list[float]] = {str(tree or "working tree"): [] for tree in trees}
    floors = {"bare aiohttp proxy": False, "bare proxy + a gateway's least work": True} if args.floor else {}
    for name in floors:
        results[name] = []
    workdir = Path(tempfile.mkdtemp(prefix="riceball-cpu-"))
    for run in range(args.runs):
        for tree in trees:
            name = str(tree or "working tree")
            mine = tree is None or tree == "traced"
            rps, micros = one_run(None if mine else Path(tree or ""), args.stream, args.seconds, workdir,
                                  args.limits if mine else None, args.workers if mine else 1, tree == "traced")
            results[name].append(micros)
            print(f"run {run + 1} {name}: {rps:,.0f} requests/s, {micros:,.0f} µs of gateway CPU per request",
                  flush=True)
        for name, gateway_work in floors.items():
            rps, micros = floor_run(args.stream, args.seconds, workdir, gateway_work, args.workers)
            results[name].append(micros)
            print(f"run {run + 1} {name}: {rps:,.0f} requests/s, {micros:,.0f} µs of CPU per request", flush=True)
    for name, values in results.items():
        print(f"{name}: mean {statistics.mean(values):,.0f} µs per request ({min(values):,.0f}-{max(values):,.0f})")


if __name__ == "__main__":
    main()
