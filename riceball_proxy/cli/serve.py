"""``serve``, ``migrate`` and ``reencrypt``: running the gateway and keeping its database."""
from __future__ import annotations

import argparse

from riceball_proxy import crypto
from riceball_proxy.cli import options
from riceball_proxy.cli.output import (
    CommandError,
    emit,
    file_error,
    run_db,
    table,
)
from riceball_proxy.declared.schema import ConfigFileError
from riceball_proxy.declared.startup import check_start_up_file
from riceball_proxy.settings import Settings


def add_commands(cli) -> None:
    serve = cli.command("serve", cmd_serve, "run the gateway")
    serve.add_argument("--host", help="address to listen on (default: RICEBALL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=options.port, help="port to listen on (default: RICEBALL_PORT or 8000)")
    serve.add_argument("--workers", type=options.positive_int, default=1, help="worker processes sharing the port")
    cli.command("migrate", cmd_migrate, "apply pending database migrations")
    cli.command("reencrypt", cmd_reencrypt,
                "encrypt every stored provider API key anew under the first key of RICEBALL_SECRET_KEY")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from riceball_proxy.server import serve

    settings = settings.replace(host=args.host or settings.host, port=args.port or settings.port)
    try:
        check_start_up_file(settings)
    except ConfigFileError as exc:
        raise file_error(exc, f"RICEBALL_CONFIG_FILE ({settings.config_file})") from None
    serve(settings, workers=args.workers)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):  # opening the database applied what was pending; this reports the state
        rows = await pool.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        return [dict(row) for row in rows]

    rows = run_db(settings, work)
    emit(args, {"migrations": rows}, table(rows, ["version", "name", "applied_at"], "no migrations"))
    return 0


def cmd_reencrypt(args: argparse.Namespace, settings: Settings) -> int:
    box = crypto.load_secret_box(settings)

    async def work(pool):
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT id, name, api_key_encrypted FROM providers "
                                    "WHERE api_key_encrypted IS NOT NULL FOR UPDATE")
            unreadable = []
            for row in rows:
                try:
                    token = box.rotate(row["api_key_encrypted"])
                except ValueError:
                    unreadable.append(row["name"])
                    continue
                await conn.execute("UPDATE providers SET api_key_encrypted = $2 WHERE id = $1", row["id"], token)
            if unreadable:
                raise CommandError(f"no key of RICEBALL_SECRET_KEY opens the API key of {', '.join(unreadable)}; "
                                   "nothing was changed")
            return len(rows)

    count = run_db(settings, work)
    emit(args, {"reencrypted": count},
         f"{count} provider API key{'s' if count != 1 else ''} now under the first key of RICEBALL_SECRET_KEY")
    return 0
