"""Reading admin forms: typed values out, one error message per bad field, nothing the admin typed lost."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from riceball_proxy.limits import MAX_BUDGET_USD, PERIODS, InvalidLimits, Limits, check_limits


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

    def values(self) -> dict[str, str]:
        """What was submitted, to fill the form in again."""
        return {key: value for key, value in self.data.items() if isinstance(value, str)}


def limit_values(limits: Limits) -> dict[str, str]:
    """A key's or an assistant's limits as the form's fields show them."""
    values = {name: str(getattr(limits, name)) for name in ("rpm", "tpm", "max_parallel", "budget_tokens")
              if getattr(limits, name) is not None}
    if limits.budget_usd is not None:
        values["budget_usd"] = f"{limits.budget_usd.normalize():f}"
    values["budget_period"] = limits.budget_period
    return values
