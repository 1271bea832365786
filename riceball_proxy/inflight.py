"""The API calls being answered, so that a shutdown can let them finish and then end what is left.

On shutdown (SIGTERM, SIGINT) the gateway stops accepting connections, then waits up to
``RICEBALL_SHUTDOWN_TIMEOUT`` seconds for the calls in flight. Whatever still runs then is ended: a
stream gets one last error event (``server_shutting_down``) and a clean close, a call not yet answered
gets a 503, and each is recorded with that status before the usage rows are written.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from riceball_proxy.context import ChatContext
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

#: Seconds the calls that were ended are given to write their last event and finish.
END_GRACE = 5.0


def shutting_down() -> APIError:
    """The error that ends a call still running when the gateway stops."""
    return APIError(503, "The gateway is shutting down; retry the request.", type="api_error",
                    code="server_shutting_down")


class InFlight:
    """Tasks answering API calls, with their contexts."""

    def __init__(self) -> None:
        self._calls: dict[asyncio.Task, ChatContext] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        #: After :meth:`drain`: the calls that finished in time, and those that were ended.
        self.drained = self.ended = 0

    def add(self, task: asyncio.Task, ctx: ChatContext) -> None:
        """Count ``task`` as answering ``ctx`` until :meth:`discard`."""
        self._calls[task] = ctx
        self._idle.clear()

    def __len__(self) -> int:
        """How many calls are being answered."""
        return len(self._calls)

    def discard(self, task: asyncio.Task) -> None:
        self._calls.pop(task, None)
        if not self._calls:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the calls to finish, then end the rest."""
        running = len(self._calls)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self.ended = len(self._calls)
        self.drained = running - self.ended
        if not self._calls:
            return
        logger.warning("shutting down: ending %d calls still in flight after %g s", len(self._calls), timeout)
        for task, ctx in list(self._calls.items()):
            ctx.shutting_down = True
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), END_GRACE)
