"""An OTLP/HTTP receiver for benchmarks, in a process of its own: it takes what a traced gateway exports
and counts the spans, so that a measurement of tracing's cost also shows the spans really left.

    python -m benchmarks.otlp_sink --port 4318

POST /v1/traces and /v1/metrics are decoded (opentelemetry-proto) and answered as a collector answers;
GET /spans gives the number of spans received so far.
"""
from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = web.AppKey("spans", list)


async def traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    request.app[SPANS][0] += sum(len(scope.spans) for resource in message.resource_spans
                                 for scope in resource.scope_spans)
    return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")


async def metrics(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


async def spans(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[SPANS][0]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SPANS] = [0]
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_get("/spans", spans)
    app.router.add_get("/", spans)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
