"""The ``riceball`` command: serve the gateway and manage it from a shell.

Every command accepts ``--json`` (before or after the command name) for machine-readable output.
Mistakes in what was asked (a bad argument, an unknown provider, a taken name) print one line on
stderr and exit 2; a failure to reach the database exits 1.
"""
from __future__ import annotations

import argparse
import datetime
import decimal
import logging
import re
import sys
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import orjson

from riceball_proxy import __version__
from riceball_proxy.commands import (
    CommandError,
    cmd_admin_create,
    cmd_admin_delete,
    cmd_admin_password,
    cmd_assistant_add,
    cmd_assistant_delete,
    cmd_assistant_list,
    cmd_assistant_show,
    cmd_assistant_update,
    cmd_key_create,
    cmd_key_list,
    cmd_key_revoke,
    cmd_key_show,
    cmd_key_update,
    cmd_migrate,
    cmd_plugins,
    cmd_provider_add,
    cmd_provider_delete,
    cmd_provider_list,
    cmd_provider_test,
    cmd_provider_update,
    cmd_reencrypt,
    cmd_serve,
)
from riceball_proxy.db import providers
from riceball_proxy.db.assistants import EFFORTS
from riceball_proxy.declared.commands import cmd_apply, cmd_export
from riceball_proxy.limits import PERIODS
from riceball_proxy.logs import configure_logging
from riceball_proxy.settings import Settings, SettingsError

logger = logging.getLogger("riceball")

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level if args.command == "serve" else "WARNING", settings.log_format)
        return args.run(args, settings) or 0
    except (CommandError, SettingsError) as exc:
        print(f"riceball: error: {exc}", file=sys.stderr)
        if args.json and getattr(exc, "data", None):
            sys.stdout.write(orjson.dumps({"error": str(exc), **exc.data}, default=str).decode() + "\n")
        return 2
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"riceball: error: database unavailable: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    # --json is accepted both before the command and after it; SUPPRESS keeps either from resetting the other.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    parser = argparse.ArgumentParser(prog="riceball", description="RiceBall gateway", parents=[json_flag])
    parser.add_argument("--version", action="version", version=f"riceball {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(group, name: str, run: Callable, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help, parents=[json_flag])
        sub.set_defaults(command=name, run=run)
        return sub

    serve = command(commands, "serve", cmd_serve, "run the gateway")
    serve.add_argument("--host", help="address to listen on (default: RICEBALL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: RICEBALL_PORT or 8000)")
    serve.add_argument("--workers", type=_positive_int, default=1, help="worker processes sharing the port")

    command(commands, "migrate", cmd_migrate, "apply pending database migrations")

    apply = command(commands, "apply", cmd_apply,
                    "make the providers, assistants and API keys match a configuration file")
    apply.add_argument("-f", "--file", required=True, metavar="FILE", help="the file (YAML or JSON; - for stdin)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="also delete what the file does not name (keys are revoked)")
    apply.add_argument("--yes", action="store_true", help="--prune without asking")
    command(commands, "export", cmd_export, "print the configuration as a file that apply accepts")
    command(commands, "reencrypt", cmd_reencrypt,
            "encrypt every stored provider API key anew under the first key of RICEBALL_SECRET_KEY")

    admin = commands.add_parser("admin", help="manage admin accounts").add_subparsers(
        title="admin commands", metavar="COMMAND", required=True
    )
    admin_create = command(admin, "create", cmd_admin_create, "create an admin account")
    admin_create.add_argument("--username", required=True, type=_name)
    admin_create.add_argument("--password-stdin", action="store_true", required=True,
                              help="read the password from standard input")
    admin_password = command(admin, "password", cmd_admin_password,
                             "set an admin's password (their sessions end)")
    admin_password.add_argument("--username", required=True, type=_name)
    admin_password.add_argument("--password-stdin", action="store_true", required=True,
                                help="read the new password from standard input")
    admin_delete = command(admin, "delete", cmd_admin_delete, "delete an admin account (their sessions end)")
    admin_delete.add_argument("--username", required=True, type=_name)

    provider = commands.add_parser("provider", help="manage upstream providers").add_subparsers(
        title="provider commands", metavar="COMMAND", required=True
    )
    provider_add = command(provider, "add", cmd_provider_add, "add an upstream provider")
    _provider_options(provider_add, update=False)
    provider_update = command(provider, "update", cmd_provider_update,
                              "change a provider (what is not given stays as it is)")
    provider_update.add_argument("provider", metavar="NAME_OR_ID")
    _provider_options(provider_update, update=True)
    command(provider, "list", cmd_provider_list, "list providers")
    provider_delete = command(provider, "delete", cmd_provider_delete, "delete a provider no assistant uses")
    provider_delete.add_argument("provider", metavar="NAME_OR_ID")
    provider_test = command(provider, "test", cmd_provider_test, "list the upstream's models (a connection test)")
    provider_test.add_argument("provider", metavar="NAME_OR_ID")

    assistant = commands.add_parser("assistant", help="manage assistants").add_subparsers(
        title="assistant commands", metavar="COMMAND", required=True
    )
    assistant_add = command(assistant, "add", cmd_assistant_add, "add an assistant")
    _assistant_options(assistant_add, update=False)
    assistant_update = command(assistant, "update", cmd_assistant_update,
                               "change an assistant (what is not given stays as it is)")
    assistant_update.add_argument("id", type=_uuid, metavar="ID")
    _assistant_options(assistant_update, update=True)
    command(assistant, "list", cmd_assistant_list, "list assistants")
    assistant_show = command(assistant, "show", cmd_assistant_show, "show an assistant's whole configuration")
    assistant_show.add_argument("id", type=_uuid, metavar="ID")
    assistant_delete = command(assistant, "delete", cmd_assistant_delete, "delete an assistant")
    assistant_delete.add_argument("id", type=_uuid, metavar="ID")

    key = commands.add_parser("key", help="manage API keys").add_subparsers(
        title="key commands", metavar="COMMAND", required=True
    )
    key_create = command(key, "create", cmd_key_create, "create an API key (printed once)")
    key_create.add_argument("--name", required=True, type=_name)
    key_create.add_argument("--assistant", action="append", type=_uuid, metavar="ID",
                            help="limit the key to this assistant (repeatable; default: every assistant)")
    key_create.add_argument("--expires-in", type=parse_duration, metavar="DURATION",
                            help="e.g. 30d, 12h, 1w2d")
    _limit_options(key_create, update=False)
    key_update = command(key, "update", cmd_key_update,
                         "change a key's name, scope, expiry or limits (what is not given stays as it is)")
    key_update.add_argument("key", metavar="ID_OR_PREFIX")
    key_update.add_argument("--name", type=_name)
    scope = key_update.add_mutually_exclusive_group()
    scope.add_argument("--assistant", action="append", type=_uuid, metavar="ID",
                       help="limit the key to this assistant (repeatable; replaces the key's list)")
    scope.add_argument("--all-assistants", action="store_true", help="let the key call every assistant")
    expiry = key_update.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=parse_duration, metavar="DURATION", help="from now: e.g. 30d, 12h")
    expiry.add_argument("--no-expiry", action="store_true", help="the key never expires")
    _limit_options(key_update, update=True)
    command(key, "list", cmd_key_list, "list API keys (never the keys themselves)")
    key_show = command(key, "show", cmd_key_show, "show an API key's details (never the key itself)")
    key_show.add_argument("key", metavar="ID_OR_PREFIX")
    key_revoke = command(key, "revoke", cmd_key_revoke, "revoke an API key")
    key_revoke.add_argument("key", metavar="ID_OR_PREFIX")

    command(commands, "plugins", cmd_plugins, "list installed plugins and the hooks each implements")
    return parser


# --- argument types ---------------------------------------------------------------------------------


def _provider_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The options of ``provider add``; for ``update`` none is required and none has a default."""
    def default(value):
        return None if update else value

    parser.add_argument("--name", required=not update, type=_name)
    parser.add_argument("--type", required=not update, help="a provider type offered by the plugins (e.g. openai)")
    parser.add_argument("--base-url", required=not update, type=_url)
    parser.add_argument("--api-key-stdin", action="store_true",
                        help="read the upstream API key from stdin" + (" (replaces the stored one)" if update else ""))
    if update:
        parser.add_argument("--clear-api-key", action="store_true", help="remove the stored API key")
    parser.add_argument("--connect-timeout", type=_positive_float, default=default(10.0), help="seconds (default 10)")
    parser.add_argument("--read-timeout", type=_positive_float, default=default(300.0), help="seconds (default 300)")
    parser.add_argument("--max-connections", type=_between(1, 100_000, integer=True),
                        default=default(providers.DEFAULT_MAX_CONNECTIONS),
                        help=f"upstream calls at once (default {providers.DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--queue-timeout", type=_between(0, 3600), default=default(providers.DEFAULT_QUEUE_TIMEOUT),
                        help=f"seconds a call waits for a free turn before a 503 "
                             f"(default {providers.DEFAULT_QUEUE_TIMEOUT:g})")


def _assistant_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The options of ``assistant add``; for ``update`` none is required and none has a default."""
    parser.add_argument("--name", required=not update, type=_name)
    parser.add_argument("--provider", required=not update, help="the provider's name")
    parser.add_argument("--model", required=not update, type=_name, help="the upstream model")
    parser.add_argument("--system-prompt", default=None if update else "")
    parser.add_argument("--temperature", type=_between(0, 2))
    parser.add_argument("--top-p", type=_between(0, 1))
    parser.add_argument("--max-tokens", type=_between(1, 2**31 - 1, integer=True))
    parser.add_argument("--reasoning-effort", choices=EFFORTS,
                        help="the default reasoning effort (each provider's thinking control; docs/providers.md)")
    parser.add_argument("--lock", action="append", default=None if update else [], metavar="PARAMETER",
                        help="make the assistant's value of a parameter win over the client's (repeatable"
                             + ("; given, it replaces the locks)" if update else ")"))
    parser.add_argument("--no-client-system", action="store_true", default=None if update else False,
                        help="drop system and developer messages sent by clients")
    parser.add_argument("--disabled", action="store_true", default=None if update else False,
                        help="disable it" if update else "create it disabled")
    parser.add_argument("--fallback", action="append", default=None if update else [], metavar="PROVIDER:MODEL",
                        help="a fallback target, tried in the order given when the provider fails before answering "
                             "(repeatable; PROVIDER is a name or an id" + ("; given, it replaces the list; "
                             "'none' removes them all)" if update else ")"))
    parser.add_argument("--deadline", type=_between(0.1, 3600), metavar="SECONDS",
                        help="time for all attempts of one call together (default 60)")
    parser.add_argument("--max-attempts", type=_between(1, 20, integer=True), metavar="N",
                        help="upstream calls one call may make, fallbacks included (default 3)")
    parser.add_argument("--expose-target", action="store_true", default=None if update else False,
                        help="answers name the provider and model that served them (x-riceball-provider, "
                             "x-riceball-model); off by default: they reveal the configuration")
    parser.add_argument("--auto-cache", action="store_true", default=None if update else False,
                        help="prompt-cache breakpoints on the system prompt and the last turn of calls that set "
                             "none (providers with explicit caching, such as Anthropic)")
    if update:
        parser.add_argument("--no-auto-cache", dest="auto_cache", action="store_false", default=None,
                            help="no automatic prompt-cache breakpoints")
        parser.add_argument("--hide-target", dest="expose_target", action="store_false", default=None,
                            help="answers do not name the provider and model that served them")
    _limit_options(parser, update=update)
    for name, what in (("input", "prompt"), ("output", "answer"), ("cached-input", "cached prompt (cache read)"),
                       ("cache-write", "prompt written to the cache (default 1.25 times the input price)")):
        parser.add_argument(f"--price-{name}", type=_price, metavar="USD_PER_M",
                            help=f"USD per million {what} tokens" + (" ('none' removes it)" if update else "")
                            + ("; without a price, genai-prices' for the model" if name == "input" else ""))
    if update:
        parser.add_argument("--client-system", dest="no_client_system", action="store_false", default=None,
                            help="keep the system and developer messages clients send")
        parser.add_argument("--enabled", dest="disabled", action="store_false", default=None, help="enable it")


#: ``none`` given to an option of ``update``: remove that limit or price.
NONE = "none"


def _limit_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """Rate limits, calls at once and budgets (docs/limits.md); for ``update``, ``none`` removes one."""
    removes = " ('none' removes it)" if update else ""
    parser.add_argument("--rpm", type=_limit(2**31 - 1), metavar="N", help="requests per minute" + removes)
    parser.add_argument("--tpm", type=_limit(2**31 - 1), metavar="N", help="tokens per minute" + removes)
    parser.add_argument("--max-parallel", type=_limit(2**31 - 1), metavar="N", help="calls at once" + removes)
    parser.add_argument("--budget-usd", type=_price, metavar="USD", help="spend per budget period, in USD" + removes)
    parser.add_argument("--budget-tokens", type=_limit(2**62), metavar="N", help="tokens per budget period" + removes)
    parser.add_argument("--budget-period", choices=PERIODS,
                        help="day, week or month (calendar, UTC) or total (never renews); default month")


def _limit(high: int) -> Callable[[str], int | str]:
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


def _price(value: str) -> decimal.Decimal | str:
    if value.strip().lower() == NONE:
        return NONE
    try:
        number = decimal.Decimal(value.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not an amount of USD (or 'none')") from None
    if not number.is_finite() or number < 0 or number >= 10**9:
        raise argparse.ArgumentTypeError("must be an amount of USD, 0 or more")
    return number


def _name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise argparse.ArgumentTypeError("must be 1 to 200 characters")
    return value


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _port(value: str) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise argparse.ArgumentTypeError("must be at most 65535")
    return port


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


def _between(low: float, high: float, *, integer: bool = False) -> Callable[[str], float]:
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


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an assistant id") from None


def parse_duration(value: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``1w2d``, ``90m``... as a timedelta (argparse type)."""
    text = value.strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30d, 12h or 1w2d")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0")
    return datetime.timedelta(seconds=seconds)
