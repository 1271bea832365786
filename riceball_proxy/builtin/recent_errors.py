"""Keeps this process's most recent failed API calls in memory, for the admin dashboard."""
from __future__ import annotations

import collections
import time

from riceball_proxy import appkeys, hookimpl

#: How many failed calls are kept.
KEEP = 50


@hookimpl
def riceball_startup(app):
    app[appkeys.RECENT_ERRORS] = collections.deque(maxlen=KEEP)


@hookimpl
def riceball_request_finished(ctx, outcome):
    if outcome.status < 400 or ctx.app is None:
        return
    errors = ctx.app.get(appkeys.RECENT_ERRORS)
    if errors is not None:
        errors.append({
            "at": time.time(),
            "request_id": ctx.request_id,
            "status": outcome.status,
            "error_type": outcome.error_type,
            "assistant_id": ctx.assistant.id if ctx.assistant else None,
            "assistant_name": ctx.assistant.name if ctx.assistant else None,
            "key_name": ctx.principal.name if ctx.principal else None,
        })
