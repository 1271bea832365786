"""Limit counters: what one call takes (``admit``) and gives back (``settle``), all or nothing.

Three kinds of counter, each under a key of its own:

* ``Bucket`` (rpm, tpm): a token bucket kept as one number, its "theoretical arrival time" (GCRA):
  the moment the bucket would be full again. A call of ``cost`` units moves it ``cost`` intervals on;
  it is admitted while that stays within a minute of now. Settling moves it back or on.
* ``Slots`` (max_parallel): the calls in flight, each with a lease, so that a process that dies
  holding a slot gives it back when the lease ends.
* ``Budget``: spend this period (settled and reserved), in whole units (tokens, or nano-USD). An absent
  budget counter is first loaded from the usage table (what the period has spent so far).

``admit`` checks every counter of a call first and takes from them only when all admit it, so a
refused call holds nothing. Every backend runs the same rules: in memory here (one process), in Redis
(``limits/redis.py``, one Lua script call) or in PostgreSQL (``limits/postgres.py``, row locks).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

MINUTE_MS = 60_000.0
#: How long a slot is held by a call whose process died without giving it back.
SLOT_LEASE_MS = 15 * 60_000


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    per_minute: int
    cost: int


@dataclasses.dataclass(frozen=True, slots=True)
class Slots:
    key: str
    limit: int
    member: str


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    key: str
    limit: int
    amount: int
    #: When the period ends (epoch ms; None: never), and so when the counter can go.
    ends_ms: float | None
    #: Whose spend it counts, for loading it from the usage table: ("key" | "assistant", id, kind, since).
    source: tuple[Any, ...] = ()


Check = Bucket | Slots | Budget


@dataclasses.dataclass(slots=True)
class Decision:
    """``admit``'s answer: admitted, or the first counter that refused and when to try again."""

    admitted: bool
    refused: Check | None = None
    retry_after_ms: float = 0.0
    #: For a refusing Budget: what its period has spent (and reserved) so far.
    spent: int | None = None
    #: For each Bucket checked (admitted or not): (remaining units, ms until full again).
    buckets: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)


class Unavailable(Exception):
    """The shared counters cannot be reached (Redis or PostgreSQL is away)."""


#: ``async (budget, db=None) -> spent``: a budget's spend so far, from the usage table (read on ``db`` when given).
Loader = Callable[..., Awaitable[int]]


def now_ms() -> float:
    return time.time() * 1000.0


def decide(checks: Sequence[Check], state: dict[str, Any], now: float) -> tuple[Decision, dict[str, Any]]:
    """The rules, on plain values: ``state`` maps each check's key to its value (absent: fresh). Returns
    the decision and, when admitted, the new values to store (keys absent from it are left alone)."""
    decision = Decision(admitted=True)
    new: dict[str, Any] = {}
    for check in checks:
        value = new.get(check.key, state.get(check.key))
        if type(check) is Bucket:
            interval = MINUTE_MS / check.per_minute
            base = max(value or 0.0, now)
            tat = base + check.cost * interval
            ahead = tat - now
            if ahead > MINUTE_MS:
                decision.buckets[check.key] = (max(0, int((MINUTE_MS - (base - now)) // interval)), base - now)
                return _refuse(decision, check, ahead - MINUTE_MS), {}
            decision.buckets[check.key] = (int((MINUTE_MS - ahead) // interval), ahead)
            new[check.key] = tat
        elif type(check) is Slots:
            holders = {member: until for member, until in (value or {}).items() if until > now}
            if len(holders) >= check.limit:
                return _refuse(decision, check, 1000.0), {}
            holders[check.member] = now + SLOT_LEASE_MS
            new[check.key] = holders
        else:
            spent = value or 0
            if spent >= check.limit or spent + check.amount > check.limit:
                decision.spent = spent
                return _refuse(decision, check, (check.ends_ms - now) if check.ends_ms else 0.0), {}
            new[check.key] = spent + check.amount
    return decision, new


def _refuse(decision: Decision, check: Check, retry_after_ms: float) -> Decision:
    decision.admitted, decision.refused, decision.retry_after_ms = False, check, max(retry_after_ms, 0.0)
    return decision


@dataclasses.dataclass(frozen=True, slots=True)
class Settlement:
    """What a finished call gives back: units to add to (or, negative, take from) buckets and budgets,
    and slots to release."""

    buckets: tuple[tuple[Bucket, int], ...] = ()
    budgets: tuple[tuple[Budget, int], ...] = ()
    slots: tuple[Slots, ...] = ()


def settle_values(settlement: Settlement, state: dict[str, Any], now: float) -> dict[str, Any]:
    """The new values of the counters a settlement touches (absent ones stay absent)."""
    new: dict[str, Any] = {}
    for bucket, delta in settlement.buckets:
        if delta and bucket.key in state:
            interval = MINUTE_MS / bucket.per_minute
            new[bucket.key] = max(max(state[bucket.key], now) + delta * interval, now)
    for budget, delta in settlement.budgets:
        if delta and budget.key in state:
            new[budget.key] = max(state[budget.key] + delta, 0)
    for slots in settlement.slots:
        holders = state.get(slots.key)
        if holders and slots.member in holders:
            new[slots.key] = {member: until for member, until in holders.items()
                              if member != slots.member and until > now}
    return new


def expiry_ms(check: Check, value: Any) -> float:
    """When a counter's value no longer matters (epoch ms): a full bucket, leases ended, a period over."""
    if type(check) is Bucket:
        return value
    if type(check) is Slots:
        return max(value.values(), default=0.0)
    return check.ends_ms if check.ends_ms is not None else math.inf


#: Seconds a settlement may wait for this process's next admission to carry it, before it is sent alone.
FLUSH_DELAY = 0.005


class Counters:
    """Where the counters live. Subclasses: memory (here), Redis, PostgreSQL.

    Settlements to shared counters are not sent on their own at once: they ride on this process's next
    admission (applied first, in the same round trip), or are sent together ``FLUSH_DELAY`` seconds
    later, whichever comes first. So a call costs one round trip, and a client's next call, admitted
    by this process, always finds the slot of its finished call free.
    """

    #: Shown by ``/metrics`` and the logs.
    name = "memory"

    def __init__(self) -> None:
        self._pending: list[Settlement] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()

    async def admit(self, checks: Sequence[Check], load: Loader) -> Decision:
        """Apply the pending settlements, then admit the call or refuse it, in one round trip."""
        raise NotImplementedError

    async def settle(self, settlement: Settlement) -> None:
        """Queue a settlement: it goes with the next admission, or alone soon after."""
        self._pending.append(settlement)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_soon)

    def take_pending(self) -> Settlement:
        """The queued settlements, as one (and the queue emptied)."""
        pending, self._pending = self._pending, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(pending) == 1:
            return pending[0]
        return Settlement(buckets=tuple(b for s in pending for b in s.buckets),
                          budgets=tuple(b for s in pending for b in s.budgets),
                          slots=tuple(b for s in pending for b in s.slots))

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Send the queued settlements now; a failure to reach the counters is logged (they are lost:
        budgets keep those calls' reservations, slots come back when their lease ends)."""
        settlement = self.take_pending()
        if not (settlement.buckets or settlement.budgets or settlement.slots):
            return
        try:
            await self.apply(settlement)
        except Unavailable as exc:
            logger.warning("limit counters (%s) unavailable: %d settlements lost: %s", self.name,
                           len(settlement.slots) + len(settlement.budgets) + len(settlement.buckets), exc)

    async def apply(self, settlement: Settlement) -> None:
        """Send one settlement to the counters."""
        raise NotImplementedError

    async def close(self) -> None:
        """Send what is queued, then let go of connections."""
        await self.flush()
        if self._flushing:
            await asyncio.wait(set(self._flushing), timeout=10)


class MemoryCounters(Counters):
    """One process's counters, in a dict: exact for one process, nothing shared."""

    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, Any] = {}
        self.expires: dict[str, float] = {}
        self._admitted = 0

    async def admit(self, checks: Sequence[Check], load: Loader) -> Decision:
        state = self.state
        for check in checks:
            if type(check) is Budget and check.key not in state:
                spent = await load(check)  # awaits: another call may have loaded it meanwhile
                state.setdefault(check.key, spent)
                self.expires[check.key] = expiry_ms(check, 0)
        now = now_ms()
        decision, new = decide(checks, state, now)
        if decision.admitted:
            state.update(new)
            for check in checks:
                if type(check) is not Budget:
                    self.expires[check.key] = expiry_ms(check, new[check.key])
            self._admitted += 1
            if self._admitted % 1000 == 0:
                self._forget(now)
        return decision

    async def settle(self, settlement: Settlement) -> None:
        """At once: nothing to wait for."""
        new = settle_values(settlement, self.state, now_ms())
        self.state.update(new)
        for bucket, _ in settlement.buckets:
            if bucket.key in new:
                self.expires[bucket.key] = new[bucket.key]

    def _forget(self, now: float) -> None:
        """Drop counters whose value no longer matters, so memory stays bounded by what is in use."""
        for key in [key for key, until in self.expires.items() if until < now]:
            self.state.pop(key, None)
            del self.expires[key]
