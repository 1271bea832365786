"""Reasoning state a client carries between turns where its API has no field for it.

A provider's signed reasoning travels in Chat Completions as an assistant message's
``reasoning_details`` (Anthropic's thinking blocks, Gemini's thought signatures, each by its
``format``), and a Gemini function call's signature on the call (``extra_content``). The Responses API
and a translated Messages answer have no such fields: there the gateway hands the client the
``reasoning_details`` as an opaque string (a ``reasoning`` item's ``encrypted_content``, a ``thinking``
block's ``signature``) that it reads back on the next turn. Anything else in those places is another
server's, which only it can read.
"""
from __future__ import annotations

import base64
from typing import Any

import orjson

#: What the gateway's opaque reasoning state begins with: ``reasoning_details`` as JSON, base64url.
ENCRYPTED_PREFIX = "riceball.v1:"


def encode_reasoning(details: list[dict[str, Any]]) -> str:
    """``reasoning_details`` as one opaque string."""
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(orjson.dumps(details)).decode()


def decode_reasoning(text: Any) -> list[dict[str, Any]] | None:
    """The ``reasoning_details`` an opaque string of the gateway's holds; None for anyone else's."""
    if not isinstance(text, str) or not text.startswith(ENCRYPTED_PREFIX):
        return None
    try:
        details = orjson.loads(base64.urlsafe_b64decode(text[len(ENCRYPTED_PREFIX):]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return [detail for detail in details if isinstance(detail, dict)] if isinstance(details, list) else None


def call_signature(call: dict[str, Any], call_id: str) -> dict[str, Any] | None:
    """A tool call's own reasoning state (Gemini's thought signature, on ``extra_content``) as one of
    ``reasoning_details``, tied to the call's id: a Responses function call or a Messages ``tool_use`` has
    no place for it."""
    signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if not isinstance(signature, str):
        return None
    return {"type": "reasoning.encrypted", "data": signature, "format": "google-gemini-v1", "id": call_id}


