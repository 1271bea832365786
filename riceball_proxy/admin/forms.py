"""Reading admin forms: what was typed, in a spec's shape, and each problem put beside its field.

A form's handler gathers the fields into the data of a spec (``riceball_proxy.specs``): only the shapes
are the form's (a JSON text, a line per stop sequence, ``3, 15`` for two prices); the spec checks the
values, and ``services`` what needs the database. :meth:`Form.add` puts each problem beside its field
and the page lists them all at the top (``error_summary`` in _forms.html). Nothing the admin typed is
lost.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from riceball_proxy.limits import Limits
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

    def errors_in_order(self) -> dict[str, str]:
        """The errors in the order of their fields on the page (the order the browser sent them in),
        those of no field last."""
        order = {name: n for n, name in enumerate(self.data)}
        return dict(sorted(self.errors.items(), key=lambda item: order.get(item[0], len(order))))

    def values(self) -> dict[str, str]:
        """What was submitted, to fill the form in again."""
        return {key: value for key, value in self.data.items() if isinstance(value, str)}


def limit_field(path: str) -> str | None:
    """The form field of a limit's path (``limits.rpm``: ``rpm``), or None for another path."""
    return path.removeprefix("limits.") if path.startswith("limits.") else None


def field_text(value: Any) -> str:
    """A stored value as a form field shows it: ``0.7``, ``60``, an amount without trailing zeros."""
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value.normalize():f}" if isinstance(value, Decimal) else str(value)


def limit_values(limits: Limits) -> dict[str, str]:
    """A key's or an assistant's limits as the form's fields show them."""
    values = {name: field_text(getattr(limits, name)) for name in ("rpm", "tpm", "max_parallel", "budget_tokens",
                                                                   "budget_usd") if getattr(limits, name) is not None}
    values["budget_period"] = limits.budget_period
    return values

