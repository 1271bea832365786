"""``admin``: the admin panel's accounts."""
from __future__ import annotations

import argparse

from riceball_proxy import crypto
from riceball_proxy.cli import lookup, options
from riceball_proxy.cli.output import (
    CommandError,
    emit,
    read_stdin_secret,
    run_db,
)
from riceball_proxy.crypto import MIN_PASSWORD_LENGTH
from riceball_proxy.db import admins
from riceball_proxy.settings import Settings


def add_commands(cli) -> None:
    admin = cli.noun("admin", "manage admin accounts")
    create = cli.command("create", cmd_admin_create, "create an admin account", admin)
    create.add_argument("--username", required=True, type=options.name)
    create.add_argument("--password-stdin", action="store_true", required=True,
                        help="read the password from standard input")
    password = cli.command("password", cmd_admin_password, "set an admin's password (their sessions end)", admin)
    password.add_argument("--username", required=True, type=options.name)
    password.add_argument("--password-stdin", action="store_true", required=True,
                          help="read the new password from standard input")
    delete = cli.command("delete", cmd_admin_delete, "delete an admin account (their sessions end)", admin)
    delete.add_argument("--username", required=True, type=options.name)


def _new_password_hash() -> str:
    """The argon2id hash of a password read from standard input (CommandError when it is too short)."""
    password = read_stdin_secret("password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    return crypto.hash_password(password)


def cmd_admin_create(args: argparse.Namespace, settings: Settings) -> int:
    password_hash = _new_password_hash()

    async def work(pool):
        try:
            return await admins.create(pool, args.username, password_hash)
        except admins.UsernameTaken as exc:
            raise CommandError(str(exc)) from None

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username, "created_at": admin.created_at},
         f"admin {admin.username!r} created")
    return 0


def cmd_admin_password(args: argparse.Namespace, settings: Settings) -> int:
    password_hash = _new_password_hash()

    async def work(pool):
        admin = await lookup.admin(pool, args.username)
        await admins.set_password(pool, admin.id, password_hash)
        return admin

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username},
         f"password of {admin.username!r} changed; their sessions have ended")
    return 0


def cmd_admin_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        admin = await lookup.admin(pool, args.username)
        await admins.delete(pool, admin.id)
        return admin

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username, "deleted": True},
         f"admin {admin.username!r} deleted; their sessions have ended")
    return 0
