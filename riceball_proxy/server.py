"""Running the gateway: one process, or several sharing the port with SO_REUSEPORT."""
from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from pathlib import Path

from prometheus_client import multiprocess

from riceball_proxy import appkeys, connections
from riceball_proxy.admin.auth import ANNOUNCE_LATER, SETUP_NOTICE
from riceball_proxy.app import create_app
from riceball_proxy.db.embedded import EmbeddedPostgres
from riceball_proxy.logs import ACCESS_LOGGER, AccessLogger, configure_logging
from riceball_proxy.metrics import MULTIPROCESS_ENV
from riceball_proxy.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds other requests (admin pages...) are given at shutdown, after the API's calls were drained.
SERVER_SHUTDOWN_GRACE = 10.0
#: Seconds before a worker that died is replaced.
RESTART_DELAY = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings, *, workers: int = 1) -> None:
    """Serve until SIGINT or SIGTERM; with ``workers`` > 1, in that many processes."""
    settings = settings.replace(workers=workers)
    if workers == 1:
        run_worker(settings, reuse_port=False)
        return
    # The embedded server is started once here, so that the workers share its URL.
    embedded = None if settings.database_url else EmbeddedPostgres(settings.data_dir)
    if embedded is not None:
        settings = settings.replace(database_url=embedded.start())
    # Every worker writes its metrics into one folder, and /metrics on any of them adds them all up.
    metrics_dir = Path(settings.data_dir).resolve() / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    try:
        supervise(settings, workers)
    finally:
        if embedded is not None:
            embedded.close()


def supervise(settings: Settings, workers: int) -> None:
    """Run ``workers`` processes until SIGINT or SIGTERM, starting a new one whenever one dies."""
    context = multiprocessing.get_context("spawn")

    def start(n: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=run_worker, args=(settings,), kwargs={"reuse_port": True},
                                  name=f"riceball-worker-{n}")
        process.start()
        return process

    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                process.terminate()  # each worker shuts down gracefully on SIGTERM

    processes: list = []
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes.extend(start(n) for n in range(workers))
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in processes], timeout=1.0)
            for n, process in enumerate(processes):
                if stopping or process.is_alive():
                    continue
                logger.error("worker %s (pid %s) exited with %s; starting another", process.name, process.pid,
                             process.exitcode)
                multiprocess.mark_process_dead(process.pid)
                time.sleep(RESTART_DELAY)  # a worker that dies at once must not spin the CPU
                processes[n] = start(n)
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()


def run_worker(settings: Settings, *, reuse_port: bool) -> None:
    """Run one gateway process on the settings' host and port."""
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    app[ANNOUNCE_LATER] = True

    def started(message: str) -> None:
        # What starting made (modules, templates, plugins, the first caches) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it and stalls the loop for it.
        gc.collect()
        gc.freeze()
        logger.info("RiceBall %s", message.strip().splitlines()[0] if message else "")
        notice = app.get(SETUP_NOTICE)
        if notice:  # last, set apart: the one thing a first start asks of its reader
            logger.warning("\n\n    %s", notice)

    connections.run(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port or None,
        # A client that goes away cancels its handler, and so the upstream call.
        handler_cancellation=True,
        # The API's calls had RICEBALL_SHUTDOWN_TIMEOUT already (app.drain_in_flight); this bounds the rest.
        shutdown_timeout=SERVER_SHUTDOWN_GRACE,
        access_log_class=AccessLogger,
        access_log=logging.getLogger(ACCESS_LOGGER),
        loop=new_event_loop(),
        print=started,
    )
    in_flight = app[appkeys.IN_FLIGHT]
    logger.info("stopped: %d calls drained%s", in_flight.drained,
                f", {in_flight.ended} ended after RICEBALL_SHUTDOWN_TIMEOUT" if in_flight.ended else "")
