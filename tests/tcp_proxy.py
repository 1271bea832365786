"""A TCP forwarder the tests can cut: a real network fault between the gateway and PostgreSQL."""
from __future__ import annotations

import asyncio
import contextlib
import urllib.parse


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server (PostgreSQL over TCP or a unix socket, Redis...) until
    ``block()`` is called."""

    def __init__(self, target_url: str):
        parts = urllib.parse.urlsplit(target_url)
        query = urllib.parse.parse_qs(parts.query)
        self.unix_path = None
        self.target_host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 5432
        if "host" in query and query["host"][0].startswith("/"):
            self.unix_path = f"{query['host'][0]}/.s.PGSQL.{self.target_port}"
        self.target_url = target_url
        self.blocked = False
        #: When set, the next server reply containing these bytes is not passed on: the connection is cut instead.
        self.cut_before: bytes | None = None
        self.cuts = 0
        #: Seconds each piece sent to the server waits first (a slow network, or a server slow to answer).
        self.delay = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self) -> str:
        """The target URL, with the proxy in front."""
        parts = urllib.parse.urlsplit(self.target_url)
        user = parts.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}{parts.path}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        try:
            if self.unix_path:
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer),
                             self._pipe(upstream_reader, writer, from_server=True, peer=upstream_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_server: bool = False,
                    peer: asyncio.StreamWriter | None = None) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay and not from_server:
                    await asyncio.sleep(self.delay)
                if from_server and self.cut_before is not None and self.cut_before in data:
                    self.cut_before = None
                    self.cuts += 1
                    peer.close()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def block(self) -> None:
        """Cut every open connection and refuse new ones."""
        self.blocked = True
        for writer in list(self._writers):
            writer.close()

    def unblock(self) -> None:
        self.blocked = False
        #: When set, the next server reply containing these bytes is not passed on: the connection is cut instead.
        self.cut_before: bytes | None = None
        self.cuts = 0

    async def close(self) -> None:
        self.block()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
