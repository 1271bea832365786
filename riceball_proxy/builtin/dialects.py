"""The gateway's own dialects: OpenAI Chat Completions, Anthropic Messages and OpenAI Responses
(``riceball_proxy.dialects``)."""
from __future__ import annotations

from riceball_proxy import hookimpl
from riceball_proxy.dialects.chat import CHAT
from riceball_proxy.dialects.messages import MESSAGES
from riceball_proxy.dialects.responses import RESPONSES


@hookimpl(trylast=True)
def riceball_dialects():
    return [CHAT, MESSAGES, RESPONSES]
