"""Logging: plain text or one JSON object a line, and one access-log line per request.

No log line carries an API key or a prompt: the access log names the key by its id and the request by
its id, which is also sent upstream as ``X-Request-ID``.
"""
from __future__ import annotations

import datetime
import logging
import re

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from riceball_proxy import appkeys
from riceball_proxy.api.stages import CHAT_CONTEXT
from riceball_proxy.proxies import client_address

ACCESS_LOGGER = "riceball.access"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's ``fields`` when it has some."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` as text or JSON; the embedded server's own chatter only from WARNING up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, logging.getLevelName(level)))


#: A value written as it is in a text log line; any other is written as a JSON string (quoted, escaped),
#: so that nothing a client sends can pass for a field of its own.
_PLAIN_VALUE = re.compile(r"[^\s\"'=\\]*")


def _text(value) -> str:
    text = str(value)
    return text if _PLAIN_VALUE.fullmatch(text) else orjson.dumps(text).decode()


class AccessLogger(AbstractAccessLogger):
    """One line per request: its id, the caller, what was asked and how it went (tokens and timings for API calls)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields = {
            "request_id": request.get(appkeys.REQUEST_ID),
            "remote": client_address(request),
            "method": request.method,
            "path": request.rel_url.raw_path,  # as sent: a %20 stays %20, never a space in the line
            "status": response.status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 2),
        }
        ctx = request.get(CHAT_CONTEXT)
        if ctx is not None:
            fields["assistant_id"] = str(ctx.assistant.id) if ctx.assistant else None
            fields["key_id"] = str(ctx.principal.key_id) if ctx.principal and ctx.principal.key_id else None
            fields["stream"] = ctx.stream
            fields["prompt_tokens"] = ctx.usage.prompt_tokens
            fields["completion_tokens"] = ctx.usage.completion_tokens
            if ctx.first_token_at is not None:
                fields["ttft_ms"] = round((ctx.first_token_at - ctx.started_at) * 1000, 2)
            if ctx.error is not None:
                fields["error"] = ctx.error.type
            if ctx.trace_id is not None:  # the line leads to the call's trace
                fields["trace_id"] = ctx.trace_id
        client_request_id = request.get(appkeys.CLIENT_REQUEST_ID)
        if client_request_id is not None:
            fields["client_request_id"] = client_request_id
        # The text line: what a client chose (the path, an id not taken) quoted when it must be; the
        # other values are the gateway's own. The JSON format has them all as they are.
        text = {**fields, "path": _text(fields["path"])}
        if client_request_id is not None:
            text["client_request_id"] = _text(client_request_id)
        message = " ".join(f"{name}={value}" for name, value in text.items() if value is not None)
        self.logger.info(message, extra={"fields": fields})
