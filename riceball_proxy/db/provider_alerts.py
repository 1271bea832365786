"""The ``provider_alerts`` table: providers whose upstream refused the gateway's credentials."""
from __future__ import annotations

import dataclasses
from datetime import datetime


@dataclasses.dataclass(frozen=True)
class ProviderAlert:
    provider_id: int
    #: The upstream's status (401 or 403) and its error, the provider's key masked.
    status: int
    message: str
    first_at: datetime
    last_at: datetime
    #: Refusals noted (each process notes at most one per provider every few seconds).
    failures: int


async def credentials_refused(db, provider_id: int, status: int, message: str, failures: int = 1) -> None:
    """Note refusals of a provider's credentials (a provider deleted meanwhile is skipped)."""
    await db.execute(
        """
        INSERT INTO provider_alerts (provider_id, status, message, failures)
        SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM providers WHERE id = $1)
        ON CONFLICT (provider_id) DO UPDATE
        SET status = $2, message = $3, last_at = now(), failures = provider_alerts.failures + $4
        """,
        provider_id, status, message, failures)


async def clear(db, provider_id: int) -> None:
    """The provider works again (or has a new key): its alert goes."""
    await db.execute("DELETE FROM provider_alerts WHERE provider_id = $1", provider_id)


async def by_provider(db) -> dict[int, ProviderAlert]:
    """Every alert, by provider id."""
    rows = await db.fetch("SELECT provider_id, status, message, first_at, last_at, failures FROM provider_alerts")
    return {row["provider_id"]: ProviderAlert(**row) for row in rows}
