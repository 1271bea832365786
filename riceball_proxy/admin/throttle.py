"""Slowing down password guessing on the admin login form, across every worker and instance.

Failures are kept in the database (``login_failures``) under a SHA-256 of the lower-cased username and
the address, and of the address alone: nothing typed at the form is stored, each row has a fixed size,
rows older than the window are removed, and the table never holds more than ``MAX_ROWS``.
"""
from __future__ import annotations

import datetime
import hashlib

from riceball_proxy.db import login_failures

#: Failed logins allowed per username and address, and per address alone, within WINDOW.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
WINDOW = datetime.timedelta(minutes=15)
#: Failures remembered at most (all keys together); the oldest go first.
MAX_ROWS = 50_000


def _key(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()


class LoginThrottle:
    """Counts failed logins per (username, address) and per address, and refuses attempts past the limits."""

    def __init__(self, pool):
        self.pool = pool

    def _keys(self, username: str, address: str) -> tuple[bytes, bytes]:
        return _key("user", username.lower(), address), _key("address", address)

    async def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login for ``username`` from ``address`` may be tried; 0 when it may now."""
        user_key, address_key = self._keys(username, address)
        recent = await login_failures.recent(self.pool, [user_key, address_key], WINDOW)
        waits = [0.0]
        for key, limit in ((user_key, MAX_FAILURES_PER_USER), (address_key, MAX_FAILURES_PER_ADDRESS)):
            failures, wait = recent.get(key, (0, 0.0))
            if failures >= limit:
                waits.append(wait)
        return max(waits)

    async def failed(self, username: str, address: str) -> None:
        """Count a failed login."""
        await login_failures.add(self.pool, list(self._keys(username, address)), WINDOW, MAX_ROWS)

    async def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of a username once its password was given right."""
        await login_failures.forget(self.pool, self._keys(username, address)[0])
