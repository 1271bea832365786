"""Anthropic's Messages API on the wire: checking a request, translating it to the gateway's internal
Chat Completions form and back, and injecting an assistant in its own terms.

Used by the Messages dialect (``dialects/messages.py``). Pure functions over dicts: no I/O. The rules
come from Anthropic's API reference and from what Claude Code sends (docs/claude-code.md):

* a request must have ``max_tokens`` and at least one message; a message's content is a string or
  blocks; an empty text block is dropped, a message left with nothing is refused;
* a ``tool_result`` must answer a ``tool_use`` of an earlier assistant turn;
* ``input_tokens`` in Anthropic's usage excludes cache reads and writes (Chat Completions'
  ``prompt_tokens`` includes them).
"""
from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from riceball_proxy.dialects.names import ToolNames
from riceball_proxy.dialects.reasoning import call_signature, decode_reasoning, encode_reasoning
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

#: Chat Completions' finish reasons as Anthropic's stop reasons.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
#: The thinking budget (``thinking.budget_tokens``) each ``reasoning_effort`` stands for, lowest first.
EFFORT_BUDGETS = (("minimal", 128), ("low", 1024), ("medium", 2048), ("high", 4096))
#: Efforts Chat Completions knows (Anthropic's ``output_config.effort`` also has ``max`` and ``xhigh``).
CHAT_EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
                "max": "high"}
#: Chat fields the translation makes up from Messages' own (what the client wrote had no such field):
#: left out for a provider that refuses them (``api/routing.py``).
DERIVED_FIELDS = frozenset({"reasoning_effort"})
#: The smallest thinking budget Anthropic accepts.
MIN_THINKING_BUDGET = 1024
#: The thinking budget (``thinking.budget_tokens``) asked of Claude before 4.6 for each ``reasoning_effort``.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
#: The ``output_config.effort`` of adaptive thinking (Claude 4.6 on) for each ``reasoning_effort``.
ADAPTIVE_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "max"}
#: The first Claude generation that thinks adaptively.
ADAPTIVE_SINCE = (4, 6)
#: The billing line Claude Code puts first in its system prompt: it changes with every conversation,
#: so it is left out of a translated prompt, whose prefix an upstream's cache can then reuse.
BILLING_LINE = "x-anthropic-billing-header:"
#: Content block types a translated provider can take, by the role that may send them.
USER_BLOCKS = frozenset({"text", "image", "tool_result", "document"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use",
                              "web_search_tool_result"})


def claude_version(model: str) -> tuple[int, int]:
    """A Claude model's generation (``claude-sonnet-4-6`` -> (4, 6), ``claude-opus-5`` -> (5, 0)); (0, 0) for
    the older names (``claude-3-7-sonnet-...``) and other models."""
    match = re.match(r"(?:[a-z]+\.)?(?:anthropic\.)?claude-[a-z]+-(\d+)(?:-(\d{1,2})(?!\d))?", model)
    return (int(match[1]), int(match[2] or 0)) if match else (0, 0)


def thinking_for(model: str, effort: Any, max_tokens: int) -> dict[str, Any] | None:
    """The fields that ask ``model`` to think at a ``reasoning_effort``: adaptive thinking at an
    ``output_config.effort`` from Claude 4.6 on (``max`` for Opus only), else a ``thinking`` budget below
    ``max_tokens``. None for no effort, ``none``, or a budget that cannot fit."""
    if claude_version(model) >= ADAPTIVE_SINCE:
        if effort not in ADAPTIVE_EFFORTS:
            return None
        level = ADAPTIVE_EFFORTS[effort]
        if level == "max" and "opus" not in model:
            level = "high"
        return {"thinking": {"type": "adaptive"}, "output_config": {"effort": level}}
    if effort not in THINKING_BUDGETS:
        return None
    budget = min(THINKING_BUDGETS[effort], max_tokens - 1)
    return {"thinking": {"type": "enabled", "budget_tokens": budget}} if budget >= MIN_THINKING_BUDGET else None


def invalid(path: str, message: str, code: str = "invalid_value") -> APIError:
    """400 naming the field at ``path`` (``messages.2.content.0.text``)."""
    return APIError(400, f"{path}: {message}", param=path, code=code)


# --- checking a request -------------------------------------------------------------------------------


def check_request(body: Any, *, counting: bool = False) -> dict[str, Any]:
    """``body`` when it is a Messages request the gateway can serve (``counting``: a ``count_tokens``
    request, which has no ``max_tokens``); 400 naming the field otherwise. Empty text blocks are dropped
    from it (Anthropic refuses them; nothing is lost)."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not counting:
        raise invalid("max_tokens", "Field required.", "missing_required_parameter")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise invalid("max_tokens", "Must be a positive integer.", "invalid_type")
    for name, kind, check in (("model", "a string", lambda v: isinstance(v, str)),
                              ("stream", "a boolean", lambda v: isinstance(v, bool)),
                              ("temperature", "a number", _is_number), ("top_p", "a number", _is_number),
                              ("top_k", "an integer", lambda v: type(v) is int),
                              ("stop_sequences", "an array of strings",
                               lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)),
                              ("tools", "an array", lambda v: isinstance(v, list)),
                              ("tool_choice", "an object", lambda v: isinstance(v, dict)),
                              ("thinking", "an object", lambda v: isinstance(v, dict)),
                              ("metadata", "an object", lambda v: isinstance(v, dict)),
                              ("system", "a string or an array of text blocks", lambda v: isinstance(v, (str, list)))):
        if body.get(name) is not None and not check(body[name]):
            raise invalid(name, f"Must be {kind}.", "invalid_type")
    if isinstance(body.get("system"), list):
        body["system"] = _text_blocks(body["system"], "system")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "Must be a non-empty array of messages.",
                      "missing_required_parameter" if messages is None else "invalid_type")
    tool_uses: set[str] = set()
    for n, message in enumerate(messages):
        path = f"messages.{n}"
        if not isinstance(message, dict):
            raise invalid(path, "Must be an object.", "invalid_type")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise invalid(f"{path}.role", "Must be 'user' or 'assistant'.")
        content = message.get("content")
        if isinstance(content, str):
            if not content and not (role == "assistant" and n == len(messages) - 1):
                raise invalid(f"{path}.content", "A message must have non-empty content.")
            continue
        if not isinstance(content, list):
            raise invalid(f"{path}.content", "Must be a string or an array of content blocks.", "invalid_type")
        blocks = []
        for m, block in enumerate(content):
            where = f"{path}.content.{m}"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise invalid(where, "Must be a content block with a type.", "invalid_type")
            kind = block["type"]
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise invalid(f"{where}.text", "Must be a string.", "invalid_type")
                if not block["text"]:
                    continue  # an empty text block says nothing
            elif kind == "tool_use":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise invalid(where, "A tool_use block needs an id and a name.")
                tool_uses.add(block["id"])
            elif kind == "tool_result":
                if block.get("tool_use_id") not in tool_uses:
                    raise invalid(f"{where}.tool_use_id", "This tool_result answers no tool_use block of an "
                                                         "earlier assistant message.")
            blocks.append(block)
        if not blocks and not (role == "assistant" and n == len(messages) - 1):
            raise invalid(f"{path}.content", "A message must have non-empty content.")
        message["content"] = blocks
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text_blocks(blocks: list, path: str) -> list[dict[str, Any]]:
    """A list of text blocks (``system``), the empty ones dropped; 400 for anything else."""
    kept = []
    for n, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid(f"{path}.{n}", "Must be a text block.", "invalid_type")
        if block["text"]:
            kept.append(block)
    return kept


# --- the assistant, injected in Messages' own terms (a provider that speaks it) -------------------------------


def inject(body: dict[str, Any], assistant) -> None:
    """Apply ``assistant`` to a Messages ``body`` in place, as the chat injection does to a chat body:
    its model; its system prompt as the first system block (the client's blocks after it, so that their
    prefix stays the same from call to call and the provider's cache keeps working), or alone when the
    assistant does not allow client system prompts; its parameters as defaults, locked ones forced, and
    its ``max_tokens`` a ceiling. With thinking on, Anthropic takes no ``temperature`` but 1 and no
    ``top_k``: those are not injected, and a thinking budget is kept below ``max_tokens``."""
    body["model"] = assistant.model
    system = body.get("system")
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) and system else list(system or [])
    if not assistant.allow_client_system:
        blocks = []
        body["messages"] = [m for m in body["messages"] if m.get("role") != "system"]
    if assistant.system_prompt:
        blocks.insert(0, {"type": "text", "text": assistant.system_prompt})
    if blocks:
        body["system"] = blocks
    else:
        body.pop("system", None)
    for name, value in assistant.extra_params.items():
        body.setdefault(name, value)
    apply_params(body, assistant.parameters, assistant.locked)
    _without_foreign_thinking(body)


def tool_turn_without_thinking(messages: list[dict[str, Any]]) -> bool:
    """True when the last assistant turn calls a tool without starting with its thinking (a turn another
    model wrote): Anthropic refuses such a history while it thinks on a budget."""
    last = next((message for message in reversed(messages) if message.get("role") == "assistant"), None)
    content = last.get("content") if last is not None else None
    return isinstance(content, list) and any(block.get("type") == "tool_use" for block in content) \
        and content[0].get("type") not in ("thinking", "redacted_thinking")


def _without_foreign_thinking(body: dict[str, Any]) -> None:
    """Leave out the thinking blocks the gateway made of another provider's reasoning (a translated
    answer's, signed ``riceball.v1:``), which Anthropic cannot verify; and thinking on a budget when the
    last tool turn is then without thinking (one another model wrote), which Anthropic refuses."""
    for message in body["messages"]:
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        kept = [block for block in content if not (block.get("type") == "thinking"
                                                   and decode_reasoning(block.get("signature")) is not None)]
        if kept and len(kept) != len(content):
            message["content"] = kept
    if (body.get("thinking") or {}).get("type") == "enabled" and tool_turn_without_thinking(body["messages"]):
        logger.info("thinking left out: the last tool turn has none of Anthropic's")
        del body["thinking"]


def apply_params(body: dict[str, Any], params: dict[str, Any], locked) -> None:
    """The parameters of an assistant (or a target: all ``locked``) on a Messages body, by their Chat
    Completions names (``stop`` is ``stop_sequences``; ``reasoning_effort`` is ``thinking``, adaptive or
    a budget as the model takes it; those Messages has no place for are left out)."""
    effort = params.get("reasoning_effort")
    if effort is not None and (locked is True or "reasoning_effort" in locked or "thinking" not in body):
        _think(body, effort)
    thinking = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    for name, value in params.items():
        forced = locked is True or name in locked
        if name == "max_tokens":
            body["max_tokens"] = value if forced else min(body["max_tokens"], value)
        elif name in ("temperature", "top_k") and thinking:
            continue
        elif name in ("temperature", "top_p", "top_k", "stop"):
            field = "stop_sequences" if name == "stop" else name
            if name == "stop" and isinstance(value, str):
                value = [value]
            if name == "temperature":
                value = min(float(value), 1.0)  # Anthropic's scale ends at 1
            if forced or body.get(field) is None:
                body[field] = value
    budget = (body.get("thinking") or {}).get("budget_tokens")
    if isinstance(budget, int) and budget >= body["max_tokens"]:
        if body["max_tokens"] - 1 >= MIN_THINKING_BUDGET:
            body["thinking"] = {**body["thinking"], "budget_tokens": body["max_tokens"] - 1}
        else:
            body.pop("thinking")


def _think(body: dict[str, Any], effort: str) -> None:
    """Replace a Messages body's thinking (and ``output_config.effort``) with what ``effort`` asks of its
    model (its budget kept below ``max_tokens`` by ``apply_params``). Thinking on, the client's sampling
    fields that Anthropic refuses with it go (a ``temperature`` or ``top_k``, a ``top_p`` below 0.95)."""
    body.pop("thinking", None)
    config = {name: value for name, value in (body.get("output_config") or {}).items() if name != "effort"}
    fields = thinking_for(body["model"], effort, body["max_tokens"]) or {}
    config.update(fields.get("output_config") or {})
    if config:
        body["output_config"] = config
    else:
        body.pop("output_config", None)
    if "thinking" in fields:
        body["thinking"] = fields["thinking"]
        body.pop("temperature", None)
        body.pop("top_k", None)
        if isinstance(body.get("top_p"), (int, float)) and body["top_p"] < 0.95:
            del body["top_p"]


# --- Messages -> Chat Completions (a provider that does not speak it) ----------------------------------------


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], ToolNames, APIError | None]:
    """A checked Messages request as a Chat Completions request; the tool names it mapped; and the 400 a
    provider that does not speak Messages must answer (a block it cannot take), if any: raised only
    when such a provider is called, since one that speaks Messages takes the request as it is."""
    names = ToolNames()
    problem: APIError | None = None
    system: list[str] = []
    raw_system = body.get("system")
    for block in ([{"type": "text", "text": raw_system}] if isinstance(raw_system, str) else raw_system or []):
        if not block["text"].startswith(BILLING_LINE):
            system.append(block["text"])
    messages: list[dict[str, Any]] = []
    for n, message in enumerate(body["messages"]):
        role, content = message["role"], message["content"]
        if role == "system":  # Claude Code's mid-conversation system messages join the system prompt
            system.append(content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content
                                                                             if b.get("type") == "text"))
            continue
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if role == "assistant":
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            details: list[dict[str, Any]] = []
            for m, block in enumerate(content):
                kind = block["type"]
                if kind == "text":
                    texts.append(block["text"])
                elif kind == "thinking" and decode_reasoning(block.get("signature")) is not None:
                    details += decode_reasoning(block["signature"]) or ()  # the gateway's: another provider's
                elif kind == "tool_use":
                    calls.append({"id": block["id"], "type": "function",
                                  "function": {"name": names.to_chat(block["name"]),
                                               "arguments": orjson.dumps(block.get("input") or {}).decode()}})
                elif kind in ("thinking", "redacted_thinking"):
                    logger.debug("a %s block is dropped for a provider that does not speak Messages", kind)
                else:
                    problem = problem or _unsupported(f"messages.{n}.content.{m}", kind)
            answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
            if calls:
                answer["tool_calls"] = calls
            if details:
                answer["reasoning_details"] = details
            messages.append(answer)
            continue
        parts: list[dict[str, Any]] = []
        for m, block in enumerate(content):
            kind = block["type"]
            if kind == "tool_result":  # answers come first, each as its own tool message
                text, images = _tool_result(block.get("content"))
                if block.get("is_error") and text:
                    text = f"Error: {text}"
                messages.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
                parts.extend(images)
            elif kind == "text":
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and (part := _image(block)) is not None:
                parts.append(part)
            elif kind == "document" and (document := _document_text(block)) is not None:
                parts.append({"type": "text", "text": document})
            else:
                problem = problem or _unsupported(f"messages.{n}.content.{m}", kind)
        if parts:
            messages.append({"role": "user", "content": parts})
    chat: dict[str, Any] = {"model": body.get("model") or "", "messages": messages,
                            "max_tokens": body["max_tokens"]}
    system_prompt = "\n\n".join(text for text in system if text)
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("stream"):
        chat["stream"] = True
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user
    tools = []
    for n, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise invalid(f"tools.{n}", "Must be a tool with a name.", "invalid_type")
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            logger.debug("server tool %r is dropped for a provider that does not speak Messages", tool.get("type"))
            continue
        function = {"name": names.to_chat(tool["name"]), "parameters": tool.get("input_schema") or
                    {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice") or {}
        kind = choice.get("type")
        if kind == "tool" and isinstance(choice.get("name"), str):
            chat["tool_choice"] = {"type": "function", "function": {"name": names.to_chat(choice["name"])}}
        elif kind in ("auto", "any", "none"):
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use") is True:
            chat["parallel_tool_calls"] = False
    effort = _effort(body)
    if effort is not None:
        chat["reasoning_effort"] = effort
    output_format = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema" and \
            isinstance(output_format.get("schema"), dict):  # structured output, GA and beta forms
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output",
                                                                         "schema": output_format["schema"]}}
    dropped = sorted(set(body) - TRANSLATED_FIELDS)
    if dropped:
        logger.debug("fields dropped for a provider that does not speak Messages: %s", ", ".join(dropped))
    return chat, names, problem


#: The request fields ``to_chat`` carries over (every other is Anthropic's alone: cache_control sits on
#: blocks and goes with them; output_config and context_management, betas, service tiers, containers...).
TRANSLATED_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences",
                               "stream", "metadata", "tools", "tool_choice", "thinking", "output_config",
                               "output_format"})


def _unsupported(path: str, kind: str) -> APIError:
    return invalid(path, f"A '{kind}' block cannot be sent to this assistant's provider, which does not speak "
                         "the Messages API.", "unsupported_content")


def _effort(body: dict[str, Any]) -> str | None:
    """The ``reasoning_effort`` a request's thinking asks for: ``output_config.effort`` when given, else a
    thinking budget's nearest effort (adaptive thinking's default is ``high``); None when thinking is off
    (or not asked about)."""
    thinking = body.get("thinking") or {}
    if thinking.get("type") not in ("enabled", "adaptive"):
        return None
    effort = (body.get("output_config") or {}).get("effort")
    if isinstance(effort, str) and effort in CHAT_EFFORTS:
        return CHAT_EFFORTS[effort]
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int):
        for name, tokens in EFFORT_BUDGETS:
            if budget <= tokens:
                return name
        return "high"
    return "high" if thinking.get("type") == "adaptive" else None  # Anthropic's default effort


def _image(block: dict[str, Any]) -> dict[str, Any] | None:
    source: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document_text(block: dict[str, Any]) -> str | None:
    """A plain-text document's text (a PDF's cannot be translated)."""
    source: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return source["data"]
    return None


def _tool_result(content: Any) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and its images (which a tool message cannot carry: they follow it)."""
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for block in content or ():
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif isinstance(block, dict) and block.get("type") == "image" and (part := _image(block)) is not None:
            images.append(part)
    return "\n".join(texts), images


# --- Chat Completions -> Messages: answers, usage, stream events ---------------------------------------------


def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Chat usage in Anthropic's terms: ``input_tokens`` without the cached tokens, which are reads."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached, written = details.get("cached_tokens") or 0, details.get("cache_write_tokens") or 0
    return {"input_tokens": max(prompt - cached - written, 0), "output_tokens": usage.get("completion_tokens") or 0,
            "cache_creation_input_tokens": written, "cache_read_input_tokens": cached}


def usage_to_chat(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage as Chat usage: cache reads and writes are prompt tokens too; the writes (and the
    1-hour ones among them, from ``cache_creation``) are kept apart, since they cost more than input."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    hour = (usage.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + written
    completion = usage.get("output_tokens") or 0
    details = {"cached_tokens": cache_read}
    if written:
        details |= {"cache_write_tokens": written, "cache_write_1h_tokens": min(hour, written)}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": details}


def tool_input(arguments: Any) -> Any:
    """A tool call's JSON arguments as a tool_use ``input`` (``{}`` for none; the text kept, under
    ``_arguments``, when a model wrote something that is not a JSON object)."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_arguments": arguments}
    return value if isinstance(value, dict) else {"_arguments": arguments}


def from_chat(answer: dict[str, Any], names: ToolNames, message_id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` as a Messages answer."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    details = [detail for detail in message.get("reasoning_details") or () if isinstance(detail, dict)]
    details += filter(None, (call_signature(call, call.get("id") or "") for call in message.get("tool_calls") or ()))
    reasoning = message.get("reasoning_content")
    if details or (isinstance(reasoning, str) and reasoning):
        content.append({"type": "thinking", "thinking": reasoning if isinstance(reasoning, str) else "",
                        "signature": encode_reasoning(details)})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{message_id}_{len(content)}",
                        "name": names.original(function.get("name") or ""),
                        "input": tool_input(function.get("arguments"))})
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
            "usage": usage_from_chat(answer.get("usage"))}


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One Messages stream event: ``event: {kind}`` and its JSON."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamRenderer:
    """Chat Completions chunks as Messages stream events.

    One content block per kind and per tool call, each opened by its first delta and closed when
    another kind starts (a tool call's arguments are complete at its ``content_block_stop``, which
    Claude Code parses them on); ``message_delta`` (stop reason and usage) is held until the stream
    ends, since the usage chunk comes after the finish reason. Reasoning is a ``thinking`` block, its
    ``signature`` the provider's reasoning state as the gateway reads it back (``reasoning_details``
    and tool calls' signatures so far); state that comes after that block closed gets a thinking block
    of its own at the end.
    """

    def __init__(self, names: ToolNames, message_id: str, model: str):
        self.names = names
        self.message_id = message_id
        self.model = model
        self.index = -1
        #: The open block: "text", "thinking", or a tool call's index in the chunks; None when none is open.
        self.open: Any = None
        self.finish_reason: str | None = None
        #: The reasoning state given so far, and how much of it a thinking block's signature carries.
        self.details: list[dict[str, Any]] = []
        self.signed = 0

    def start(self, input_tokens: int) -> bytes:
        """``message_start``, with the prompt's tokens as far as they are known before the answer."""
        message: dict[str, Any] = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": input_tokens, "output_tokens": 1, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0}}
        return event("message_start", {"type": "message_start", "message": message})

    def _switch(self, to: Any, block: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self.index += 1
        self.open = to
        events.append(event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block}))
        return events

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        events = []
        if self.open == "thinking":
            events.append(self._delta({"type": "signature_delta",
                                       "signature": encode_reasoning(self.details[self.signed:])}))
            self.signed = len(self.details)
        self.open = None
        return events + [event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events one chunk makes."""
        events: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self.details += [detail for detail in delta.get("reasoning_details") or () if isinstance(detail, dict)]
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self.open != "thinking":
                    events += self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    events += self._switch("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                index = call.get("index", 0)
                call_id = call.get("id") or f"toolu_{self.message_id}_{index}"
                signature = call_signature(call, call_id)
                if signature is not None:
                    self.details.append(signature)
                if self.open != ("tool", index):
                    events += self._switch(("tool", index), {
                        "type": "tool_use", "id": call_id,
                        "name": self.names.original(function.get("name") or ""), "input": {}})
                if function.get("arguments"):
                    events.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self, usage: dict[str, Any] | None) -> list[bytes]:
        """The events that end the message: the last block's stop, the reasoning state not given yet,
        ``message_delta``, ``message_stop``."""
        events = self._close()
        if len(self.details) > self.signed:
            events += self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events += self._close()
        events.append(event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS.get(self.finish_reason or "stop", "end_turn"), "stop_sequence": None},
            "usage": usage_from_chat(usage)}))
        events.append(event("message_stop", {"type": "message_stop"}))
        return events
