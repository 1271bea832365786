"""Tool names as Chat Completions APIs accept them, and back (for the dialects that translate)."""
from __future__ import annotations

import hashlib
import re

#: Tool names Chat Completions APIs accept.
CHAT_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolNames:
    """Tool names as a Chat Completions API accepts them (``^[a-zA-Z0-9_-]{1,64}$``), and back. A name
    that already fits is kept; another is made to fit and given a short hash of the original, so that
    the same name maps the same way in every call of a conversation. A tool in a namespace (the
    Responses API's) is flattened to ``{namespace}__{name}``; each name also remembers its kind
    (``function``, or ``custom`` for a freeform tool carried as a function)."""

    def __init__(self) -> None:
        self.originals: dict[str, str] = {}
        #: Chat name -> (kind, namespace, name), for the names that are not plain functions.
        self.tools: dict[str, tuple[str, str | None, str]] = {}

    def to_chat(self, name: str, *, kind: str = "function", namespace: str | None = None) -> str:
        full = f"{namespace}__{name}" if namespace else name
        if CHAT_TOOL_NAME.match(full):
            mapped = full
        else:
            digest = hashlib.sha256(full.encode()).hexdigest()[:8]
            mapped = f"{re.sub(r'[^a-zA-Z0-9_-]', '_', full)[:55]}_{digest}"
            self.originals[mapped] = full
        if kind != "function" or namespace:
            self.tools[mapped] = (kind, namespace, name)
        return mapped

    def original(self, name: str) -> str:
        return self.originals.get(name, name)

    def described(self, name: str) -> tuple[str, str | None, str]:
        """(kind, namespace, name) of a chat tool name."""
        return self.tools.get(name) or ("function", None, self.original(name))
