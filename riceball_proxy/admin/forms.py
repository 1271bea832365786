"""Reading admin forms: what was typed, in a spec's shape, and each problem put beside its field.

A form's handler gathers the fields into the data of a spec (``riceball_proxy.specs``): only the shapes
are the form's (a JSON text, a line per stop sequence, ``3, 15`` for two prices); the spec checks the
values, and ``services`` what needs the database. :meth:`Form.add` puts each problem beside its field
and the page lists them all at the top (``error_summary`` in _forms.html). Nothing the admin typed is
lost.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from riceball_proxy.limits import MAX_BUDGET_USD, PERIODS, InvalidLimits, Limits, check_limits
from riceball_proxy.specs import SpecError


class Form:
    """Read fields from a submitted form; every problem is kept in ``errors`` by field name."""

    def __init__(self, data: Mapping[str, Any]):
        self.data = data
        self.errors: dict[str, str] = {}

    @property
    def valid(self) -> bool:
        return not self.errors

    def raw(self, name: str) -> str:
        value = self.data.get(name, "")
        return value if isinstance(value, str) else ""

    def text(self, name: str, *, required: bool = False, max_length: int = 200, strip: bool = True) -> str:
        value = self.raw(name)
        if strip:
            value = value.strip()
        if required and not value:
            self.errors[name] = "This field is required."
        elif len(value) > max_length:
            self.errors[name] = f"At most {max_length} characters."
        return value

    def url(self, name: str) -> str:
        value = self.text(name, required=True, max_length=2000)
        if value and not re.match(r"^https?://[^\s/]+", value):
            self.errors[name] = "Enter an http:// or https:// URL."
        return value.rstrip("/")

    def number(self, name: str, *, minimum: float | None = None, maximum: float | None = None,
               integer: bool = False, exclusive_minimum: bool = False) -> float | int | None:
        value = self.raw(name).strip()
        if not value:
            return None
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            self.errors[name] = "Enter a whole number." if integer else "Enter a number."
            return None
        if isinstance(number, float) and not math.isfinite(number):
            self.errors[name] = "Enter a finite number."
            return None
        too_low = minimum is not None and (number <= minimum if exclusive_minimum else number < minimum)
        if too_low or (maximum is not None and number > maximum):
            low = f"more than {minimum}" if exclusive_minimum else f"at least {minimum}"
            self.errors[name] = f"Enter a value {low}" + (f" and at most {maximum}." if maximum is not None else ".")
            return None
        return number

    def choice(self, name: str, choices: Iterable[str]) -> str:
        value = self.raw(name)
        if value not in set(choices):
            self.errors[name] = "Choose one of the options."
        return value

    def flag(self, name: str) -> bool:
        return name in self.data

    def lines(self, name: str) -> list[str]:
        return [line.strip() for line in self.raw(name).splitlines() if line.strip()]

    def json_object(self, name: str) -> dict[str, Any]:
        value = self.raw(name).strip()
        if not value:
            return {}
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            self.errors[name] = f"Not valid JSON: {exc}."
            return {}
        if not isinstance(parsed, dict):
            self.errors[name] = 'Enter a JSON object, like {"top_k": 40}.'
            return {}
        return parsed

    def amount(self, name: str, *, maximum: Decimal = Decimal(10**9)) -> Decimal | None:
        """An amount of USD (exact), 0 or more; None when empty."""
        value = self.raw(name).strip().lstrip("$")
        if not value:
            return None
        try:
            amount = Decimal(value)
        except InvalidOperation:
            self.errors[name] = "Enter an amount, like 2.50."
            return None
        if not amount.is_finite() or amount < 0 or amount > maximum:
            self.errors[name] = f"Enter an amount from 0 to {maximum:,}."
            return None
        return amount

    def prices(self, name: str):
        """Prices written ``input, output[, cache read[, cache write]]`` (USD per million tokens), as the
        four an assistant or target takes; empty: none set."""
        value = self.raw(name).strip()
        if not value:
            return (None, None, None, None)
        amounts = []
        for part in value.replace("$", "").split(","):
            try:
                amount = Decimal(part.strip()) if part.strip() else None
            except InvalidOperation:
                amount = Decimal(-1)
            if amount is not None and (not amount.is_finite() or amount < 0 or amount >= 10**9):
                self.errors[name] = "Enter input, output and optionally cache read and cache write prices, like 3, 15."
                return (None, None, None, None)
            amounts.append(amount)
        if not 2 <= len(amounts) <= 4 or None in amounts[:2]:
            self.errors[name] = "Enter input, output and optionally cache read and cache write prices, like 3, 15."
            return (None, None, None, None)
        return tuple(amounts + [None] * (4 - len(amounts)))

    def limits(self) -> Limits:
        """The limit fields (``rpm``... ``budget_period``, as ``limit_fields`` in _forms.html renders them)."""
        values: dict[str, Any] = {name: self.number(name, minimum=1, maximum=2**31 - 1, integer=True)
                                  for name in ("rpm", "tpm", "max_parallel")}
        values["budget_tokens"] = self.number("budget_tokens", minimum=1, maximum=2**62, integer=True)
        values["budget_usd"] = self.amount("budget_usd", maximum=MAX_BUDGET_USD)
        if values["budget_usd"] == 0:
            self.errors["budget_usd"] = "Enter an amount above 0, or leave it empty for no budget."
        values["budget_period"] = self.choice("budget_period", PERIODS) if self.raw("budget_period") else "month"
        try:
            return Limits(**check_limits(values))
        except InvalidLimits:  # every field was checked above; keep the form's own messages
            return Limits()

    def given(self, name: str, *, strip: bool = True) -> str | None:
        """The field's text, for a spec to check; None when it is empty (the spec's default applies)."""
        value = self.raw(name).strip() if strip else self.raw(name)
        return value or None

    def amount_text(self, name: str) -> str | None:
        """An amount as typed, without a leading ``$``; None when empty."""
        value = self.raw(name).strip().lstrip("$").strip()
        return value or None

    def price_data(self, name: str) -> dict[str, str] | None:
        """Prices written ``input, output[, cache read[, cache write]]`` (USD per million tokens) as a
        PricesSpec's data; None when empty."""
        value = self.raw(name).strip()
        if not value:
            return None
        parts = [part.strip().lstrip("$").strip() for part in value.split(",")]
        if len(parts) > 4:
            self.errors[name] = "Enter input, output and optionally cache read and cache write prices, like 3, 15."
            return None
        return {field: part for field, part in zip(("input", "output", "cached_input", "cache_write"), parts) if part}

    def limit_data(self) -> dict[str, Any]:
        """The limit fields (``limit_fields`` in _forms.html) as a LimitsSpec's data."""
        data = {name: self.given(name) for name in ("rpm", "tpm", "max_parallel", "budget_tokens")}
        data["budget_usd"] = self.amount_text("budget_usd")
        data["budget_period"] = self.given("budget_period")
        return {name: value for name, value in data.items() if value is not None}

    def add(self, error: SpecError, field_of: Callable[[str], str] = lambda path: path) -> None:
        """Each of a spec's problems beside the form field ``field_of`` its path (the first per field);
        a problem of the whole object under ``""``, shown in the summary only."""
        for path, message in error.problems:
            self.errors.setdefault(field_of(path), message[:1].upper() + message[1:] + ".")

    def values(self) -> dict[str, str]:
        """What was submitted, to fill the form in again."""
        return {key: value for key, value in self.data.items() if isinstance(value, str)}


def limit_field(path: str) -> str | None:
    """The form field of a limit's path (``limits.rpm``: ``rpm``), or None for another path."""
    return path.removeprefix("limits.") if path.startswith("limits.") else None


def limit_values(limits: Limits) -> dict[str, str]:
    """A key's or an assistant's limits as the form's fields show them."""
    values = {name: str(getattr(limits, name)) for name in ("rpm", "tpm", "max_parallel", "budget_tokens")
              if getattr(limits, name) is not None}
    if limits.budget_usd is not None:
        values["budget_usd"] = f"{limits.budget_usd.normalize():f}"
    values["budget_period"] = limits.budget_period
    return values

