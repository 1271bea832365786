"""Usage events written off the request path, in batches, and never lost.

Each API call adds one :class:`UsageEvent` to an in-memory queue. A background task writes the queue
with ``COPY`` every ``flush_interval`` seconds, or sooner once ``batch_size`` rows wait. While the
database cannot be reached the queue keeps growing up to ``max_buffer`` rows; past that the oldest rows
are written to files in ``$RICEBALL_DATA_DIR/usage-spill/``, which are loaded back once the database
answers again. On shutdown whatever is left is written, or spilled if the database is still away.

A failed write is one of three things. The database is away (a lost connection, a timeout, a server
shutting down): the batch is kept and tried again, nothing is dropped. Or the rows themselves cannot be
written (a value the column refuses): the batch is halved until the bad rows are found, the others are
written, and each bad row goes to a dead-letter file in ``$RICEBALL_DATA_DIR/usage-dead-letter/`` with
a log line and ``riceball_usage_dead_letter_rows_total``. A bad row never holds up another. Or anything
else (a bug): the batch goes to the dead-letter folder whole, with the traceback logged once
(``riceball_proxy.faults``), rather than being retried for ever. Every row
has an ``event_id``, so a batch written again after its acknowledgement was lost adds nothing.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

import asyncpg
import orjson

from riceball_proxy.db import usage_events
from riceball_proxy.db.usage_events import UsageEvent
from riceball_proxy.faults import FailureLog, database_away

logger = logging.getLogger(__name__)

SPILL_DIR = "usage-spill"
DEAD_LETTER_DIR = "usage-dead-letter"
#: Seconds a write may take before the database counts as unreachable.
WRITE_TIMEOUT = 10.0
#: Failures of the rows themselves, which no retry can fix: a value the client library cannot encode,
#: or one the server refuses (SQLSTATE classes 22 and 23).
_ROW_ERRORS = (TypeError, ValueError, OverflowError, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _json_default(value):
    if isinstance(value, (uuid.UUID, decimal.Decimal)):  # asyncpg's UUID subclass too
        return str(value)
    raise TypeError


def _event_line(event: UsageEvent) -> bytes:
    values = dataclasses.asdict(event)
    try:
        return orjson.dumps(values, default=_json_default)
    except TypeError:  # a value JSON cannot hold (an integer past 64 bits...): kept as its text
        return orjson.dumps({name: value if _json_safe(value) else repr(value) for name, value in values.items()},
                            default=_json_default)


def _json_safe(value) -> bool:
    try:
        orjson.dumps(value, default=_json_default)
    except TypeError:
        return False
    return True


def _event_from(data: dict) -> UsageEvent:
    data["created_at"] = datetime.datetime.fromisoformat(data["created_at"])
    for field in ("api_key_id", "assistant_id", "event_id"):
        if data.get(field) is not None:
            data[field] = uuid.UUID(data[field])
    if data.get("cost_usd") is not None:
        data["cost_usd"] = decimal.Decimal(data["cost_usd"])
    if data.get("event_id") is None:  # spilled before rows had ids
        data.pop("event_id", None)
    return UsageEvent(**data)


class UsageRecorder:
    """Queues usage events and writes them in batches; see the module's docstring."""

    def __init__(self, pool: asyncpg.Pool, data_dir: Path, *, flush_interval: float = 1.0, batch_size: int = 500,
                 max_buffer: int = 10_000, dead_letters: Callable[[int], None] = lambda count: None):
        self.pool = pool
        self.spill_dir = Path(data_dir) / SPILL_DIR
        self.dead_letter_dir = Path(data_dir) / DEAD_LETTER_DIR
        #: Called with the number of rows each time some go to the dead-letter folder (a metric).
        self.dead_letters = dead_letters
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.pending: deque[UsageEvent] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.failures = FailureLog(logger, "the usage writer")

    # --- recording ---------------------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Queue one event (never blocks on the database)."""
        self.pending.append(event)
        if len(self.pending) >= self.batch_size:
            self._wakeup.set()
        if len(self.pending) > self.max_buffer:
            self._spill([self.pending.popleft() for _ in range(len(self.pending) - self.max_buffer // 2)])

    # --- the background writer ---------------------------------------------------------------------

    def start(self) -> None:
        """Recover spill files left by a stopped process, and start writing in the background."""
        self._recover_claimed_files()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="riceball-usage-writer")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            await self.flush()

    async def close(self) -> None:
        """Stop the background writer and write (or spill) everything still queued."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not await self.flush(load_spilled=False):
            self._spill(list(self.pending))
            self.pending.clear()
            logger.warning("database unreachable at shutdown: usage rows kept in %s", self.spill_dir)

    async def flush(self, *, load_spilled: bool = True) -> bool:
        """Write what is queued (and spilled); False when the database could not be reached."""
        async with self._lock:
            while self.pending:
                batch = [self.pending[n] for n in range(min(self.batch_size, len(self.pending)))]
                written = await self._write(batch)
                if written is None:
                    return False
                for _ in batch:
                    self.pending.popleft()
            if load_spilled:
                return await self._load_spilled()
            return True

    async def _write(self, batch: list[UsageEvent]) -> bool | None:
        """True when every row was written or set aside as unwritable; None when the database is unreachable.

        A batch with unwritable rows is halved until they are found: the others are written, those go
        to the dead-letter folder.
        """
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await usage_events.insert_many(self.pool, batch)
            self.failures.recovered()
            return True
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                self._dead_letter(batch[0], exc)
                return True
        except Exception as exc:
            if database_away(exc):  # kept, and tried again
                self.failures.failed(exc)
                return None
            # A bug, or a failure no retry fixes: the batch is set aside whole, never retried for ever.
            self.failures.failed(exc, retrying=False)
            for event in batch:
                self._dead_letter(event, exc, quiet=True)
            return True
        self.failures.recovered()
        middle = len(batch) // 2
        if await self._write(batch[:middle]) is None:
            return None
        return await self._write(batch[middle:])

    def _dead_letter(self, event: UsageEvent, exc: BaseException, *, quiet: bool = False) -> None:
        self.dead_letter_dir.mkdir(parents=True, exist_ok=True)
        path = self.dead_letter_dir / f"usage-{event.created_at:%Y%m%d}.jsonl"
        with path.open("ab") as file:  # one line per row: appends from several workers do not interleave
            file.write(_event_line(event) + b"\n")
        if not quiet:  # else the failure was logged once for its whole batch
            logger.error("usage row %s of request %s cannot be written (%s: %s); kept in %s",
                         event.event_id, event.request_id, type(exc).__name__, exc, path)
        self.dead_letters(1)

    # --- spill files ---------------------------------------------------------------------------------

    def _spill(self, events: list[UsageEvent]) -> None:
        if not events:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"usage-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        partial = self.spill_dir / f".{name}.partial"
        partial.write_bytes(b"\n".join(_event_line(event) for event in events) + b"\n")
        partial.rename(self.spill_dir / f"{name}.jsonl")  # whole files only: a crash leaves a .partial
        logger.warning("%d usage rows spilled to %s", len(events), self.spill_dir)

    async def _load_spilled(self) -> bool:
        """Write spilled rows back, one file at a time; each file is claimed first, so one worker loads it."""
        if not self.spill_dir.is_dir():
            return True
        for path in sorted(self.spill_dir.glob("usage-*.jsonl")):
            claimed = path.with_name(f"{path.name}.loading-{os.getpid()}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another worker claimed it
            events = [_event_from(orjson.loads(line)) for line in claimed.read_bytes().splitlines() if line]
            for start in range(0, len(events), self.batch_size):
                written = await self._write(events[start:start + self.batch_size])
                if written is None:
                    rest = events[start:]
                    claimed.unlink()
                    self._spill(rest)
                    return False
            claimed.unlink()
            logger.info("loaded %d spilled usage rows from %s", len(events), path.name)
        return True

    def _recover_claimed_files(self) -> None:
        if not self.spill_dir.is_dir():
            return
        for path in self.spill_dir.glob("usage-*.jsonl.loading-*"):
            pid = int(path.name.rsplit("-", 1)[1])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:  # its loader died: the file is free again
                path.rename(path.with_name(path.name.split(".loading-")[0]))
            except PermissionError:
                pass
