"""API errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

import orjson
from aiohttp import web


class APIError(Exception):
    """An error answered to an API client with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        #: Headers the answer carries (an upstream's ``Retry-After``, for one).
        self.headers = headers
        #: What the operator needs and the client must not see (an upstream's own error text): logged and
        #: shown in the admin panel, never sent to an API client.
        self.detail = detail

    def body(self) -> dict:
        """The error as OpenAI sends it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """A JSON response carrying this error."""
        if self.headers:
            headers = {**self.headers, **(headers or {})}
        return web.Response(
            status=self.status, body=orjson.dumps(self.body()), content_type="application/json", headers=headers
        )
