"""Records one usage row per API call, written in batches off the request path (``riceball_proxy.usage``)."""
from __future__ import annotations

from riceball_proxy import appkeys, hookimpl
from riceball_proxy.db.usage_events import UsageEvent
from riceball_proxy.usage import UsageRecorder


@hookimpl
def riceball_startup(app):
    settings = app[appkeys.SETTINGS]
    recorder = UsageRecorder(
        app[appkeys.DATABASE].pool,
        settings.data_dir,
        flush_interval=settings.usage_flush_interval,
        batch_size=settings.usage_batch_size,
        max_buffer=settings.usage_max_buffer,
        dead_letters=app[appkeys.METRICS].usage_dead_letter_rows.inc,
    )
    app[appkeys.USAGE_RECORDER] = recorder
    recorder.start()


@hookimpl
async def riceball_shutdown(app):
    recorder = app.get(appkeys.USAGE_RECORDER)
    if recorder is not None:
        await recorder.close()


@hookimpl
def riceball_request_finished(ctx, outcome):
    recorder = ctx.app.get(appkeys.USAGE_RECORDER) if ctx.app is not None else None
    if recorder is None:
        return
    usage = outcome.usage
    recorder.record(UsageEvent(
        created_at=ctx.received_at,
        request_id=ctx.request_id,
        status=outcome.status,
        api_key_id=ctx.principal.key_id if ctx.principal else None,
        assistant_id=ctx.assistant.id if ctx.assistant else None,
        provider_id=ctx.provider.id if ctx.provider else None,
        upstream_model=ctx.body.get("model") or (ctx.assistant.model if ctx.assistant else None),
        stream=ctx.stream,
        error_type=outcome.error_type,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        usage_invalid=usage.invalid,
        usage_estimated=usage.estimated,
        cost_usd=outcome.cost_usd,
        attempts=ctx.attempts or None,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
        api=ctx.dialect.name if ctx.dialect is not None else "chat",
        client_addr=ctx.client_addr,
        source="api" if ctx.principal is None or ctx.principal.admin_id is None else "playground",
        admin_id=ctx.principal.admin_id if ctx.principal else None,
    ))
