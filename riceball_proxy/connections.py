"""How a gateway process serves HTTP: aiohttp's server, which also says who never sent a whole request,
and answers a request its parser refuses in the API's error shape.

aiohttp closes a connection whose request line and headers have not arrived whole within its keep-alive
timeout, which the gateway sets to RICEBALL_CLIENT_READ_TIMEOUT (``app.create_app``), and does so
silently. Here such a client is counted (``riceball_slow_requests_total``) and said in the log once per
address, exactly as a body that misses the same deadline is (``bodies.SlowClients``); an idle
keep-alive connection that started no request is closed as before, unsaid.

A request aiohttp's parser refuses (a malformed request line or header, a broken chunked body: scanners
and fuzzers send thousands) is the client's fault: it is answered in OpenAI's error shape (code
``malformed_request``) and said in one INFO line, where aiohttp answers plain text and logs an ERROR with
a traceback.

aiohttp has no hook for this: its server makes its own connection class. So this module has the
connection (``Connection``), the server that makes it (``Server``), the runner that makes that server
(``Runner``, for ``riceball serve`` and the tests alike) and ``run``, ``web.run_app`` with that runner.
These lean on a few of aiohttp's private names (the connection's ``_messages``, ``_request_in_progress``
and ``_process_keepalive``, the server's ``_loop`` and ``_kwargs``, the runner's ``_make_server``);
every test server runs on them, so a change in aiohttp fails the suite rather than the deadline.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from riceball_proxy import appkeys
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)


class Connection(web.RequestHandler):
    """One client connection; a request head still partial when the read deadline closes it is reported."""

    def __init__(self, manager, *, slow_clients, **kwargs):
        super().__init__(manager, **kwargs)
        self._slow_clients = slow_clients
        self._head_started = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if data:
            # Bytes that made no request, while none is being handled, are part of a head not yet whole.
            self._head_started = not self._messages and not self._request_in_progress

    def _process_keepalive(self) -> None:
        closed_before, transport = self._force_close, self.transport
        super()._process_keepalive()
        if self._force_close and not closed_before and self._head_started:
            peer = transport.get_extra_info("peername") if transport is not None else None
            self._slow_clients.slow(peer[0] if peer else None, self.keepalive_timeout, part="headers")


    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = (exc.message or type(exc).__name__).strip().splitlines()[0][:200]
        logger.info("malformed request from %s: %s", request.remote, reason)
        response = APIError(status, f"Malformed request: {reason}", code="malformed_request").response()
        response.force_close()
        return response


class Server(web.Server):
    """aiohttp's low-level server, whose connections are ``Connection``s."""

    def __init__(self, handler, *, slow_clients, request_factory=None, handler_cancellation=False, loop=None,
                 **connection_options):
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation,
                         loop=loop, **connection_options)
        self.slow_clients = slow_clients
        self.connection_options = connection_options

    def __call__(self) -> Connection:
        return Connection(self, slow_clients=self.slow_clients, loop=self._loop, **self.connection_options)


class Runner(web.AppRunner):
    """aiohttp's app runner, serving the app with ``Server``."""

    async def _make_server(self) -> Server:
        made = await super()._make_server()
        # The same server aiohttp made (the app's handler_args included), making Connections.
        return Server(made.request_handler, request_factory=made.request_factory,
                      handler_cancellation=made.handler_cancellation, loop=made._loop,
                      slow_clients=self.app[appkeys.SLOW_CLIENTS], **made._kwargs)


def run(app: web.Application, *, host: str, port: int, reuse_port: bool | None, loop: asyncio.AbstractEventLoop,
        print=print, **runner_options) -> None:
    """Serve ``app`` on ``host``:``port`` until SIGINT or SIGTERM, as ``web.run_app`` does, with ``Runner``.
    ``runner_options`` are the runner's (``shutdown_timeout``, ``access_log``, ``handler_cancellation``...)."""

    async def serve() -> None:
        runner = Runner(app, handle_signals=True, **runner_options)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
            await site.start()
            print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
            await asyncio.Future()  # until a signal ends it
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
