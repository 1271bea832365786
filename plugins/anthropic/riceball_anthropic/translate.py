"""OpenAI Chat Completions <-> Anthropic Messages: requests, answers and streaming events."""
from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from riceball_proxy.dialects.anthropic_messages import (
    ADAPTIVE_SINCE,
    claude_version,
    thinking_for,
    tool_turn_without_thinking,
)
from riceball_proxy.dialects.anthropic_messages import usage_to_chat as usage_of  # one meaning of usage
from riceball_proxy.plugin import (
    SYSTEM_ROLES,
    APIError,
    ChunkBuilder,
    Turns,
    bad_upstream_response,
    content_parts,
    stream_ended_early,
    stream_error,
    system_text,
    text_of,
    tool_arguments,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4096
#: The most blocks with ``cache_control`` (prompt-cache breakpoints) Anthropic takes in one request.
MAX_BREAKPOINTS = 4
#: The ``format`` of the signed reasoning Anthropic's answers carry in ``reasoning_details`` (the field
#: OpenAI-compatible APIs that carry reasoning use), so that it comes back unchanged on the next turn.
REASONING_FORMAT = "anthropic-claude-v1"
#: The tool an answer in a JSON schema is asked of (as its input) from a Claude older than 4.5, which has no
#: structured output of its own; its call comes back as the answer's text.
ANSWER_TOOL = "structured_answer"
#: The first Claude generation with structured output (``output_config.format``).
STRUCTURED_SINCE = (4, 5)
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content as Anthropic content blocks (a part's ``cache_control`` kept on its block)."""
    return content_parts(
        content,
        text=lambda text: {"type": "text", "text": text},
        inline_image=lambda media_type, data: {"type": "image", "source": {"type": "base64",
                                                                           "media_type": media_type, "data": data}},
        linked_image=lambda url: {"type": "image", "source": {"type": "url", "url": url}},
        keep=("cache_control",),
    )


def _system(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The system and developer messages as Anthropic's ``system``: their text, or text blocks when a part
    of theirs carries ``cache_control`` (which then stays on its block)."""
    system = [m for m in messages if m.get("role") in SYSTEM_ROLES]
    if not any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("cache_control")
                                                          for p in m["content"]) for m in system):
        return system_text(messages)
    return [block for m in system for block in _blocks(m.get("content")) if block.get("type") == "text"]


def _limit_breakpoints(anthropic: dict[str, Any]) -> None:
    """At most ``MAX_BREAKPOINTS`` blocks with ``cache_control``, as Anthropic takes: the oldest ones
    (tools, then system, then the conversation from its start) lose theirs first."""
    marked = [tool for tool in anthropic.get("tools") or () if "cache_control" in tool]
    if isinstance(anthropic.get("system"), list):
        marked += [block for block in anthropic["system"] if "cache_control" in block]
    marked += [block for turn in anthropic["messages"] for block in turn["content"] if "cache_control" in block]
    if len(marked) > MAX_BREAKPOINTS:
        logger.info("%d cache breakpoints asked, Anthropic takes %d: the %d oldest dropped", len(marked),
                    MAX_BREAKPOINTS, len(marked) - MAX_BREAKPOINTS)
        for block in marked[:len(marked) - MAX_BREAKPOINTS]:
            del block["cache_control"]


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if isinstance(choice, dict):
        result = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        result = {"type": {"none": "none", "required": "any"}.get(choice, "auto")}
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The thinking blocks an assistant message's ``reasoning_details`` carry back (Anthropic's own, by
    their format; any other provider's reasoning is left out: only its provider can read it)."""
    blocks = []
    for detail in message.get("reasoning_details") or ():
        if not isinstance(detail, dict) or detail.get("format") != REASONING_FORMAT:
            continue
        if detail.get("type") == "reasoning.text" and isinstance(detail.get("signature"), str):
            blocks.append({"type": "thinking", "thinking": detail.get("text") or "", "signature": detail["signature"]})
        elif detail.get("type") == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
    return blocks


def reasoning_detail(block: dict[str, Any]) -> dict[str, Any] | None:
    """A thinking block as one of ``reasoning_details``."""
    if block.get("type") == "thinking":
        return {"type": "reasoning.text", "text": block.get("thinking", ""), "signature": block.get("signature"),
                "format": REASONING_FORMAT}
    if block.get("type") == "redacted_thinking":
        return {"type": "reasoning.encrypted", "data": block.get("data"), "format": REASONING_FORMAT}
    return None


def _thinking(body: dict[str, Any], max_tokens: int, turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Anthropic's ``thinking`` (and ``output_config``) for a ``reasoning_effort`` (``thinking_for``).
    None when none is asked, or when the last assistant turn calls a tool without its thinking while
    the model thinks on a budget (a history another provider wrote: Anthropic would refuse it; the call
    goes without thinking; adaptive thinking takes such a turn)."""
    thinking = thinking_for(body["model"], body.get("reasoning_effort"), max_tokens)
    if thinking is None or claude_version(body["model"]) >= ADAPTIVE_SINCE:
        return thinking
    return None if tool_turn_without_thinking(turns) else thinking


def _structured(anthropic: dict[str, Any], response_format: Any) -> None:
    """``response_format`` (a JSON schema, or any JSON object) in Anthropic's terms: structured output
    (``output_config.format``) from Claude 4.5 on for a schema, else a tool whose input is the answer,
    which the model must call (or, beside the client's tools, may call instead of them). Anthropic forces
    no tool while thinking: thinking then goes."""
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_schema", "json_object"):
        return
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format["type"] == "json_schema" and isinstance(schema, dict) and \
            claude_version(anthropic["model"]) >= STRUCTURED_SINCE:
        anthropic["output_config"] = {**anthropic.get("output_config", {}),
                                      "format": {"type": "json_schema", "schema": schema}}
        return
    tool = {"name": ANSWER_TOOL, "description": "Give the answer as this tool's input.",
            "input_schema": schema if isinstance(schema, dict) else {"type": "object"}}
    anthropic["tools"] = [*anthropic.get("tools", ()), tool]
    choice = anthropic.get("tool_choice") or {}
    if choice.get("type") not in ("tool", "none"):  # a client's own choice of one tool, or of none, stands
        forced = {"type": "any"} if len(anthropic["tools"]) > 1 else {"type": "tool", "name": ANSWER_TOOL}
        anthropic["tool_choice"] = {**choice, **forced}
    if "thinking" in anthropic:
        del anthropic["thinking"]
        anthropic.get("output_config", {}).pop("effort", None)
        if not anthropic.get("output_config"):
            anthropic.pop("output_config", None)
        for turn in anthropic["messages"]:
            if turn["role"] == "assistant":
                turn["content"] = [b for b in turn["content"] if b.get("type") not in ("thinking", "redacted_thinking")]


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Chat Completions body as an Anthropic Messages body."""
    if (body.get("n") or 1) > 1:
        raise APIError(400, "This provider answers one choice at a time: n must be 1.", param="n",
                       code="unsupported_parameter")
    turns = Turns("content")  # Anthropic wants the roles to alternate
    for message in body["messages"]:
        role = message["role"]
        if role == "user":
            turns.add("user", _blocks(message.get("content")))
        elif role == "assistant":
            blocks = thinking_blocks(message) + _blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                blocks.append({"type": "tool_use", "id": call.get("id"),
                               "name": (call.get("function") or {}).get("name"), "input": tool_arguments(call)})
            turns.add("assistant", blocks)
        elif role in ("tool", "function"):
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                      "content": text_of(message.get("content"))}
            content = message.get("content")
            marks = [part["cache_control"] for part in (content if isinstance(content, list) else ())
                     if isinstance(part, dict) and part.get("cache_control")]
            if marks:  # a breakpoint on the result's text is one on the result
                result["cache_control"] = marks[-1]
            turns.add("user", [result])

    anthropic: dict[str, Any] = {
        "model": body["model"],
        "messages": turns.turns,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    system = _system(body["messages"])
    if system:
        anthropic["system"] = system
    thinking = _thinking(body, anthropic["max_tokens"], turns.turns)
    if thinking is not None:  # with thinking, Anthropic takes no temperature but 1, no top_k, no low top_p
        anthropic.update(thinking)
    else:
        for turn in turns.turns:  # thinking off: the blocks of earlier turns go (Anthropic would refuse them)
            if turn["role"] == "assistant":
                turn["content"] = [b for b in turn["content"] if b.get("type") not in ("thinking", "redacted_thinking")]
    if body.get("temperature") is not None and thinking is None:
        anthropic["temperature"] = min(float(body["temperature"]), 1.0)  # Anthropic's scale ends at 1
    if body.get("top_p") is not None and thinking is None:
        anthropic["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        anthropic["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        anthropic["tools"] = [
            {"name": tool["function"]["name"], "description": tool["function"].get("description", ""),
             "input_schema": tool["function"].get("parameters") or {"type": "object", "properties": {}},
             **({"cache_control": tool.get("cache_control") or tool["function"].get("cache_control")}
                if tool.get("cache_control") or tool["function"].get("cache_control") else {})}
            for tool in body["tools"] if tool.get("type") == "function"
        ]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and body.get("tools"):
        anthropic["tool_choice"] = choice
    if body.get("user"):
        anthropic["metadata"] = {"user_id": body["user"]}
    if body.get("top_k") is not None and thinking is None:
        anthropic["top_k"] = body["top_k"]
    if body.get("stream"):
        anthropic["stream"] = True
    _structured(anthropic, body.get("response_format"))
    _limit_breakpoints(anthropic)
    return anthropic


def from_anthropic(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages answer as an OpenAI ``chat.completion``."""
    texts, calls, reasoning, details = [], [], [], []
    for block in message.get("content", []):
        detail = reasoning_detail(block)
        if detail is not None:
            details.append(detail)
            reasoning.append(block.get("thinking") or "")
        elif block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
            texts.append(orjson.dumps(block.get("input", {})).decode())
        elif block.get("type") == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input", {})).decode()}})
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    reason = message.get("stop_reason")
    if reason == "tool_use" and not calls:  # the structured answer's tool, called
        reason = "end_turn"
    if calls:
        answer["tool_calls"] = calls
    if details:
        answer["reasoning_content"] = "".join(reasoning)
        answer["reasoning_details"] = details
    return {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [{"index": 0, "message": answer, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(reason or "", "stop")}],
        "usage": usage_of(message.get("usage", {})),
    }


class StreamTranslator:
    """Turns Anthropic streaming events into OpenAI ``chat.completion.chunk`` payloads (JSON bytes)."""

    def __init__(self, model: str, include_usage: bool):
        self.chunks = ChunkBuilder(model, "chatcmpl-anthropic")
        self.include_usage = include_usage
        self.usage: dict[str, Any] = {}
        #: Anthropic content-block index -> OpenAI tool-call index.
        self.tool_index: dict[int, int] = {}
        #: Anthropic content-block index -> the thinking block being streamed there.
        self.thinking: dict[int, dict[str, Any]] = {}
        #: The content-block index of the structured answer's tool call, whose input is the answer's text.
        self.answer_index: int | None = None
        self.done = False

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        """The payloads one event makes (often one, sometimes none); an error event raises APIError."""
        if not isinstance(event, dict):
            raise bad_upstream_response("stream")
        kind = event.get("type")
        delta = self.chunks.delta
        if kind == "message_start":
            message = event.get("message", {})
            self.chunks.id = f"chatcmpl-{message.get('id', 'anthropic')}"
            self.chunks.model = message.get("model") or self.chunks.model
            self.usage.update(message.get("usage") or {})
            return [delta({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block", {})
            if block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
                self.answer_index = event.get("index")
                return []
            if block.get("type") == "tool_use":
                index = self.tool_index[event["index"]] = len(self.tool_index)
                return [delta({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                                               "function": {"name": block["name"], "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [delta({"content": block["text"]})]
            if block.get("type") == "thinking":
                self.thinking[event.get("index", -1)] = {"type": "thinking", "thinking": "", "signature": ""}
            elif block.get("type") == "redacted_thinking":
                return [delta({"reasoning_details": [reasoning_detail(block)]})]
            return []
        if kind == "content_block_stop" and event.get("index") in self.thinking:
            return [delta({"reasoning_details": [reasoning_detail(self.thinking.pop(event["index"]))]})]
        if kind == "content_block_delta":
            change = event.get("delta", {})
            if change.get("type") == "text_delta":
                return [delta({"content": change.get("text", "")})]
            thinking = self.thinking.get(event.get("index", -1))
            if thinking is not None and change.get("type") == "thinking_delta":
                thinking["thinking"] += change.get("thinking", "")
                return [delta({"reasoning_content": change.get("thinking", "")})]
            if thinking is not None and change.get("type") == "signature_delta":
                thinking["signature"] += change.get("signature", "")
                return []
            if change.get("type") == "input_json_delta" and event.get("index") == self.answer_index:
                return [delta({"content": change.get("partial_json", "")})] if change.get("partial_json") else []
            if change.get("type") == "input_json_delta" and event.get("index") in self.tool_index:
                return [delta({"tool_calls": [{"index": self.tool_index[event["index"]],
                                               "function": {"arguments": change.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason == "tool_use" and not self.tool_index:  # the structured answer's tool, called
                reason = "end_turn"
            return [delta({}, FINISH_REASONS.get(reason, "stop"))] if reason else []
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            error: dict[str, Any] = event["error"] if isinstance(event.get("error"), dict) else {}
            raise stream_error({"message": error.get("message"), "code": error.get("type")})
        return []  # ping, content_block_stop and event types added later

    def finish(self) -> list[bytes]:
        """The usage chunk when the client asked for it; APIError when message_stop never came."""
        if not self.done:
            raise stream_ended_early()
        return [self.chunks.usage(usage_of(self.usage))] if self.include_usage else []
