"""``plugins``: what is installed, and the hooks each implements."""
from __future__ import annotations

import argparse

from riceball_proxy.cli.output import (
    emit,
    table,
)
from riceball_proxy.plugins import describe_plugins, make_plugin_manager
from riceball_proxy.settings import Settings


def add_commands(cli) -> None:
    cli.command("plugins", cmd_plugins, "list installed plugins and the hooks each implements")


def cmd_plugins(args: argparse.Namespace, settings: Settings) -> int:
    rows = describe_plugins(make_plugin_manager(settings))
    text_rows = [dict(row, version=row["version"] or "-", hooks=", ".join(row["hooks"])) for row in rows]
    emit(args, {"plugins": rows}, table(text_rows, ["name", "version", "hooks"], "no plugins"))
    return 0
