"""Does the gateway's memory grow with the requests it serves?

    python -m benchmarks.memory [--requests 1000000] [--first 100000] [--stream]

Starts the fake upstream and a one-worker gateway, loads it with ``wrk -t2 -c64`` in rounds of a few
seconds, and reads its resident memory (``/proc``) once ``--first`` requests were served and again
after ``--requests``; prints both and the growth between them. Each request is a new API call (usage
row, metrics, access log line), on one key and one assistant, as in ``make bench``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.run import (
    MESSAGES,
    RICEBALL,
    bench_database,
    free_port,
    riceball,
    rss_kib,
    running,
    upstream_provider,
    wrk_output,
)

ROUND_SECONDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--first", type=int, default=100_000)
    parser.add_argument("--stream", action="store_true", help="20-chunk streams instead of plain answers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="riceball-memory-"))
    with bench_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
        env |= {"RICEBALL_DATA_DIR": str(workdir / "var"), "RICEBALL_PLUGINS": "none"}
        if database_url:
            env["RICEBALL_DATABASE_URL"] = database_url
        port = free_port()
        with upstream_provider(env, workdir):
            assistant = riceball(env, "assistant", "add", "--name", "fast", "--provider", "bench", "--model", "bench")
            key = riceball(env, "key", "create", "--name", "bench")["key"]
            url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions"
            body = {"model": "bench", "messages": MESSAGES, "stream": args.stream}
            auth = {"Authorization": f"Bearer {key}"}
            with running([*RICEBALL, "serve", "--port", str(port)], env,
                         f"http://127.0.0.1:{port}/healthz", workdir / "gateway.log") as gateway:
                served, first_rss = 0, None
                print(f"RSS at start: {rss_kib(gateway.pid) / 1024:.1f} MB", flush=True)
                while served < args.requests:
                    output = wrk_output(url, auth, body, 64, ROUND_SECONDS, workdir)
                    served += int(output.split(" requests in ")[0].split()[-1])
                    if first_rss is None and served >= args.first:
                        first_rss = rss_kib(gateway.pid)
                        print(f"RSS after {served:,} requests: {first_rss / 1024:.1f} MB", flush=True)
                last_rss = rss_kib(gateway.pid)
    print(f"RSS after {served:,} requests: {last_rss / 1024:.1f} MB "
          f"({(last_rss - first_rss) / first_rss:+.1%} since {args.first:,})")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
