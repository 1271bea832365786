"""One log line per finished API call: status, latency, time to first token and tokens."""
from __future__ import annotations

import logging

from riceball_proxy import hookimpl

logger = logging.getLogger("riceball.requests")


@hookimpl(trylast=True)
def riceball_request_finished(ctx, outcome):
    if not logger.isEnabledFor(logging.INFO):
        return
    usage = outcome.usage
    logger.info(
        "%s assistant=%s key=%s stream=%s status=%s%s latency=%.1fms ttft=%s tokens=%s/%s",
        ctx.request_id,
        ctx.assistant.id if ctx.assistant else "-",
        ctx.principal.key_id if ctx.principal else "-",
        ctx.stream,
        outcome.status,
        f" error={outcome.error_type}" if outcome.error_type else "",
        outcome.latency_ms,
        "-" if outcome.ttft_ms is None else f"{outcome.ttft_ms:.1f}ms",
        usage.prompt_tokens,
        usage.completion_tokens,
    )
