"""What a background loop (the usage writer, the last-use writer, the configuration listener, the
readiness check) says when it fails, and whether trying again can help.

A database that is away (a refused or lost connection, a timeout, a server shutting down or starting)
is worth trying again, for as long as it takes. Anything else is a bug or bad data, which no retry
fixes: the loop stops retrying it. Either way the first failure of a kind is logged with its traceback,
so that a bug never passes for "database away", and the failures after it one line a minute at most,
with their count.
"""
from __future__ import annotations

import logging
import time

import asyncpg

#: SQLSTATE classes of a server that cannot serve now: connection exceptions (08), insufficient
#: resources (53), operator intervention (57: shutting down, starting, cancelled).
_AWAY_CLASSES = ("08", "53", "57")


def database_away(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached or cannot serve now (worth a retry)."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "")[:2] in _AWAY_CLASSES
    return False


class FailureLog:
    """One background loop's failures, logged so that each cause is seen and none floods the log."""

    def __init__(self, logger: logging.Logger, loop: str, *, every: float = 60.0):
        self.logger = logger
        #: The loop, as the log names it: "the usage writer".
        self.loop = loop
        self.every = every
        self._seen: set[tuple[str, str]] = set()
        self._last_line = 0.0
        self._since = 0

    def failed(self, exc: BaseException, *, retrying: bool = True) -> None:
        """Note a failure: the first of its kind with its traceback, then a line a minute at most."""
        # One kind for every way of being away (refused, reset, closed...); each bug a kind of its own.
        kind = ("away", "") if database_away(exc) else (type(exc).__module__, type(exc).__qualname__)
        self._since += 1
        then = "; retrying" if retrying else "; not retried"
        if kind not in self._seen:
            self._seen.add(kind)
            self._last_line, self._since = time.monotonic(), 0
            level = logging.WARNING if database_away(exc) else logging.ERROR
            self.logger.log(level, "%s failed (%s: %s)%s", self.loop, type(exc).__name__, exc, then, exc_info=exc)
        elif time.monotonic() - self._last_line >= self.every:
            self.logger.warning("%s failed (%s: %s)%s; %d failures since the last line", self.loop,
                                type(exc).__name__, exc, then, self._since)
            self._last_line, self._since = time.monotonic(), 0

    def recovered(self) -> None:
        """The loop works again: say so once, and log the next failure's traceback afresh."""
        if self._seen:
            self.logger.info("%s works again", self.loop)
            self._seen.clear()
            self._since = 0
