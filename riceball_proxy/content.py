"""Reading OpenAI chat content, for adapters that translate it to another provider's format."""
from __future__ import annotations

from typing import Any


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
