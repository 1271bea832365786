"""The least an aiohttp proxy can do: read the body, POST it upstream over keep-alive, return the answer
(a stream forwarded piece by piece as it comes).

    python -m benchmarks.minimal_proxy --port 9300 --upstream http://127.0.0.1:9100 [--gateway-work] [--workers N]

No auth, no parsing, no logging: ``make bench`` measures it beside the gateway to show the ceiling of
aiohttp's own server and client on the machine.

``--gateway-work`` adds, inline and with nothing else around it, the work no gateway of RiceBall's
design can skip: the path's assistant id, the bearer key hashed and looked up, the body parsed, the
system prompt and parameters injected and the body serialised again, the answer parsed for its usage
(each event of a stream parsed, as the gateway checks them), a usage row kept for a batched write, a
request id, and one access-log line. ``benchmarks.cpu_per_request --floor`` measures both, to show
how much of the gateway's cost is that work and how much is the rest (plugins, limits, metrics...).

``--workers N`` serves from N processes sharing the port (``SO_REUSEPORT``), as ``riceball serve
--workers N`` does: what a second process costs on the machine, whatever runs in it.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import sys
import time

import aiohttp
import orjson
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--gateway-work", action="store_true", help="also do the work no gateway can skip")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args()
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break  # a worker: serve like the first process
    chat_url = args.upstream + "/v1/chat/completions"

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(chat_url, data=body,
                                               headers={"Content-Type": "application/json"}) as response:
            if response.content_type != "text/event-stream":
                return web.Response(body=await response.read(), content_type="application/json")
            streamed = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await streamed.prepare(request)
            async for piece in response.content.iter_any():
                await streamed.write(piece)
            await streamed.write_eof()
            return streamed

    keys: dict[str, str] = {}
    usage_rows: list[tuple] = []
    ids = random.Random()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    access_log = logging.getLogger("access")

    async def forward_with_gateway_work(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = f"req_{ids.getrandbits(128):032x}"
        assistant_id = request.match_info["assistant_id"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        key_id = keys.get(hashlib.sha256(token.encode()).hexdigest())
        payload = orjson.loads(await request.read())
        payload["messages"] = [{"role": "system", "content": "You are a helpful assistant."}, *payload["messages"]]
        payload["model"], payload["temperature"] = "bench", 0.2
        usage = None
        async with request.app["session"].post(chat_url, data=orjson.dumps(payload),
                                               headers={"Content-Type": "application/json",
                                                        "X-Request-ID": request_id}) as response:
            if response.content_type != "text/event-stream":
                answer = await response.read()
                usage = orjson.loads(answer).get("usage")
                sent: web.StreamResponse = web.Response(body=answer, content_type="application/json",
                                                        headers={"X-Request-ID": request_id})
            else:
                sent = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Request-ID": request_id})
                await sent.prepare(request)
                pending = b""
                async for piece in response.content.iter_any():  # forwarded as it came, each event parsed
                    *events, pending = (pending + piece).split(b"\n\n")
                    for event in events:
                        if event.startswith(b"data: {"):
                            usage = orjson.loads(event[6:]).get("usage") or usage
                    await sent.write(piece)
                await sent.write_eof()
        usage_rows.append((request_id, assistant_id, key_id, usage, time.time()))
        if len(usage_rows) >= 500:  # what a batched writer would hand to the database
            usage_rows.clear()
        access_log.info("request_id=%s method=%s path=%s status=%d duration_ms=%.2f", request_id, request.method,
                        request.path, sent.status, (time.perf_counter() - started) * 1000)
        return sent

    import uvloop

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    if args.gateway_work:
        app.router.add_post("/api/v1/assistants/{assistant_id}/v1/chat/completions", forward_with_gateway_work)
    app.router.add_post("/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop(),
                reuse_port=args.workers > 1 or None)


if __name__ == "__main__":
    main()
