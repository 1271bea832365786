"""What every command shares: its errors (one line, exit status 2), its output (text, or JSON with
``--json``; tables), and a database opened for one command."""
from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from riceball_proxy.db import open_database
from riceball_proxy.declared.schema import ConfigFileError
from riceball_proxy.limits import Limits
from riceball_proxy.settings import Settings
from riceball_proxy.specs import SpecError


class CommandError(Exception):
    """A mistake in what the user asked; printed as one line, exit status 2.

    ``data`` goes with it under ``--json`` (the id of the existing object a name clashes with...).
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.data = data


def spec_error(exc: SpecError, option_of: Callable[[str], str], existing: Any = None) -> CommandError:
    """A spec's problems as ``--option: message`` lines (``option_of`` a field path); under ``--json``
    they are ``problems``, with the ``id`` of ``existing``, the object whose name was asked for."""
    lines = [f"{option_of(path)}: {message}" for path, message in exc.problems]
    text = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)
    return CommandError(text, {"problems": lines} | ({"id": existing.id} if existing is not None else {}))


async def refusal(exc: SpecError, option_of: Callable[[str], str],
                  named: Callable[[], Awaitable[Any]]) -> CommandError:
    """``spec_error`` for a save the services refused; when the name was the problem, ``named()`` finds
    the object that has it."""
    taken = any(path == "name" for path, _ in exc.problems)
    return spec_error(exc, option_of, await named() if taken else None)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_json_default).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (uuid.UUID, decimal.Decimal)):  # asyncpg's own UUID subclass; exact amounts as text
        return str(value)
    if isinstance(value, (frozenset, set, tuple)):
        return sorted(value, key=str)
    raise TypeError


def table(rows: list[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    """A plain-text table of ``rows``."""
    if not rows:
        return empty
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def limits_text(limits: Limits) -> str:
    """Limits as people read them: ``10 rpm, 2 at once, $50/month``."""
    parts = []
    if limits.rpm:
        parts.append(f"{limits.rpm} rpm")
    if limits.tpm:
        parts.append(f"{limits.tpm} tpm")
    if limits.max_parallel:
        parts.append(f"{limits.max_parallel} at once")
    per = "" if limits.budget_period == "total" else f"/{limits.budget_period}"
    if limits.budget_usd is not None:
        parts.append(f"${limits.budget_usd:,.2f}{per}")
    if limits.budget_tokens is not None:
        parts.append(f"{limits.budget_tokens:,} tokens{per}")
    return ", ".join(parts) or "none"


def run_db(settings: Settings, work: Callable) -> Any:
    """Open the database (embedded when no URL is set), return ``await work(pool)``, close it."""

    async def runner():
        async with open_database(settings, min_size=1, max_size=2) as database:
            return await work(database.pool)

    return asyncio.run(runner())


def read_stdin_secret(what: str) -> str:
    """One secret from standard input (its first line, trimmed); never echoed."""
    value = sys.stdin.readline().strip()
    if not value:
        raise CommandError(f"no {what} on standard input")
    return value


def file_error(exc: ConfigFileError, path: Any) -> CommandError:
    """The error that reports a file's problems, one a line, each with its path in the file."""
    lines = "\n".join(f"  {problem}" for problem in exc.problems)
    return CommandError(f"{path} cannot be applied:\n{lines}", {"problems": exc.problems})
