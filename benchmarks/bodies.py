"""Large request bodies at once: what they cost a gateway worker's memory, and a bystander's call.

    python -m benchmarks.bodies [--bodies 40] [--mib 10] [--tree PATH ...]

For the working tree (and each ``--tree``: a checkout of another commit), starts a one-worker gateway
and sends ``--bodies`` chat calls of ``--mib`` MiB each at once, first with a key limited to rpm 1 and
max_parallel 1, then with a key without limits, while a third key makes one small call; prints the
worker's peak RSS (``VmHWM``) over its RSS before, the statuses, and the bystander's latency. Then, in
this process, the memory one body's reading, checking and two parsed copies take (tracemalloc's peak),
as a multiple of the body's size.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
import orjson

from benchmarks.run import RICEBALL, bench_database, free_port, riceball, rss_kib, running, upstream_provider


def body_of(mib: int) -> bytes:
    return orjson.dumps({"model": "x", "messages": [{"role": "user", "content": "y" * (mib * 2**20)}]})


def worker_pid(parent: int) -> int:
    """The serving process: ``riceball serve`` itself, or its one child when it forks one."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return int(children[0]) if children else parent


async def burst(url: str, key: str, bystander: str, body: bytes, count: int) -> tuple[collections.Counter, float]:
    async def call(session, token, data):
        async with session.post(url, data=data, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"}) as response:
            await response.read()
            return response.status

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        calls = [asyncio.create_task(call(session, key, body)) for _ in range(count)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await call(session, bystander, body_of(0))
        waited = time.perf_counter() - started
        statuses = collections.Counter(await asyncio.gather(*calls))
    return statuses, waited


def one_tree(tree: Path | None, args, workdir: Path) -> None:
    name = str(tree or "working tree")
    with bench_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
        env |= {"RICEBALL_DATA_DIR": str(workdir / f"var-{os.urandom(4).hex()}"), "RICEBALL_PLUGINS": "none",
                "RICEBALL_LOG_LEVEL": "WARNING", "RICEBALL_MAX_BODY_BYTES": str((args.mib + 1) * 2**20)}
        if database_url:
            env["RICEBALL_DATABASE_URL"] = database_url
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        port = free_port()
        with upstream_provider(env, workdir):
            assistant = riceball(env, "assistant", "add", "--name", "bench", "--provider", "bench", "--model", "bench")
            limited = riceball(env, "key", "create", "--name", "limited", "--rpm", "1", "--max-parallel", "1")["key"]
            unlimited = riceball(env, "key", "create", "--name", "unlimited")["key"]
            bystander = riceball(env, "key", "create", "--name", "bystander")["key"]
            url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
            body = body_of(args.mib)
            for label, key in (("rpm 1, max_parallel 1", limited), ("no limits", unlimited)):
                with running([*RICEBALL, "serve", "--port", str(port)], env,
                             f"http://127.0.0.1:{port}/readyz", workdir / "gateway.log") as gateway:
                    pid = worker_pid(gateway.pid)
                    before = rss_kib(pid, "VmRSS")
                    statuses, waited = asyncio.run(burst(url, key, bystander, body, args.bodies))
                    peak = rss_kib(pid, "VmHWM")
                print(f"{name}, {args.bodies} bodies of {args.mib} MiB at once, key {label}: worker RSS "
                      f"{before / 1024:,.0f} MiB before, peak +{(peak - before) / 1024:,.0f} MiB; statuses "
                      f"{dict(sorted(statuses.items()))}; a bystander's call {waited * 1000:,.0f} ms", flush=True)


def parse_multiple(mib: int) -> float:
    """tracemalloc's peak while one body is checked and parsed twice (the client's copy and the upstream
    body), as a multiple of the body's size."""
    from riceball_proxy.context import ChatContext
    from riceball_proxy.validation import check_depth, parse_json, validate_chat_request

    raw = body_of(mib)
    tracemalloc.start()
    tracemalloc.reset_peak()
    body = parse_json(raw)
    check_depth(raw, body)
    ctx = ChatContext(request_id="bench", app=None)
    ctx.take_body(validate_chat_request(body), raw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=40)
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--tree", action="append", type=Path, default=[])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="riceball-bodies-"))
    try:
        for tree in [None, *args.tree]:
            one_tree(tree, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"one body of {args.mib} MiB read, checked and parsed twice: tracemalloc peak "
          f"{parse_multiple(args.mib):.2f}x its size (this process, this working tree)")


if __name__ == "__main__":
    main()
