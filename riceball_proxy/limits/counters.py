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
import collections
import dataclasses
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
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


class Busy(Exception):
    """The shared counters are up, but every connection to them stayed busy for longer than a call
    waits (a burst larger than the connections can carry): this call alone is not counted."""


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
        if isinstance(check, Bucket):
            interval = MINUTE_MS / check.per_minute
            base = max(value or 0.0, now)
            tat = base + check.cost * interval
            ahead = tat - now
            if ahead > MINUTE_MS:
                decision.buckets[check.key] = (max(0, int((MINUTE_MS - (base - now)) // interval)), base - now)
                return _refuse(decision, check, ahead - MINUTE_MS), {}
            decision.buckets[check.key] = (int((MINUTE_MS - ahead) // interval), ahead)
            new[check.key] = tat
        elif isinstance(check, Slots):
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
    and slots to release.

    A batch of settlements sent to shared counters carries an ``id`` (``<process>:<sequence>``); the
    counters remember the ids they applied lately, so a batch sent again because its answer was lost
    (Redis paused, a connection cut after the request left) is applied once.
    """

    buckets: tuple[tuple[Bucket, int], ...] = ()
    budgets: tuple[tuple[Budget, int], ...] = ()
    slots: tuple[Slots, ...] = ()
    id: str = ""

    def __len__(self) -> int:
        return len(self.buckets) + len(self.budgets) + len(self.slots)

    def touches(self, keys: Collection[str]) -> bool:
        """True when the settlement gives back to a counter of ``keys``."""
        return any(bucket.key in keys for bucket, _ in self.buckets) \
            or any(budget.key in keys for budget, _ in self.budgets) or any(slots.key in keys for slots in self.slots)


def settle_values(settlement: Settlement, state: dict[str, Any], now: float) -> dict[str, Any]:
    """The new values of the counters a settlement touches (absent ones stay absent)."""
    new: dict[str, Any] = {}
    # Each one starts from what the ones before it left: a batch may touch one counter many times.
    for bucket, delta in settlement.buckets:
        if delta and bucket.key in state:
            interval = MINUTE_MS / bucket.per_minute
            new[bucket.key] = max(max(new.get(bucket.key, state[bucket.key]), now) + delta * interval, now)
    for budget, delta in settlement.budgets:
        if delta and budget.key in state:
            new[budget.key] = max(new.get(budget.key, state[budget.key]) + delta, 0)
    for slots in settlement.slots:
        holders = new.get(slots.key, state.get(slots.key))
        if holders and slots.member in holders:
            new[slots.key] = {member: until for member, until in holders.items()
                              if member != slots.member and until > now}
    return new


def expiry_ms(check: Check, value: Any) -> float:
    """When a counter's value no longer matters (epoch ms): a full bucket, leases ended, a period over."""
    if isinstance(check, Bucket):
        return value
    if isinstance(check, Slots):
        return max(value.values(), default=0.0)
    return check.ends_ms if check.ends_ms is not None else math.inf


#: Seconds a settlement may wait for this process's next admission to carry it, before it is sent alone.
FLUSH_DELAY = 0.005
#: Seconds before settlements that could not be sent are tried again: doubling up to the last.
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
#: Settlements sent together at most.
MAX_BATCH = 1000
#: Settlements kept while the counters are away; past it the oldest are given up (logged, counted).
MAX_QUEUED = 100_000
#: Seconds a shutdown keeps trying to send the settlements still queued.
CLOSE_TIMEOUT = 5.0


def _process_id() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Counters:
    """Where the counters live. Subclasses: memory (here), Redis, PostgreSQL.

    Settlements to shared counters are not sent on their own at once: they ride on this process's next
    admission (applied first, in the same round trip), or are sent together ``FLUSH_DELAY`` seconds
    later, whichever comes first. So a call costs one round trip, and a client's next call, admitted
    by this process, always finds the slot of its finished call free.

    A settlement is kept until the counters have applied it: a batch that could not be sent (the
    counters away, a timeout) goes back to the head of the queue, unchanged and with its id, and is
    sent again (by the next admission, or by a retry after ``RETRY_DELAYS``) until it is applied. The
    counters apply an id once. At most ``MAX_QUEUED`` settlements wait; past it the oldest are given
    up (``on_lost``).
    """

    #: Shown by ``/metrics`` and the logs.
    name = "memory"

    def __init__(self) -> None:
        self._pending: collections.deque[Settlement] = collections.deque()
        #: Batches sent whose answer never came: sent again, first, as they were.
        self._unsent: collections.deque[Settlement] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()
        self._failures = 0
        self._batches = itertools.count(1)
        #: Batches being sent, by id: the keys they touch, and a future done when the send is over.
        self._in_flight: dict[str, tuple[Settlement, asyncio.Future]] = {}
        self._process = _process_id()
        #: Called with the number of settlements given up (a metric).
        self.on_lost: Callable[[int], None] = lambda count: None

    async def admit(self, checks: Sequence[Check], load: Loader) -> Decision:
        """Apply the next batch of settlements, then admit the call or refuse it, in one round trip
        (:meth:`admit_with`). A batch that could not be sent goes back to the head of the queue."""
        batch = self.take_pending()
        return await self._carrying(batch, self.admit_with(checks, load, batch))

    async def _carrying(self, batch: Settlement, send: Awaitable) -> Any:
        """Await ``send``, which carries ``batch`` to the counters: the batch is done with when it
        succeeds, put back when it does not (sent again, applied once, by the next admission or a retry)."""
        try:
            result = await send
        except (Unavailable, Busy) as exc:
            self.put_back(batch, exc)
            raise
        except BaseException:  # cancelled (the client left): the batch may or may not have been applied
            self.put_back(batch, Busy("the call carrying it was interrupted"))
            raise
        if batch:
            self.sent(batch)
        return result

    async def admit_with(self, checks: Sequence[Check], load: Loader, batch: Settlement) -> Decision:
        """Apply ``batch`` (unless the counters applied its id already), then admit the call or refuse it."""
        raise NotImplementedError

    async def settle(self, settlement: Settlement) -> None:
        """Queue a settlement: it goes with the next admission, or alone soon after."""
        if len(self._pending) >= MAX_QUEUED:
            self._pending.popleft()
            logger.error("limit counters (%s) away too long: %d settlements waiting, the oldest given up",
                         self.name, MAX_QUEUED)
            self.on_lost(1)
        self._pending.append(settlement)
        self._flush_shortly()

    def _flush_shortly(self) -> None:
        """Send what waits in ``FLUSH_DELAY`` seconds, unless a send is planned already."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_soon)

    @property
    def waiting(self) -> int:
        """Settlements not applied yet: queued, kept after a failure, or on their way."""
        return len(self._pending) + sum(len(batch) for batch in self._unsent) \
            + sum(len(batch) for batch, _ in self._in_flight.values())

    def take_pending(self) -> Settlement:
        """The next batch to send: one whose answer was lost (as it was), else the queued settlements
        (up to ``MAX_BATCH``) as one, with a new id. Empty when nothing waits. Whoever takes a batch
        hands it back with :meth:`put_back` if it could not be sent."""
        if self._unsent:
            return self._sending(self._unsent.popleft())
        if not self._pending:
            return Settlement()
        pending: Iterable[Settlement]
        if len(self._pending) <= MAX_BATCH:
            pending, self._pending = self._pending, collections.deque()
        else:
            pending = [self._pending.popleft() for _ in range(MAX_BATCH)]
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self._sending(Settlement(buckets=tuple(b for s in pending for b in s.buckets),
                                        budgets=tuple(b for s in pending for b in s.budgets),
                                        slots=tuple(b for s in pending for b in s.slots),
                                        id=f"{self._process}:{next(self._batches)}"))

    def _sending(self, batch: Settlement) -> Settlement:
        self._in_flight[batch.id] = (batch, asyncio.get_running_loop().create_future())
        return batch

    def _sent_or_not(self, batch: Settlement) -> None:
        _, done = self._in_flight.pop(batch.id, (None, None))
        if done is not None:
            done.set_result(None)

    async def settle_first(self, keys: Collection[str]) -> bool:
        """Apply the settlements of this process that give back to ``keys`` (queued, or being sent with
        another call's admission) before going on; True when there were any. A call refused for want of
        a slot or of budget asks this, then asks again: the calls that just ended here may have freed it."""
        waited = False
        if any(settlement.touches(keys) for settlement in (*self._unsent, *self._pending)):
            await self.flush()
            waited = True
        for batch, done in list(self._in_flight.values()):
            if batch.touches(keys):
                await asyncio.shield(done)
                waited = True
        return waited

    def put_back(self, batch: Settlement, exc: Exception) -> None:
        """A batch that could not be sent: it waits at the head of the queue, and is tried again soon."""
        if not batch:
            return
        self._sent_or_not(batch)
        self._unsent.appendleft(batch)
        if isinstance(exc, Busy):  # busy or interrupted, not away: no back-off, it goes with the next call
            self._flush_shortly()
            return
        self._failures += 1
        if self._failures == 1 or self._failures % 100 == 0:
            logger.warning("limit counters (%s) unavailable: %d settlements kept to be sent again: %s",
                           self.name, self.waiting, exc)
        self._retry_later()

    def _retry_later(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1]
        self._timer = asyncio.get_running_loop().call_later(delay, self._flush_soon)

    def sent(self, batch: Settlement) -> None:
        """A batch was applied: the counters are back; what else waits is sent soon."""
        self._sent_or_not(batch)
        if self._failures:
            logger.info("limit counters (%s) back: the settlements kept are being sent", self.name)
            self._failures = 0
        if self._unsent or self._pending:
            self._flush_shortly()

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> bool:
        """Send what is queued now; False when the counters could not be reached (it stays queued)."""
        while True:
            batch = self.take_pending()
            if not batch:
                return True
            try:
                await self._carrying(batch, self.apply(batch))
            except (Unavailable, Busy):
                return False

    async def apply(self, settlement: Settlement) -> None:
        """Send one batch to the counters (applied once per id); Unavailable when they cannot be reached."""
        raise NotImplementedError

    async def close(self) -> None:
        """Send what is queued (trying for ``CLOSE_TIMEOUT`` seconds), then let go of connections."""
        if self._flushing:
            await asyncio.wait(set(self._flushing), timeout=10)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while not await self.flush() and time.monotonic() < deadline:
            await asyncio.sleep(RETRY_DELAYS[0])
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.waiting:
            logger.error("limit counters (%s) unavailable at shutdown: %d settlements not applied (slots come "
                         "back when their lease ends; budgets keep those calls' reservations)", self.name,
                         self.waiting)
            self.on_lost(self.waiting)


class MemoryCounters(Counters):
    """One process's counters, in a dict: exact for one process, nothing shared."""

    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, Any] = {}
        self.expires: dict[str, float] = {}
        self._admitted = 0
        #: The time in ms the rates are counted on (a test moves its own instead of waiting for a window).
        self.clock: Callable[[], float] = now_ms

    async def admit(self, checks: Sequence[Check], load: Loader) -> Decision:
        state = self.state
        for check in checks:
            if isinstance(check, Budget) and check.key not in state:
                spent = await load(check)  # awaits: another call may have loaded it meanwhile
                state.setdefault(check.key, spent)
                self.expires[check.key] = expiry_ms(check, 0)
        now = self.clock()
        decision, new = decide(checks, state, now)
        if decision.admitted:
            state.update(new)
            for check in checks:
                if not isinstance(check, Budget):
                    self.expires[check.key] = expiry_ms(check, new[check.key])
            self._admitted += 1
            if self._admitted % 1000 == 0:
                self._forget(now)
        return decision

    async def settle(self, settlement: Settlement) -> None:
        """At once: nothing to wait for."""
        new = settle_values(settlement, self.state, self.clock())
        self.state.update(new)
        for bucket, _ in settlement.buckets:
            if bucket.key in new:
                self.expires[bucket.key] = new[bucket.key]

    def _forget(self, now: float) -> None:
        """Drop counters whose value no longer matters, so memory stays bounded by what is in use."""
        for key in [key for key, until in self.expires.items() if until < now]:
            self.state.pop(key, None)
            del self.expires[key]
