"""The ``usage_events`` table: one row per API call, written in batches off the request path."""
from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from collections.abc import Sequence
from datetime import datetime


@dataclasses.dataclass(frozen=True)
class UsageEvent:
    """What one API call cost and how it went."""

    created_at: datetime
    request_id: str
    status: int
    api_key_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    provider_id: int | None = None
    upstream_model: str | None = None
    stream: bool = False
    error_type: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    client_addr: str | None = None


_FIELDS = tuple(field.name for field in dataclasses.fields(UsageEvent))


async def insert_many(db, events: Sequence[UsageEvent]) -> None:
    """Write a batch of events with one COPY."""
    records = []
    for event in events:
        record = dataclasses.astuple(event)
        records.append((*record[:-1], _address(event.client_addr)))
    await db.copy_records_to_table("usage_events", records=records, columns=_FIELDS)


def _address(text: str | None):
    try:
        return None if text is None else ipaddress.ip_address(text)
    except ValueError:  # a unix socket peer, or anything else that is no IP address
        return None


async def recent(db, limit: int = 100) -> list[UsageEvent]:
    """The newest events first."""
    rows = await db.fetch(
        f"SELECT {', '.join(_FIELDS)} FROM usage_events ORDER BY created_at DESC, id DESC LIMIT $1", limit
    )
    return [_event(row) for row in rows]


def _event(row) -> UsageEvent:
    values = dict(row)
    if values["client_addr"] is not None:
        values["client_addr"] = str(values["client_addr"])
    return UsageEvent(**values)
