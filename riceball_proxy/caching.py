"""Automatic prompt caching: cache breakpoints placed for a client that set none.

Anthropic caches a prompt's prefix only up to the blocks a request marks with ``cache_control`` (at most
four). Assistants are long, stable system prompts followed by a growing conversation, and most clients
mark nothing, so each turn pays for the whole prompt again. An assistant with ``auto_cache`` gets two
breakpoints on calls to a provider that caches at breakpoints (``ProviderAdapter.cache_breakpoints``):
one on its system prompt (the last system block: the system text and the tools before it), one on the
conversation's last turn (so that the next turn, which repeats this one's prompt, reads it back). A
request that marks any block itself is left as it is: the client knows its prompt better.

Each function returns a new body (the prepared one serves every attempt of a call) or the same one.
"""
from __future__ import annotations

from typing import Any

from riceball_proxy.content import SYSTEM_ROLES

#: The breakpoint placed (a copy each time: bodies are changed later): Anthropic's 5-minute cache, the cheaper write.
BREAKPOINT = {"type": "ephemeral"}
#: Blocks that cannot carry ``cache_control`` themselves.
UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def _marked(blocks: Any) -> bool:
    return isinstance(blocks, list) and any(isinstance(block, dict) and "cache_control" in block for block in blocks)


def _with_breakpoint(content: Any) -> Any:
    """Content (a string or blocks) with a breakpoint on its last markable block; None when it has none."""
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": dict(BREAKPOINT)}] if content else None
    if not isinstance(content, list):
        return None
    blocks = list(content)
    for n in range(len(blocks) - 1, -1, -1):
        block = blocks[n]
        if isinstance(block, dict) and block.get("type") not in UNMARKABLE and (block.get("type") != "text"
                                                                                or block.get("text")):
            blocks[n] = {**block, "cache_control": dict(BREAKPOINT)}
            return blocks
    return None


def chat_with_breakpoints(body: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions body with breakpoints (as content parts' ``cache_control``, which the adapter of
    a provider that caches at breakpoints carries over) on the last system message and the last message,
    when none of its messages or tools sets one."""
    messages = body["messages"]
    if any(_marked(message.get("content")) for message in messages) or any(
            isinstance(tool, dict) and ("cache_control" in tool or "cache_control" in (tool.get("function") or {}))
            for tool in body.get("tools") or ()):
        return body
    messages = list(messages)
    system = [n for n, message in enumerate(messages) if message.get("role") in SYSTEM_ROLES]
    for n in {*system[-1:], len(messages) - 1}:
        content = _with_breakpoint(messages[n].get("content"))
        if content is not None:
            messages[n] = {**messages[n], "content": content}
    return {**body, "messages": messages}


def messages_with_breakpoints(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages body with breakpoints on the last system block and the last message's last block, when
    none of its tools, system blocks or messages sets one."""
    if "cache_control" in body or _marked(body.get("tools")) or _marked(body.get("system")) or any(
            _marked(message.get("content")) for message in body["messages"]):
        return body
    body = dict(body)
    system = _with_breakpoint(body.get("system"))
    if system is not None:
        body["system"] = system
    if body["messages"]:
        content = _with_breakpoint(body["messages"][-1].get("content"))
        if content is not None:
            body["messages"] = [*body["messages"][:-1], {**body["messages"][-1], "content": content}]
    return body
