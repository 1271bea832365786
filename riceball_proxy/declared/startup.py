"""The configuration file a gateway applies as it starts (``RICEBALL_CONFIG_FILE``), checked first."""
from __future__ import annotations

import asyncio

from riceball_proxy import crypto
from riceball_proxy.db import open_database
from riceball_proxy.declared.apply import apply
from riceball_proxy.declared.schema import load, resolve_secrets
from riceball_proxy.plugins import make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings


def check_start_up_file(settings: Settings) -> None:
    """Before ``serve`` starts anything: RICEBALL_CONFIG_FILE read, checked and tried in a rolled-back
    transaction, so that a file that cannot be applied stops the start with its problems
    (``ConfigFileError``)."""
    if settings.config_file is None:
        return
    config = load(settings.config_file)
    secrets, _ = resolve_secrets(config)
    types = provider_types(make_plugin_manager(settings))
    box = crypto.load_secret_box(settings)

    async def dry_run():
        async with open_database(settings, min_size=1, max_size=2) as database:
            await apply(database.pool, config, secrets=secrets, secret_box=box, provider_types=types,
                        prune=settings.config_prune, dry_run=True)

    asyncio.run(dry_run())
