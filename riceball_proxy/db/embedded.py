"""An embedded PostgreSQL server in the data directory, for when no RICEBALL_DATABASE_URL is set.

The ``pgserver`` package ships the server binaries in its wheel. Every process that opens the same
data directory (the server, each CLI command) shares one running server; the last one to close its
handle stops it.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PGDATA_DIR = "postgres"
DATABASE_NAME = "postgres"


class EmbeddedPostgres:
    """A handle on the embedded server in ``data_dir``; blocking, so call it from a thread in async code."""

    def __init__(self, data_dir: Path):
        self.pgdata = Path(data_dir).resolve() / PGDATA_DIR
        self._server: Any = None  # pgserver.PostgresServer, once started

    def start(self) -> str:
        """Start (or join) the server and return its connection URL."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine here.
            warnings.simplefilter("ignore")
            import pgserver
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in %s", self.pgdata)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        return self._server.get_uri(DATABASE_NAME)

    def close(self) -> None:
        """Release this process's handle; the server stops when no process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
