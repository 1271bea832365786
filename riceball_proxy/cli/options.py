"""Argument types and the options several commands share (limits and budgets)."""
from __future__ import annotations

import argparse
import datetime
import decimal
import re

from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import PERIODS, Limits

#: ``none`` given to an option of ``update``: remove that limit or price.
NONE = "none"


_DURATION_PART = re.compile(r"(\d+)([smhdw])")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def limit_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """Rate limits, calls at once and budgets (docs/limits.md); for ``update``, ``none`` removes one."""
    removes = " ('none' removes it)" if update else ""
    parser.add_argument("--rpm", type=whole_or_none, metavar="N", help="requests per minute" + removes)
    parser.add_argument("--tpm", type=whole_or_none, metavar="N", help="tokens per minute" + removes)
    parser.add_argument("--max-parallel", type=whole_or_none, metavar="N", help="calls at once" + removes)
    parser.add_argument("--budget-usd", type=price, metavar="USD", help="spend per budget period, in USD" + removes)
    parser.add_argument("--budget-tokens", type=whole_or_none, metavar="N", help="tokens per budget period" + removes)
    parser.add_argument("--budget-period", choices=PERIODS,
                        help="day, week or month (calendar, UTC) or total (never renews); default month")


def whole_or_none(value: str) -> int | str:
    """A whole number or ``none`` (argparse type); its range is the spec's."""
    if value.strip().lower() == NONE:
        return NONE
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number (or 'none')") from None


def price(value: str) -> decimal.Decimal | str:
    """An amount of USD or ``none`` (argparse type); its range is the spec's."""
    if value.strip().lower() == NONE:
        return NONE
    try:
        number = decimal.Decimal(value.strip().lstrip("$"))
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not an amount of USD (or 'none')") from None
    return number


def number(value: str) -> float:
    """A number, its range left to the spec that takes it (argparse type)."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def whole(value: str) -> int:
    """A whole number, its range left to the spec that takes it (argparse type)."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None



def name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise argparse.ArgumentTypeError("must be 1 to 200 characters")
    return value


def trimmed(value: str) -> str:
    """The text without surrounding white space (argparse type); what it may be is the spec's."""
    return value.strip()


def port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError("must be at most 65535")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def duration(value: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``1w2d``, ``90m``... as a timedelta (argparse type)."""
    text = value.strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30d, 12h or 1w2d")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0")
    return datetime.timedelta(seconds=seconds)


def limit_data(args: argparse.Namespace, current: Limits | None = None) -> dict:
    """The limits the options give (``none`` removes one), on top of ``current``, as a LimitsSpec's data."""
    values = {}
    for name in LIMIT_FIELDS:
        given = getattr(args, name)
        values[name] = getattr(current, name, None) if given is None else None if given == NONE else given
    return {name: value for name, value in values.items() if value is not None}


