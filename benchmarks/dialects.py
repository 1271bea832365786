"""What each inbound API costs the gateway: Anthropic's Messages API and OpenAI's Responses API beside Chat
Completions on the same assistant, translated (an OpenAI-compatible provider) and native (an Anthropic
provider for Messages, an ``openai-responses`` one for Responses).

    python -m benchmarks.dialects [--seconds 8] [--runs 2]

A one-worker gateway with the Anthropic plugin serves three kinds of call to the fake upstream
(``benchmarks.fake_upstream``, which speaks both APIs), streamed (20 chunks or 20 text deltas) and not,
loaded by ``wrk -t2 -c64``: Chat Completions, Messages translated to Chat Completions, Messages passed
through to an Anthropic provider, Responses bridged to Chat Completions, Responses passed through to a
provider that speaks it. Prints requests/s and the gateway's CPU per request (and per streamed
chunk), the mean of the runs, which alternate so that a machine that slows down does so for all.
``make bench`` adds the same rows to its table (``rows``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.run import MESSAGES, RICEBALL, bench_database, free_port, riceball, running, upstream_provider, wrk

CHUNKS = 20
PLAIN = {"model": "bench", "messages": MESSAGES, "max_tokens": 100}
#: The same question as a Responses request.
RESPONSES = {"model": "bench", "input": MESSAGES[0]["content"], "max_output_tokens": 100}
#: (label, assistant, path, streamed)
CALLS = (
    ("Chat Completions", "openai", "/v1/chat/completions", False),
    ("Messages, translated", "openai", "/v1/messages", False),
    ("Messages, native", "anthropic", "/v1/messages", False),
    ("Responses, bridged", "openai", "/v1/responses", False),
    ("Responses, native", "responses", "/v1/responses", False),
    ("Chat Completions", "openai", "/v1/chat/completions", True),
    ("Messages, translated", "openai", "/v1/messages", True),
    ("Messages, native", "anthropic", "/v1/messages", True),
    ("Responses, bridged", "openai", "/v1/responses", True),
    ("Responses, native", "responses", "/v1/responses", True),
)


def measure(env: dict, workdir: Path, seconds: int, runs: int) -> dict[tuple[str, bool], list]:
    """Each call of ``CALLS`` loaded ``runs`` times: {(label, streamed): [Load, ...]}."""
    env = env | {"RICEBALL_PLUGINS": "anthropic"}
    results: dict[tuple[str, bool], list] = {}
    with upstream_provider(env, workdir, "dialects-openai", log="upstream-dialects.log") as upstream_url:
        for kind, provider_type in (("anthropic", "anthropic"), ("responses", "openai-responses")):
            riceball(env, "provider", "add", "--name", f"dialects-{kind}", "--type", provider_type, "--base-url",
                     upstream_url)
        assistants = {kind: riceball(env, "assistant", "add", "--name", f"dialects-{kind}", "--provider",
                                     f"dialects-{kind}", "--model", "bench")["id"]
                      for kind in ("openai", "anthropic", "responses")}
        key = riceball(env, "key", "create", "--name", "dialects")["key"]
        port = free_port()
        with running([*RICEBALL, "serve", "--port", str(port)], env,
                     f"http://127.0.0.1:{port}/healthz", workdir / "gateway-dialects.log") as gateway:
            for _ in range(runs):
                for label, kind, path, streamed in CALLS:
                    url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistants[kind]}{path}"
                    body = RESPONSES if path.endswith("/responses") else PLAIN
                    body = body | {"stream": True} if streamed else body
                    results.setdefault((label, streamed), []).append(
                        wrk(url, {"Authorization": f"Bearer {key}"}, body, 64, seconds, workdir, gateway.pid))
    return results


def rows(results: dict[tuple[str, bool], list]) -> list[tuple[str, str, str, str]]:
    """The table rows of ``measure``'s results, each beside Chat Completions on the same assistant."""
    table = []
    for streamed in (False, True):
        chat = results[("Chat Completions", streamed)]
        chat_cpu = statistics.mean(load.cpu_us for load in chat)
        for label in ("Chat Completions", "Messages, translated", "Messages, native", "Responses, bridged",
                      "Responses, native"):
            loads = results[(label, streamed)]
            cpu = statistics.mean(load.cpu_us for load in loads)
            rps = statistics.mean(load.rps for load in loads)
            kind = f"stream of {CHUNKS} chunks" if streamed else "non-stream"
            detail = f"{rps:,.0f}/s, errors {sum(load.errors for load in loads)}"
            if streamed:  # what a chunk adds: the stream's CPU over the same call's unstreamed, per chunk
                whole = statistics.mean(load.cpu_us for load in results[(label, False)])
                detail += f"; {(cpu - whole) / CHUNKS:,.1f} µs per streamed chunk (over the non-stream call)"
            if label != "Chat Completions":
                detail += f"; Chat Completions on the same assistant {chat_cpu:,.0f} µs ({cpu / chat_cpu:.2f}x)"
            table.append((f"CPU per request, c=64, {kind}, {label}", f"{cpu:,.0f} µs", detail, ""))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="riceball-dialects-"))
    with bench_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
        env |= {"RICEBALL_DATA_DIR": str(workdir / "var")}
        if database_url:
            env["RICEBALL_DATABASE_URL"] = database_url
        table = rows(measure(env, workdir, args.seconds, args.runs))
    print("| measure | result | detail |\n| --- | --- | --- |")
    for measure_, result, detail, _ in table:
        print(f"| {measure_} | {result} | {detail} |")


if __name__ == "__main__":
    main()
