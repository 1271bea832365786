"""Token counts estimated from text, where no tokenizer is at hand: a call's prompt before it goes
upstream (what admission reserves), and what an answer used when its upstream never said (a client
gone before the usage chunk, an upstream that reports none).

No tokenizer: about one token per ``CHARS_PER_TOKEN`` characters (English runs about 4; fewer keeps the
estimate high), a fixed ``MEDIA_PART_TOKENS`` per image, audio or file part.
"""
from __future__ import annotations

from typing import Any

import orjson

from riceball_proxy.context import Usage

#: Tokens a prompt's image, audio or file part is counted as.
MEDIA_PART_TOKENS = 1000
#: Characters of text per token (about 4 in English; fewer keeps the estimate high).
CHARS_PER_TOKEN = 3


def tokens_of(chars: int) -> int:
    """Characters of text as tokens, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(body: dict) -> int:
    """A generous estimate of a request's prompt tokens, from its text."""
    chars, media = 0, 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        chars += 16  # the role and the message's framing
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text") or part.get("refusal")
                    if isinstance(text, str):
                        chars += len(text)
                    else:
                        media += 1
        for name in ("tool_calls", "function_call", "name"):
            if message.get(name) if isinstance(message, dict) else None:
                chars += len(str(message[name]))
    for name in ("tools", "functions", "response_format"):
        if body.get(name):
            chars += len(str(body[name]))
    return tokens_of(chars) + media * MEDIA_PART_TOKENS


#: The fields of an answer's message (or a chunk's delta) whose text the model wrote.
_TEXT_FIELDS = ("content", "reasoning_content", "refusal")


def answer_chars(choices: Any, part: str) -> int:
    """Characters the model wrote in ``choices`` of an answer (``part="message"``) or a chunk
    (``part="delta"``): text, reasoning, refusals, tool calls' names and arguments."""
    chars = 0
    if not isinstance(choices, list):
        return 0
    for choice in choices:
        message = choice.get(part) if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for name in _TEXT_FIELDS:
            text = message.get(name)
            if isinstance(text, str):
                chars += len(text)
            elif isinstance(text, list):  # content parts
                chars += sum(len(p.get("text") or "") for p in text if isinstance(p, dict))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += len(function.get("name") or "") + len(function.get("arguments") or "")
    return chars


def chunk_chars(payload: bytes) -> int:
    """Characters the model wrote in one streamed chunk (its JSON bytes). Parsed: orjson reads a chunk in
    well under a microsecond, less than scanning its bytes for the fields would take."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0
    return answer_chars(chunk.get("choices"), "delta") if type(chunk) is dict else 0


def estimated_usage(body: dict, answer_chars: int) -> Usage:
    """The usage of a call whose upstream never reported it: its prompt estimated from ``body`` (what
    was sent upstream) and its answer from the ``answer_chars`` characters relayed; flagged."""
    prompt = estimate_prompt_tokens(body)
    completion = tokens_of(answer_chars)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 estimated=True)
