"""Hands finished API calls to the ``riceball_request_finished`` observers, off the request path.

One long-lived task per app drains a bounded queue of outcomes, so a request costs a queue append
rather than a task of its own. Before an outcome is queued its context lets go of the request's bulk
(``messages``, ``tools``...; see ``ChatContext.release_bodies``), so a queue never holds prompts. When
the queue is full (the observers cannot keep up), a finishing request waits for room before it ends:
back-pressure, never a dropped outcome, so usage is never lost. At shutdown the queue is drained
before the resources close.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from riceball_proxy.context import ChatContext, Outcome
from riceball_proxy.plugins import PluginManager

logger = logging.getLogger(__name__)

#: Outcomes waiting for the observers at most.
MAX_PENDING = 10_000


class ObserverQueue:
    """Outcomes waiting for the observers, and the task that gives them over."""

    def __init__(self, pm: PluginManager, *, max_pending: int = MAX_PENDING,
                 on_backpressure: Callable[[], None] = lambda: None):
        self.pm = pm
        self.queue: asyncio.Queue[tuple[ChatContext, Outcome]] = asyncio.Queue(max_pending)
        #: Called each time a finishing request has to wait for room (a metric).
        self.on_backpressure = on_backpressure
        self._task = asyncio.get_running_loop().create_task(self._run(), name="riceball-observers")

    async def put(self, ctx: ChatContext, outcome: Outcome) -> None:
        """Queue an outcome; waits only while the queue is full."""
        ctx.release_bodies()
        try:
            self.queue.put_nowait((ctx, outcome))
        except asyncio.QueueFull:
            self.on_backpressure()
            await self.queue.put((ctx, outcome))

    async def _run(self) -> None:
        while True:
            ctx, outcome = await self.queue.get()
            try:
                await self.pm.run("riceball_request_finished", ctx=ctx, outcome=outcome)
            except Exception:  # each observer's own are logged (isolated); this is a last resort
                logger.exception("the riceball_request_finished observers failed for %s", ctx.request_id)
            finally:
                self.queue.task_done()

    async def close(self, timeout: float) -> None:
        """Give every queued outcome to the observers (for ``timeout`` seconds at most), then stop."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            logger.warning("%d outcomes not observed at shutdown", self.queue.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
