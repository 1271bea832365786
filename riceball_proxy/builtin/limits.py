"""Rate limits, concurrency limits and budgets on API keys and assistants (``riceball_proxy.limits``).

Replaceable: a plugin that disables this one (``RICEBALL_DISABLE_PLUGINS=riceball_proxy.builtin.limits``)
and implements ``riceball_admit_caller``, ``riceball_admit`` and ``riceball_settle`` brings its own policy.
"""
from __future__ import annotations

import logging

from riceball_proxy import appkeys, hookimpl
from riceball_proxy.db import usage_events
from riceball_proxy.limits.admission import Limiter
from riceball_proxy.limits.counters import Counters, MemoryCounters
from riceball_proxy.pricing import NANO

logger = logging.getLogger(__name__)


@hookimpl
def riceball_startup(app):
    settings = app[appkeys.SETTINGS]
    pool = app[appkeys.DATABASE].pool
    store = settings.limits_store
    if store == "redis":
        from riceball_proxy.limits.redis import RedisCounters
        counters: Counters = RedisCounters(settings.redis_url)
    elif store == "postgres":
        from riceball_proxy.limits.postgres import PostgresCounters
        counters = PostgresCounters(pool)
    else:
        counters = MemoryCounters()

    async def load_spent(scope, owner, since, db=None):
        usd, tokens = await usage_events.spent(db or pool, since=since, **{
            "api_key_id" if scope == "key" else "assistant_id": owner})
        return int(usd * NANO), tokens

    app[appkeys.LIMITER] = Limiter(counters, load_spent=load_spent, fail_open=settings.limits_fail == "open",
                                   metrics=app[appkeys.METRICS])
    logger.debug("limit counters: %s", counters.name)


@hookimpl
async def riceball_shutdown(app):
    limiter = app.get(appkeys.LIMITER)
    if limiter is not None:
        await limiter.close()


# Both hooks return a coroutine only when there is something to do: a call without limits costs no more.


@hookimpl(trylast=True)
def riceball_admit_caller(ctx):
    if (ctx.principal is not None and ctx.principal.limits and ctx.principal.limits.max_parallel) \
            or ctx.assistant.limits.max_parallel:
        return ctx.app[appkeys.LIMITER].admit_caller(ctx)
    return None


@hookimpl(trylast=True)
def riceball_admit(ctx):
    if (ctx.principal is not None and ctx.principal.limits) or ctx.assistant.limits:
        return ctx.app[appkeys.LIMITER].admit(ctx)
    return None


@hookimpl(trylast=True)
def riceball_settle(ctx, outcome):
    if "limits" in ctx.stash:
        return ctx.app[appkeys.LIMITER].settle(ctx, outcome)
    return None
