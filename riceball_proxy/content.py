"""Reading OpenAI chat messages, for adapters that translate them to another provider's format.

The Anthropic and Gemini adapters walk a conversation the same way (system text apart, content parts
one by one, tool-call arguments parsed, turns of one role merged); what differs is only the shape of
each part, which they give as functions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from riceball_proxy.errors import APIError

SYSTEM_ROLES = ("system", "developer")


def text_of(content: Any) -> str:
    """The text of a message's content: the string itself, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""


def image_url_of(part: dict[str, Any]) -> str | None:
    """The URL of an ``image_url`` content part (given as an object or, loosely, as a string)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else None


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` as ``("image/png", "AAAA")``; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, _, data = url.partition(",")
    return header[5:].split(";")[0] or "image/png", data


def content_parts(content: Any, *, text: Callable[[str], Any], inline_image: Callable[[str, str], Any],
                  linked_image: Callable[[str], Any], keep: tuple[str, ...] = ()) -> list[Any]:
    """A message's content as a provider's parts: ``text(string)`` for each text,
    ``inline_image(media_type, base64_data)`` for each image given as a data URL, ``linked_image(url)``
    for each other image (other part types are left out); the fields named in ``keep`` (such as
    ``cache_control``) are copied from each part onto the part made of it."""
    if isinstance(content, str):
        return [text(content)] if content else []
    parts = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append(text(part.get("text", "")))
        elif part.get("type") == "image_url" and (url := image_url_of(part)) is not None:
            data_url = split_data_url(url)
            parts.append(linked_image(url) if data_url is None else inline_image(*data_url))
        else:
            continue
        for name in keep:
            if part.get(name) is not None:
                parts[-1][name] = part[name]
    return parts


def system_text(messages: list[dict[str, Any]]) -> str:
    """The text of the ``system`` and ``developer`` messages, joined by blank lines ("" when none)."""
    texts = (text_of(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES)
    return "\n\n".join(text for text in texts if text)


def tool_arguments(call: dict[str, Any]) -> Any:
    """A tool call's arguments, parsed from their JSON (400 when they are not JSON)."""
    try:
        return orjson.loads((call.get("function") or {}).get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise APIError(400, "A tool call's arguments are not valid JSON.", param="messages",
                       code="invalid_value") from None


class Turns:
    """A conversation for providers that want roles to alternate: parts of one role in a row are merged.

    ``turns`` holds ``{"role": role, parts_key: [...]}`` items.
    """

    def __init__(self, parts_key: str):
        self.parts_key = parts_key
        self.turns: list[dict[str, Any]] = []

    def add(self, role: str, parts: list[Any]) -> None:
        if self.turns and self.turns[-1]["role"] == role:
            self.turns[-1][self.parts_key].extend(parts)
        else:
            self.turns.append({"role": role, self.parts_key: parts})
