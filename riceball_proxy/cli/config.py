"""``apply`` and ``export``: the configuration as a file (docs/configuration.md)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from riceball_proxy import crypto
from riceball_proxy.cli.output import (
    CommandError,
    emit,
    file_error,
    run_db,
)
from riceball_proxy.db import assistants, providers
from riceball_proxy.declared.apply import Outcome, all_problems, apply, references
from riceball_proxy.declared.export import dump, export, inline
from riceball_proxy.declared.schema import ConfigFileError, load, resolve_secrets
from riceball_proxy.plugins import make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings


def add_commands(cli) -> None:
    apply_ = cli.command("apply", cmd_apply, "make the providers, assistants and API keys match a configuration file")
    apply_.add_argument("-f", "--file", required=True, metavar="FILE", help="the file (YAML or JSON; - for stdin)")
    apply_.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply_.add_argument("--prune", action="store_true", help="also delete what the file does not name (keys are revoked)")
    apply_.add_argument("--yes", action="store_true", help="--prune without asking")
    cli.command("export", cmd_export, "print the configuration as a file that apply accepts")


_SIGNS = {"created": "+", "updated": "~", "deleted": "-"}


def cmd_apply(args: argparse.Namespace, settings: Settings) -> int:
    try:
        config = load(args.file)
        secrets, warnings = resolve_secrets(config)
    except ConfigFileError as exc:
        problems, data = exc.problems, exc.data
        if data is not None:  # the names it uses are checked too: every problem in one report
            problems = all_problems(problems + run_db(settings, lambda pool: _references(pool, data, args.prune)))
        raise file_error(ConfigFileError(problems), args.file) from None
    if not args.json:
        for warning in warnings:
            print(f"riceball: warning: {warning}", file=sys.stderr)
    types = provider_types(make_plugin_manager(settings))
    box = crypto.load_secret_box(settings)

    def run(dry_run: bool) -> Outcome:
        try:
            return run_db(settings, lambda pool: apply(pool, config, secrets=secrets, secret_box=box,
                                                       provider_types=types, prune=args.prune, dry_run=dry_run,
                                                       warnings=warnings))
        except ConfigFileError as exc:
            raise file_error(exc, args.file) from None

    if args.prune and not (args.yes or args.json or args.dry_run):
        doomed = run(dry_run=True).of("deleted")
        if doomed and not _confirmed(doomed):
            raise CommandError("--prune would delete " + ", ".join(f"{c.kind} {c.name!r}" for c in doomed)
                               + "; nothing was changed (add --yes to go ahead)")
    outcome = run(dry_run=args.dry_run)
    if not args.json:  # what applying found (those of the file alone were said above)
        for warning in outcome.warnings[len(warnings):]:
            print(f"riceball: warning: {warning}", file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(outcome.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(outcome_text(outcome) + "\n")
    return 0


async def _references(pool, data: dict, prune: bool) -> list[str]:
    stored_providers = {provider.name for provider in await providers.list_all(pool)}
    stored_assistants = {assistant.name for assistant in await assistants.list_all(pool)}
    return references(data, stored_providers, stored_assistants, prune=prune)[0]


def _confirmed(doomed) -> bool:
    if not sys.stdin.isatty():
        return False
    print("This deletes (keys are revoked):", file=sys.stderr)
    for change in doomed:
        print(f"  - {change.kind} {change.name}", file=sys.stderr)
    return input("Go ahead? [y/N] ").strip().lower() in ("y", "yes")


def outcome_text(outcome: Outcome) -> str:
    """What apply did (or would do), a line an object, unchanged ones counted."""
    lines = ["dry run: nothing was written"] if outcome.dry_run else []
    for change in outcome.changes:
        if change.action == "unchanged":
            continue
        line = f"{_SIGNS[change.action]} {change.kind} {change.name}"
        if change.fields:
            line += ": " + "; ".join(f"{name} {_value(old)} -> {_value(new)}" if old != "(changed)" else
                                     f"{name} changed" for name, old, new in change.fields)
        elif change.action == "deleted" and change.kind == "key":
            line += " (revoked)"
        lines.append(line)
    unchanged = len(outcome.of("unchanged"))
    lines.append(f"{unchanged} unchanged" if outcome.changed else f"nothing to change ({unchanged} unchanged)")
    created_keys = [change for change in outcome.changes if change.secret]
    if created_keys:
        lines.append("")
        lines += [f"key {change.name}: {change.secret}" for change in created_keys]
        lines.append("This is the only time these keys are shown: store them now.")
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A value as the file would write it (YAML, on one line)."""
    return "(none)" if value is None else inline(value)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    data, variables = run_db(settings, export)
    if args.json:
        emit(args, data, "")
    else:
        sys.stdout.write(dump(data))
    if variables:
        print(f"riceball: the file reads secrets (provider keys, URLs and parameters holding one) from "
              f"{', '.join(variables)}: set them before applying it", file=sys.stderr)
    return 0
