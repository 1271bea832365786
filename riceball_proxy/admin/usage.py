"""Usage: requests, tokens and errors over time, per assistant and per key, with filters and a CSV export."""
from __future__ import annotations

import csv
import datetime
import io
import uuid

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.admin.pages import render
from riceball_proxy.db import admins, api_keys, assistants, usage_events
from riceball_proxy.db.usage_events import UsageFilter

DEFAULT_DAYS = 7
#: Up to this many days the timeline is hourly, beyond it daily.
HOURLY_UP_TO_DAYS = 2
MAX_DAYS = 366
CSV_FIELDS = ("created_at", "request_id", "api_key_id", "assistant_id", "provider_id", "upstream_model", "stream",
              "status", "error_type", "error_code", "error_message", "prompt_tokens", "completion_tokens",
              "total_tokens", "cached_tokens", "reasoning_tokens", "usage_invalid", "usage_estimated", "cost_usd",
              "attempts",
              "latency_ms", "ttft_ms", "client_addr", "source", "admin_id", "api", "cache_write_tokens",
              "cache_write_1h_tokens")
#: Where calls come from: the API (keys) or the admin panel's playground.
SOURCES = {"api": "API", "playground": "Playground"}
#: The inbound APIs by their names on usage rows (a plugin's dialect shows under its own name).
APIS = {"chat": "Chat Completions", "messages": "Anthropic Messages", "responses": "OpenAI Responses"}
#: The dates a filter may name.
FIRST_DAY = datetime.date(1970, 1, 1)
LAST_DAY = datetime.date(9998, 12, 31)


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/usage", usage_page, name="usage")
    router.add_get("/usage.csv", usage_csv, name="usage_csv")


class BadFilter(ValueError):
    """A usage filter that names no real date, assistant or key; the message says which."""


def _source(query) -> str | None:
    value = query.get("source") or None
    if value is not None and value not in SOURCES:
        raise BadFilter("'source' is api or playground.")
    return value


def _uuid(query, name: str) -> uuid.UUID | None:
    value = query.get(name)
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        raise BadFilter(f"'{name}' is not an id.") from None


def _date(query, name: str) -> datetime.date | None:
    value = query.get(name)
    if not value:
        return None
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"'{name}' is not a date (YYYY-MM-DD).") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadFilter(f"'{name}' must be between {FIRST_DAY} and {LAST_DAY}.")
    return day


def read_filter(query) -> tuple[UsageFilter, dict[str, str]]:
    """The filter a query string asks for (dates are whole UTC days, ``to`` included), and its form values.

    Raises BadFilter for a date or id that cannot be one.
    """
    today = datetime.datetime.now(datetime.timezone.utc).date()
    until_day = _date(query, "to") or today
    since_day = _date(query, "from") or max(until_day - datetime.timedelta(days=DEFAULT_DAYS - 1), FIRST_DAY)
    if since_day > until_day:
        since_day, until_day = until_day, since_day
    since_day = max(since_day, until_day - datetime.timedelta(days=MAX_DAYS - 1), FIRST_DAY)
    utc = datetime.timezone.utc
    where = UsageFilter(
        since=datetime.datetime.combine(since_day, datetime.time(), utc),
        until=datetime.datetime.combine(until_day + datetime.timedelta(days=1), datetime.time(), utc),
        assistant_id=_uuid(query, "assistant"),
        api_key_id=_uuid(query, "key"),
        source=_source(query),
    )
    values = {"from": since_day.isoformat(), "to": until_day.isoformat(),
              "assistant": str(where.assistant_id or ""), "key": str(where.api_key_id or ""),
              "source": where.source or ""}
    return where, values


def chart(points: list[dict], value: str, *, overlay: str | None = None, width: int = 720, height: int = 160) -> dict:
    """Bar geometry for an SVG chart of ``points[value]`` (and ``overlay`` drawn over it)."""
    top = max((point[value] for point in points), default=0) or 1
    step = width / max(len(points), 1)
    bars = []
    for n, point in enumerate(points):
        bar_height = point[value] / top * height
        overlay_height = point[overlay] / top * height if overlay else 0
        bars.append({
            "x": round(n * step + step * 0.1, 2), "width": round(max(step * 0.8, 1), 2),
            "y": round(height - bar_height, 2), "height": round(bar_height, 2),
            "overlay_y": round(height - overlay_height, 2), "overlay_height": round(overlay_height, 2),
            "label": point["label"], "value": point[value], "overlay": point[overlay] if overlay else None,
        })
    return {"bars": bars, "width": width, "height": height, "top": top}


async def _bad_filter(request: web.Request, exc: BadFilter) -> web.Response:
    return await render(request, "admin/error.html", {"title": "Invalid filter", "message": str(exc)}, status=400)


async def usage_page(request: web.Request) -> web.Response:
    pool = request.config_dict[appkeys.DATABASE].pool
    try:
        where, values = read_filter(request.query)
    except BadFilter as exc:
        return await _bad_filter(request, exc)
    days = (where.until - where.since).days
    bucket = "hour" if days <= HOURLY_UP_TO_DAYS else "day"
    points = await usage_events.timeline(pool, where, bucket)
    for point in points:
        point["label"] = point["bucket"].strftime("%Y-%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d")
    all_assistants = await assistants.list_all(pool)
    all_keys = await api_keys.list_all(pool)
    per_api = await usage_events.by_api(pool, where)
    key_names = {k.id: f"{k.name} ({k.prefix}…)" for k in all_keys}
    admin_names = await admins.names(pool)
    per_key = await usage_events.by_key(pool, where)
    for row in per_key:  # who made the calls: a key, the playground (no key: an admin), or nobody known
        if row["api_key_id"] is not None:
            row["label"] = key_names.get(row["api_key_id"], "deleted key")
        elif row["source"] == "playground":
            row["label"] = f"Playground ({admin_names.get(row['admin_id'], 'a deleted admin')})"
        else:
            row["label"] = "(no valid key)"
    return await render(request, "admin/usage.html", {
        "values": values, "bucket": bucket,
        "summary": await usage_events.summary(pool, where),
        "per_assistant": await usage_events.by_assistant(pool, where),
        "per_key": per_key,
        "per_api": per_api,
        "api_names": {row["api"]: APIS.get(row["api"], row["api"]) for row in per_api},
        "requests_chart": chart(points, "requests", overlay="errors"),
        "tokens_chart": chart(points, "tokens"),
        "points": points,
        "assistants": all_assistants, "keys": all_keys, "sources": SOURCES,
        "assistant_names": {a.id: a.name for a in all_assistants},
        "csv_query": request.query_string,
    })


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    # A cell a spreadsheet would read as a formula is written as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


async def usage_csv(request: web.Request) -> web.StreamResponse:
    try:
        where, values = read_filter(request.query)
    except BadFilter as exc:
        return await _bad_filter(request, exc)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="riceball-usage-{values["from"]}-{values["to"]}.csv"',
    })
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    pool = request.config_dict[appkeys.DATABASE].pool
    async for event in usage_events.export(pool, where):
        writer.writerow([_csv_cell(getattr(event, field)) for field in CSV_FIELDS])
        if buffer.tell() > 64 * 1024:
            await response.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response
