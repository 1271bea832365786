"""Slowing down password guessing on the admin login form."""
from __future__ import annotations

import time
from collections import defaultdict, deque

#: Failed logins allowed per username and address, and per address alone, within WINDOW seconds.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
WINDOW = 15 * 60


class LoginThrottle:
    """Counts failed logins in memory (per process) and refuses attempts past the limits."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._failures: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        failures = self._failures[key]
        cutoff = self._clock() - WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return deque()
        return failures

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login for ``username`` from ``address`` may be tried; 0 when it may now."""
        waits = []
        for key, limit in (((username.lower(), address), MAX_FAILURES_PER_USER), (("", address), MAX_FAILURES_PER_ADDRESS)):
            failures = self._recent(key)
            if len(failures) >= limit:
                waits.append(failures[0] + WINDOW - self._clock())
        return max(waits, default=0.0)

    def failed(self, username: str, address: str) -> None:
        """Count a failed login."""
        now = self._clock()
        self._failures[(username.lower(), address)].append(now)
        self._failures[("", address)].append(now)

    def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of a username once its password was given right."""
        self._failures.pop((username.lower(), address), None)
