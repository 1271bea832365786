"""Counts every finished API call into the Prometheus metrics (``riceball_proxy.metrics``)."""
from __future__ import annotations

from riceball_proxy import appkeys, hookimpl


@hookimpl
def riceball_request_finished(ctx, outcome):
    metrics = ctx.app.get(appkeys.METRICS) if ctx.app is not None else None
    if metrics is not None:
        metrics.observe(ctx, outcome)
