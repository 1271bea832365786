"""The entry point of ``riceball``: the parser of every command, and running one."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import asyncpg
import orjson

from riceball_proxy import __version__
from riceball_proxy.cli import admins, assistants, config, keys, plugins, providers, serve
from riceball_proxy.cli.output import CommandError
from riceball_proxy.logs import configure_logging
from riceball_proxy.settings import Settings, SettingsError

#: The nouns, in the order ``riceball --help`` lists their commands.
NOUNS = (serve, config, admins, providers, assistants, keys, plugins)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (the usage is for ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Commands:
    """Where each noun module adds its commands: ``command(name, run, help)`` at the top level or in a
    ``noun(name, help)``'s group; every command takes ``--json``."""

    def __init__(self, parser: argparse.ArgumentParser, json_flag: argparse.ArgumentParser):
        self.json_flag = json_flag
        self.top = parser.add_subparsers(title="commands", metavar="COMMAND")

    def noun(self, name: str, help: str):
        return self.top.add_parser(name, help=help).add_subparsers(title=f"{name} commands", metavar="COMMAND",
                                                                    required=True)

    def command(self, name: str, run: Callable, help: str, group=None) -> argparse.ArgumentParser:
        sub = (group or self.top).add_parser(name, help=help, description=help, parents=[self.json_flag])
        sub.set_defaults(command=name, run=run)
        return sub


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    # --json is accepted both before the command and after it; SUPPRESS keeps either from resetting the other.
    json_flag = Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = Parser(prog="riceball", description="RiceBall gateway", parents=[json_flag])
    parser.add_argument("--version", action="version", version=f"riceball {__version__}")
    parser.set_defaults(command=None)
    commands = Commands(parser, json_flag)
    for noun in NOUNS:
        noun.add_commands(commands)
    return parser


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
        data = getattr(exc, "data", None)
        if args.json and data:
            sys.stdout.write(orjson.dumps({"error": str(exc), **data}, default=str).decode() + "\n")
        return 2
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"riceball: error: database unavailable: {exc}", file=sys.stderr)
        return 1
