"""Hands finished API calls to the ``riceball_request_finished`` observers, off the request path.

One long-lived task per app drains a queue of outcomes, so a request costs a queue append rather than
a task of its own; at shutdown the queue is drained before the resources close.
"""
from __future__ import annotations

import asyncio
import logging

from riceball_proxy.context import ChatContext, Outcome
from riceball_proxy.plugins import PluginManager, await_hook

logger = logging.getLogger(__name__)


class ObserverQueue:
    """Outcomes waiting for the observers, and the task that gives them over."""

    def __init__(self, pm: PluginManager):
        self.pm = pm
        self.queue: asyncio.Queue[tuple[ChatContext, Outcome] | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="riceball-observers")

    def put(self, ctx: ChatContext, outcome: Outcome) -> None:
        """Queue an outcome (never blocks)."""
        self.queue.put_nowait((ctx, outcome))

    async def _run(self) -> None:
        while (item := await self.queue.get()) is not None:
            ctx, outcome = item
            try:
                await await_hook(self.pm.hook.riceball_request_finished, ctx=ctx, outcome=outcome)
            except Exception:
                logger.exception("a riceball_request_finished observer failed for %s", ctx.request_id)

    async def close(self, timeout: float) -> None:
        """Give every queued outcome to the observers (for ``timeout`` seconds at most), then stop."""
        self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            logger.warning("%d outcomes not observed at shutdown", self.queue.qsize())
            self._task.cancel()
