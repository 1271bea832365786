"""Assistant-config injection: the assistant's model, system prompt and parameters go into the request.

- The client's ``model`` is replaced by the assistant's upstream model.
- The assistant's system prompt is the first message; client ``system``/``developer`` messages
  follow it, or are dropped when the assistant does not allow them.
- Each assistant parameter is a default that the client may override, unless it is locked.
- The assistant's ``max_tokens`` is also a ceiling on ``max_tokens`` and ``max_completion_tokens``.
- Extra parameters are defaults too. Everything else the client sent is left as it is.

(That streams ask the upstream for usage is the core's doing, not this plugin's: see
``ChatContext.take_body``.)
"""
from __future__ import annotations

from riceball_proxy import hookimpl

TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


@hookimpl(tryfirst=True)
def riceball_prepare_request(ctx):
    body = ctx.body
    assistant = ctx.assistant
    body["model"] = assistant.model

    messages = body["messages"]
    if not assistant.allow_client_system:
        messages = [m for m in messages if m.get("role") not in ("system", "developer")]
    if assistant.system_prompt:
        messages = [{"role": "system", "content": assistant.system_prompt}, *messages]
    body["messages"] = messages

    for name, value in assistant.extra_params.items():
        body.setdefault(name, value)
    for name, value in assistant.parameters.items():
        if name == "max_tokens":
            _apply_token_ceiling(body, value, locked=name in assistant.locked)
        elif name in assistant.locked or body.get(name) is None:
            body[name] = value



def _apply_token_ceiling(body: dict, ceiling: int, *, locked: bool) -> None:
    asked = [field for field in TOKEN_LIMIT_FIELDS if body.get(field) is not None]
    if not asked:
        body["max_tokens"] = ceiling
        return
    for field in asked:
        body[field] = ceiling if locked else min(body[field], ceiling)
