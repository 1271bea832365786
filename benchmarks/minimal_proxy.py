"""The least an aiohttp proxy can do: read the body, POST it upstream over keep-alive, return the answer
(a stream forwarded piece by piece as it comes).

    python -m benchmarks.minimal_proxy --port 9300 --upstream http://127.0.0.1:9100

No auth, no parsing, no logging: ``make bench`` measures it beside the gateway to show the ceiling of
aiohttp's own server and client on the machine.
"""
from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(args.upstream + "/v1/chat/completions", data=body,
                                               headers={"Content-Type": "application/json"}) as response:
            if response.content_type != "text/event-stream":
                return web.Response(body=await response.read(), content_type="application/json")
            streamed = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await streamed.prepare(request)
            async for piece in response.content.iter_any():
                await streamed.write(piece)
            await streamed.write_eof()
            return streamed

    import uvloop

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
