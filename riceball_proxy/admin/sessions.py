"""The admin session: an encrypted cookie (aiohttp-session), HttpOnly, SameSite=Lax, Secure over https."""
from __future__ import annotations

from aiohttp import web
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

COOKIE_NAME = "riceball_admin"
#: A session lasts at most this long after its last change (seconds).
MAX_AGE = 12 * 3600


class AdminSessionStorage(EncryptedCookieStorage):
    """Encrypted cookie sessions whose Secure flag follows the scheme the browser used."""

    def __init__(self, key: bytes):
        super().__init__(key, cookie_name=COOKIE_NAME, max_age=MAX_AGE, httponly=True, samesite="Lax",
                         path="/admin/")

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        # Behind a TLS-terminating proxy the scheme comes from X-Forwarded-Proto; Secure only adds a restriction.
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        self._cookie_params["secure"] = request.secure or forwarded == "https"
        await super().save_session(request, response, session)
