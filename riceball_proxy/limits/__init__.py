"""Limits on API keys and assistants: rates, calls at once, and budgets per calendar period.

    rpm, tpm        requests and tokens per minute (token buckets: a full minute's worth may come at
                    once, then they refill evenly)
    max_parallel    calls in flight at once
    budget_usd,     spend per period (``day``, ``week``, ``month``: calendar periods in UTC; ``total``:
    budget_tokens   for ever); a call reserves its worst case before it goes upstream, then settles

A key's limits and its assistant's both apply: the tighter wins. The policy that enforces them is the
built-in plugin ``riceball_proxy.builtin.limits``; the counters live in memory, Redis or PostgreSQL
(``riceball_proxy.limits.counters``). docs/limits.md is the user's guide.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

PERIODS = ("day", "week", "month", "total")
#: The largest USD budget (counted in nano-dollars, which stay exact integers in every backend).
MAX_BUDGET_USD = Decimal(1_000_000)
#: The names of the limit columns and fields, in order.
FIELDS = ("rpm", "tpm", "max_parallel", "budget_usd", "budget_tokens", "budget_period")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one key or assistant may use (None: no limit of that kind)."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: Decimal | None = None
    budget_tokens: int | None = None
    budget_period: str = "month"

    @classmethod
    def from_row(cls, row: Any) -> Limits:
        return cls(**{name: row[name] for name in FIELDS})

    def __bool__(self) -> bool:
        return not (self.rpm is None and self.tpm is None and self.max_parallel is None and self.budget_usd is None
                    and self.budget_tokens is None)

    @property
    def has_budget(self) -> bool:
        return self.budget_usd is not None or self.budget_tokens is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the USD budget as a string (exact), the period only with a budget."""
        values = {name: getattr(self, name) for name in FIELDS}
        if values["budget_usd"] is not None:
            values["budget_usd"] = str(values["budget_usd"])
        return values


def period_bounds(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The start and end of the calendar period (UTC) holding ``now``; ``total`` has neither."""
    now = now.astimezone(timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":  # ISO weeks: Monday to Monday
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    return None, None


def current_period_start(limits: Limits) -> datetime | None:
    """When the budget period of these limits that holds now began (None: ``total``)."""
    return period_bounds(limits.budget_period, datetime.now(timezone.utc))[0]
