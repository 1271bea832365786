"""Argument types and the options several commands share (limits and budgets)."""
from __future__ import annotations

import argparse
import datetime
import decimal
import re
from collections.abc import Callable

from riceball_proxy.cli.output import CommandError
from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import PERIODS, InvalidLimits, Limits, check_limits

#: ``none`` given to an option of ``update``: remove that limit or price.
NONE = "none"


_DURATION_PART = re.compile(r"(\d+)([smhdw])")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def limit_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """Rate limits, calls at once and budgets (docs/limits.md); for ``update``, ``none`` removes one."""
    removes = " ('none' removes it)" if update else ""
    parser.add_argument("--rpm", type=limit(2**31 - 1), metavar="N", help="requests per minute" + removes)
    parser.add_argument("--tpm", type=limit(2**31 - 1), metavar="N", help="tokens per minute" + removes)
    parser.add_argument("--max-parallel", type=limit(2**31 - 1), metavar="N", help="calls at once" + removes)
    parser.add_argument("--budget-usd", type=price, metavar="USD", help="spend per budget period, in USD" + removes)
    parser.add_argument("--budget-tokens", type=limit(2**62), metavar="N", help="tokens per budget period" + removes)
    parser.add_argument("--budget-period", choices=PERIODS,
                        help="day, week or month (calendar, UTC) or total (never renews); default month")


def limit(high: int) -> Callable[[str], int | str]:
    def parse(value: str) -> int | str:
        if value.strip().lower() == NONE:
            return NONE
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number (or 'none')") from None
        if not 1 <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between 1 and {high} (or 'none')")
        return number

    return parse


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


def price(value: str) -> decimal.Decimal | str:
    if value.strip().lower() == NONE:
        return NONE
    try:
        number = decimal.Decimal(value.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not an amount of USD (or 'none')") from None
    if not number.is_finite() or number < 0 or number >= 10**9:
        raise argparse.ArgumentTypeError("must be an amount of USD, 0 or more")
    return number


def name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise argparse.ArgumentTypeError("must be 1 to 200 characters")
    return value


def url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


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


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


def between(low: float, high: float, *, integer: bool = False) -> Callable[[str], float]:
    """An argparse type for a number (a whole one with ``integer``) from ``low`` to ``high``."""

    def parse(value: str) -> float:
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {'whole ' if integer else ''}number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return number

    return parse


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


def limits_from(args: argparse.Namespace, current: Limits | None = None) -> Limits:
    """The limits the options give (``none`` removes one), on top of ``current``; CommandError when bad."""
    values = {}
    for name in LIMIT_FIELDS:
        given = getattr(args, name)
        values[name] = getattr(current, name, None) if given is None else None if given == "none" else given
    try:
        return Limits(**check_limits(values))
    except InvalidLimits as exc:
        raise CommandError(str(exc)) from None
