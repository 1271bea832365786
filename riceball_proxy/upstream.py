"""Calling an upstream provider over HTTP: errors in OpenAI's shape, API keys never in a message.

Provider adapters (built-in or in plugins) use :class:`UpstreamCall` for every request, so that a
refused connection is a 502, a timeout a 504, and an upstream error answer an APIError whatever the
provider's own error format.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import http
import re
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import aiohttp
import orjson
import yarl

from riceball_proxy import sse
from riceball_proxy.errors import APIError

#: Builds the APIError for an upstream error answer: ``(status, body bytes, redact)``.
ErrorParser = Callable[[int, bytes, Callable[[str], str]], APIError]


#: A run of at least this many leading characters of a provider key is masked wherever it appears.
MIN_SECRET_RUN = 8


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with the key, and any run of its first ``MIN_SECRET_RUN`` or more characters, as ``***``.

    Upstream errors often echo part of the key they refused (``Incorrect API key provided: sk-abc...``).
    """
    if not secret:
        return text
    if len(secret) <= MIN_SECRET_RUN:
        return text.replace(secret, "***")
    head = secret[:MIN_SECRET_RUN]
    parts, start = [], 0
    while (found := text.find(head, start)) != -1:
        end = found + MIN_SECRET_RUN
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        parts += [text[start:found], "***"]
        start = end
    parts.append(text[start:])
    return "".join(parts)


def connection_error(exc: BaseException) -> APIError:
    """The APIError for a failed connection: 504 on a timeout, 502 otherwise."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return APIError(504, "the upstream provider did not answer in time", type="api_error", code="upstream_timeout")
    return APIError(502, "the upstream provider could not be reached", type="api_error", code="upstream_unavailable")


#: Characters of an upstream's error text kept (for the log; a client never sees a 5xx's).
MAX_UPSTREAM_TEXT = 2000
#: Identifiers of the operator's account in providers' error texts (OpenAI's organisations, projects
#: and users, Google Cloud's project numbers, an account's e-mail address): none of a client's business.
_IDENTIFIERS = re.compile(
    r"\b(?:org|proj|user|acct)[-_][A-Za-z0-9]{6,}\b"
    r"|\bprojects/[A-Za-z0-9-]+"
    r"|\b(?<=project )[0-9]{6,}\b"
    r"|\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")


def scrub_identifiers(text: str) -> str:
    """``text`` with the operator's account identifiers (``_IDENTIFIERS``) as ``***``."""
    return _IDENTIFIERS.sub("***", text)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


#: The error type OpenAI gives a status, for upstreams whose errors say none.
_TYPE_OF_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


#: The code of an upstream's refusal of the gateway's own credentials.
UPSTREAM_AUTH_FAILED = "upstream_auth_failed"


def credentials_refused(status: int, message: str) -> APIError:
    """502 for an upstream's 401 or 403: the provider's key the operator configured was refused, which is
    the gateway's fault, not the client's (an SDK would take a 401 for its own key and never retry).
    The upstream's text, which may name the operator's project or organisation, is kept in ``detail``."""
    return APIError(502, "The upstream provider refused the gateway's credentials for this assistant; the "
                         "operator has been told.", type="api_error", code=UPSTREAM_AUTH_FAILED,
                    detail=f"{status}: {message}")


def upstream_error(status: int, raw: bytes, redact: Callable[[str], str] = lambda text: text, *,
                   retryable: Collection[int] = ()) -> APIError:
    """An upstream error answer in OpenAI's shape, whichever provider sent it (the one error mapper).

    Reads OpenAI's ``{"error": {"message", "type", "param", "code"}}``, Anthropic's
    ``{"type": "error", "error": {"type", "message"}}``, Google's ``{"error": {"code", "message",
    "status"}}``, ``{"error": "text"}``, or any text. A 4xx keeps its status; a status in ``retryable``
    (an upstream overloaded for now: Anthropic's 529, Google's 503) becomes 503, which the SDKs retry;
    any other 5xx becomes 502. The code is the upstream's code, else its status name (Google), else its
    error type (Anthropic). Then :func:`for_client` applies the rules every provider's errors follow
    (401 and 403, the 5xx text, account identifiers).
    """
    message, error_type, param, code = None, None, None, None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload, message = None, raw[:500].decode("utf-8", "replace").strip() or None
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message, error_type, param, code = (error.get(name) for name in ("message", "type", "param", "code"))
        if not isinstance(code, str):
            if isinstance(error.get("status"), str):
                code = error["status"]
            elif payload.get("type") == "error" and isinstance(error_type, str):
                code = error_type
    elif isinstance(error, str):
        message = error
    message = redact(str(message)[:MAX_UPSTREAM_TEXT]) if message else f"the upstream provider answered {status}"
    code = None if code is None else redact(str(code))
    param = None if param is None else redact(str(param))
    if status in retryable:
        parsed = APIError(503, message, type="api_error", param=param, code=code or "overloaded")
    elif status >= 500:
        parsed = APIError(502, message, type="api_error", param=param, code=code)
    else:
        error_type = error_type if isinstance(error_type, str) else _TYPE_OF_STATUS.get(status,
                                                                                        "invalid_request_error")
        parsed = APIError(status, message, type=error_type, param=param, code=code)
    return for_client(status, parsed)


def for_client(status: int, error: APIError) -> APIError:
    """What an error parser made of an upstream's error answer, held to the rules every provider's errors
    follow, whichever parser made it: 401 and 403 are the gateway's credentials refused
    (:func:`credentials_refused`); a 5xx (an HTML page naming internal hosts and server versions, a stack
    trace) says only its status and reason; a 4xx's message, code and param lose the operator's account
    identifiers. The upstream's words stay in ``detail`` (for the log). An error with a ``detail`` has
    been through here already, and is left as it is."""
    if error.detail is not None:
        return error
    if status in (401, 403):
        return credentials_refused(status, error.message)
    error.detail = f"{status}: {error.message}"
    if status >= 500:
        overloaded = error.status == 503  # a parser's "overloaded for now": the SDKs retry it
        error.message = f"upstream {'overloaded' if overloaded else 'error'} ({status} {_reason(status)})"
    else:
        error.message = scrub_identifiers(error.message)
    error.code = None if error.code is None else scrub_identifiers(str(error.code))
    error.param = None if error.param is None else scrub_identifiers(str(error.param))
    return error


#: Upstream headers an error answer passes on: when to retry, and the rate limits behind a 429.
RETRY_HEADERS = ("retry-after", "retry-after-ms")
RATE_LIMIT_PREFIX = "x-ratelimit-"


def passed_on_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an upstream error answer that the client's own retry logic reads (the SDKs do)."""
    return {name: value for name, value in headers.items()
            if name.lower() in RETRY_HEADERS or name.lower().startswith(RATE_LIMIT_PREFIX)}


def bad_upstream_response(what: str) -> APIError:
    """502 for an upstream answer that is not in the format it should be."""
    return APIError(502, f"the upstream's {what} is not in the expected format", type="api_error",
                    code="bad_upstream_response")


def stream_error(error: Any, redact: Callable[[str], str] = lambda text: text) -> APIError:
    """502 for an error event in an upstream stream (``error`` is its error object, in whatever shape);
    its message without the operator's account identifiers, the whole of it in ``detail``."""
    error = error if isinstance(error, dict) else {"message": str(error) if error else None}
    message = redact(str(error.get("message") or "the upstream provider failed")[:MAX_UPSTREAM_TEXT])
    code = error.get("code") if error.get("code") is not None else error.get("status")
    return APIError(502, f"upstream error: {scrub_identifiers(message)[:500]}", type="api_error",
                    code=None if code is None else scrub_identifiers(redact(str(code))),
                    detail=f"error event: {message}")


def stream_ended_early() -> APIError:
    """502 for an upstream stream that stopped before its answer was complete."""
    return APIError(502, "the upstream stream ended before the answer was complete", type="api_error",
                    code="upstream_stream_incomplete")


async def json_events(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """The JSON of each Server-Sent Event of an upstream stream.

    A broken connection, a timeout or an event that is not JSON raises APIError.
    """
    try:
        async for data in sse.iter_data(response.content.iter_any()):
            yield orjson.loads(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise connection_error(exc) from None
    except orjson.JSONDecodeError:
        raise bad_upstream_response("stream") from None


class ConnectionGate:
    """At most ``limit`` calls to one provider at once; a call waits at most ``wait`` seconds for its turn.

    Each provider has its own gate, so calls hanging on one provider never delay another's. A call
    that waits too long is refused with 503 ``provider_overloaded``. Turns are given in arrival order.
    """

    def __init__(self, provider_name: str, limit: int, wait: float):
        self.provider_name = provider_name
        self.limit = limit
        self.wait = wait
        #: Calls holding a turn right now.
        self.in_use = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        """Take a turn, waiting for one if need be; raises APIError (503) when none comes in time."""
        if self.in_use < self.limit and not self._waiting:
            self.in_use += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(self.wait):
                await turn  # release() hands its turn over: in_use stays as it is
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                self.release()  # the turn came just as the wait ran out: pass it on
            raise APIError(
                503,
                f"The upstream provider '{self.provider_name}' is busy with {self.limit} calls; retry shortly.",
                type="api_error",
                code="provider_overloaded",
            ) from None
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()
            raise
        finally:
            if not turn.done():
                turn.cancel()

    def release(self) -> None:
        """Give the turn to the first call still waiting, or back."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.in_use -= 1


def join_url(base_url: str, path: str, **query: str) -> yarl.URL:
    """``path`` appended to ``base_url``, keeping the base URL's own query (Azure's ?api-version=...)."""
    base = yarl.URL(base_url)
    return base.with_path(base.path.rstrip("/") + path).with_query({**base.query, **query})


#: Headers the ``riceball_attempt_started`` hooks gave for the upstream attempt under way (W3C
#: ``traceparent``...): every :class:`UpstreamCall` made meanwhile sends them, so an adapter need not
#: know of them.
ATTEMPT_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "riceball_attempt_headers", default=None)


class UpstreamCall:
    """``async with UpstreamCall(...) as response``: a response with status < 400, or an APIError raised.

    The connection goes back to the pool after a complete read, and is closed when the block is left
    early (a client that went away, an error): an abandoned upstream stream stops at once.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str | yarl.URL,
        *,
        headers: Mapping[str, str],
        body: Any = None,
        timeout: aiohttp.ClientTimeout,
        secret: str | None = None,
        error_parser: ErrorParser = upstream_error,
        gate: ConnectionGate | None = None,
        request_id: str | None = None,
    ):
        self.session = session
        #: Sent upstream as X-Request-ID, to follow one call through the gateway's and the provider's logs.
        self.request_id = request_id
        self.gate = gate
        self._holding = False
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.secret = secret
        self.error_parser = error_parser
        self.response: aiohttp.ClientResponse | None = None

    def redact(self, text: str) -> str:
        """``text`` with the upstream API key, or any long enough start of it, masked."""
        return mask_secret(text, self.secret)

    async def __aenter__(self) -> aiohttp.ClientResponse:
        headers = self.headers
        if self.request_id is not None:
            headers = {**headers, "X-Request-ID": self.request_id}
        extra = ATTEMPT_HEADERS.get()
        if extra:  # never in place of the adapter's own (its key, its version...)
            headers = {**extra, **headers}
        if self.gate is not None:
            await self.gate.acquire()
            self._holding = True
        try:
            self.response = await self.session.request(
                self.method,
                self.url,
                data=None if self.body is None else orjson.dumps(self.body),
                headers=headers,
                timeout=self.timeout,
            )
            if self.response.status >= 400:
                raw = await self.response.read()
                error = for_client(self.response.status, self.error_parser(self.response.status, raw, self.redact))
                if error.code != UPSTREAM_AUTH_FAILED:  # the client's retry logic has nothing to do with it
                    error.headers = {**passed_on_headers(self.response.headers), **(error.headers or {})} or None
                raise error
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._close()
            raise connection_error(exc) from None
        except BaseException:
            self._close()
            raise
        return self.response

    async def __aexit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None and self.response is not None:
            self.response.release()
            self.response = None
            self._release_gate()
        else:
            self._close()

    def _close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None
        self._release_gate()

    def _release_gate(self) -> None:
        if self._holding and self.gate is not None:
            self._holding = False
            self.gate.release()
