"""OpenAI's Responses API on the wire: checking a request, translating it to the gateway's internal Chat
Completions form, and rendering answers and stream events back (the event contract of the OpenAPI spec).

Used by the Responses dialect (``dialects/responses.py``). Pure functions and one stream renderer; no I/O.
What matters to clients (Codex above all):

* every event carries ``sequence_number``; an item keeps one id from ``output_item.added`` to
  ``output_item.done`` to the final response, and ``output_item.done`` carries the whole item (Codex
  builds its history from those);
* every stream ends with ``response.completed``, ``response.incomplete`` or ``response.failed``;
* the API here is stateless: nothing is stored, so ``previous_response_id`` and ``conversation`` are
  refused with a 400 that says to resend the input.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson

from riceball_proxy.dialects.names import ToolNames
from riceball_proxy.dialects.reasoning import call_signature, decode_reasoning, encode_reasoning
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

#: Fields that ask the gateway to remember or fetch what it never stores.
STATEFUL_FIELDS = ("previous_response_id", "conversation")
#: Chat fields the translation makes up from the request's own (left out for a target that refuses them).
DERIVED_FIELDS = frozenset({"reasoning_effort", "prompt_cache_key"})
#: Hosted tools: run by OpenAI's own servers, which a translated call has none of.
FUNCTION_LIKE = ("function", "custom", "namespace")
#: The one string parameter a freeform (``custom``) tool is given as a function.
CUSTOM_INPUT = "input"


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def stateless(param: str) -> APIError:
    return invalid(param, f"This gateway's Responses API is stateless: it stores no response or conversation, so "
                          f"'{param}' cannot be followed. Send the whole conversation in 'input' every time "
                          "(with store: false).", "stateless_api")


# --- checking a request --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


FIELD_TYPES = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "instructions": (lambda v: isinstance(v, str), "a string"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "store": (lambda v: isinstance(v, bool), "a boolean"),
    "background": (lambda v: isinstance(v, bool), "a boolean"),
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "max_output_tokens": (lambda v: type(v) is int and v > 0, "a positive integer"),
    "tools": (lambda v: isinstance(v, list), "an array"),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "text": (lambda v: isinstance(v, dict), "an object"),
    "reasoning": (lambda v: isinstance(v, dict), "an object"),
    "include": (lambda v: isinstance(v, list), "an array"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "prompt_cache_key": (lambda v: isinstance(v, str), "a string"),
    "safety_identifier": (lambda v: isinstance(v, str), "a string"),
    "user": (lambda v: isinstance(v, str), "a string"),
}


def check_request(body: Any) -> dict[str, Any]:
    """``body`` when it is a Responses request the gateway can serve; 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    for name in STATEFUL_FIELDS:
        if body.get(name) is not None:
            raise stateless(name)
    if body.get("background") is True:
        raise invalid("background", "This gateway does not run responses in the background: leave 'background' "
                                    "out and wait for the answer (or stream it).", "unsupported_parameter")
    for name, (check, kind) in FIELD_TYPES.items():
        if body.get(name) is not None and not check(body[name]):
            raise invalid(name, f"Invalid type for '{name}': expected {kind}.", "invalid_type")
    items = body.get("input")
    if isinstance(items, str):
        if not items:
            raise invalid("input", "'input' must not be empty.", "empty_string")
        return body
    if not isinstance(items, list) or not items:
        raise invalid("input", "'input' must be a string or a non-empty array of input items.",
                      "missing_required_parameter" if items is None else "invalid_type")
    calls: set[str] = set()
    for n, item in enumerate(items):
        where = f"input[{n}]"
        if not isinstance(item, dict):
            raise invalid(where, f"Invalid type for '{where}': expected an object.", "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise invalid(f"{where}.role", f"Invalid value for '{where}.role': expected one of user, assistant, "
                                               "system, developer.")
            if not isinstance(item.get("content"), (str, list)):
                raise invalid(f"{where}.content", f"Invalid type for '{where}.content': expected a string or an "
                                                  "array of content parts.", "invalid_type")
            for m, part in enumerate(item["content"] if isinstance(item["content"], list) else ()):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid(f"{where}.content[{m}]", f"Invalid type for '{where}.content[{m}]': expected a "
                                                           "content part with a type.", "invalid_type")
        elif kind in ("function_call", "custom_tool_call"):
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise invalid(where, f"'{where}' needs a call_id and a name.")
            calls.add(item["call_id"])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if item.get("call_id") not in calls:
                raise invalid(f"{where}.call_id", f"No tool call found for the output in '{where}' (call_id "
                                                  f"{item.get('call_id')!r}): send the call before its output.")
        elif kind == "item_reference":
            raise stateless(f"{where}.id")
    return body


# --- reasoning state, in and out ------------------------------------------------------------------------------

def wants_reasoning(body: dict[str, Any]) -> bool:
    """True when the client asked for reasoning state to come back (``include``)."""
    return "reasoning.encrypted_content" in (body.get("include") or ())


# --- Responses -> Chat Completions ---------------------------------------------------------------------------


def _content_parts(content: Any, path: str) -> list[dict[str, Any]] | str:
    """A message's content as chat content (input_text/output_text as text, input_image as image_url)."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for m, part in enumerate(content):
        kind = part["type"]
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        else:
            raise invalid(f"{path}[{m}]", f"A '{kind}' content part cannot be sent to this assistant's provider "
                                          "(file ids and files are not served; send images as URLs or data URLs).",
                          "unsupported_content")
    return parts


def _text(content: list[dict[str, Any]] | str) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _output_text(output: Any) -> str:
    """A tool output (a string, or content parts) as the text of a tool message."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "\n".join(part.get("text", "") for part in output if isinstance(part, dict)
                         and part.get("type") in ("input_text", "output_text", "text"))
    return orjson.dumps(output).decode()


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], ToolNames]:
    """A checked Responses request as a Chat Completions request, and the tool names it mapped."""
    names = ToolNames()
    tools = _tools(body.get("tools") or (), names)
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    reasoning: list[dict[str, Any]] = []  # signed reasoning, for the assistant turn that follows it
    by_call: dict[str, list[dict[str, Any]]] = {}
    for n, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "reasoning":
            for detail in decode_reasoning(item.get("encrypted_content")) or ():
                if isinstance(detail.get("id"), str):  # a call's own (Gemini's), wherever its call is
                    by_call.setdefault(detail["id"], []).append(detail)
                else:
                    reasoning.append(detail)
        elif kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            content = _content_parts(item["content"], f"input[{n}].content")
            if role == "assistant":
                messages.append({"role": "assistant", "content": _text(content)})
                if reasoning:
                    messages[-1]["reasoning_details"], reasoning = reasoning, []
            elif role == "system":
                messages.append({"role": "system", "content": _text(content)})
            else:
                messages.append({"role": "user", "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            custom = kind == "custom_tool_call"
            name = names.to_chat(item["name"], kind="custom" if custom else "function", namespace=item.get("namespace"))
            arguments = (orjson.dumps({CUSTOM_INPUT: item.get("input") or ""}).decode() if custom
                         else item.get("arguments") or "{}")
            call = {"id": item["call_id"], "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not last.get("_answered"):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            if reasoning:
                messages[-1].setdefault("reasoning_details", []).extend(reasoning)
                reasoning = []
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item.get("output"))})
            for message in reversed(messages):  # no more calls join the assistant turn being answered
                if message["role"] == "assistant":
                    message["_answered"] = True
                    break
        else:
            logger.debug("a %r input item is dropped for a provider that does not speak Responses", kind)
    for message in messages:
        message.pop("_answered", None)
        for call in message.get("tool_calls") or () if by_call else ():
            message.setdefault("reasoning_details", []).extend(by_call.get(call["id"], ()))
        if message.get("reasoning_details") == []:
            del message["reasoning_details"]
    chat: dict[str, Any] = {"model": body.get("model") or "", "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "prompt_cache_key"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if user:
        chat["user"] = user
    if body.get("stream"):
        chat["stream"] = True
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), names)
        if choice is not None:
            chat["tool_choice"] = choice
    response_format = _response_format((body.get("text") or {}).get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    effort = (body.get("reasoning") or {}).get("effort")
    if isinstance(effort, str) and effort in ("none", "minimal", "low", "medium", "high"):
        chat["reasoning_effort"] = effort
    elif effort == "xhigh":
        chat["reasoning_effort"] = "high"
    return chat, names


def _tools(tools, names: ToolNames) -> list[dict[str, Any]]:
    """Flat Responses tools as nested chat functions: custom tools with one string argument, a namespace's
    tools flattened; hosted tools (web search, file search...) dropped."""
    chat = []
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid(f"tools[{n}]", f"Invalid type for 'tools[{n}]': expected a tool with a type.", "invalid_type")
        if tool["type"] == "namespace":
            for m, inner in enumerate(tool.get("tools") or ()):
                chat.append(_tool(inner, names, f"tools[{n}].tools[{m}]", tool.get("name")))
        elif tool["type"] in ("function", "custom"):
            chat.append(_tool(tool, names, f"tools[{n}]", None))
        else:
            logger.debug("hosted tool %r is dropped for a provider that does not speak Responses", tool["type"])
    return chat


def _tool(tool: Any, names: ToolNames, path: str, namespace: str | None) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or tool.get("type") not in ("function",
                                                                                                         "custom"):
        raise invalid(path, f"Invalid value for '{path}': expected a function or custom tool with a name.")
    if tool["type"] == "custom":
        description = tool.get("description") or ""
        grammar = (tool.get("format") or {}).get("definition") if isinstance(tool.get("format"), dict) else None
        if grammar:
            description += f"\n\nThe input must follow this grammar:\n{grammar}"
        function = {"name": names.to_chat(tool["name"], kind="custom", namespace=namespace),
                    "description": description.strip() or "A freeform tool: its input is one string.",
                    "parameters": {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}},
                                   "required": [CUSTOM_INPUT], "additionalProperties": False}}
        return {"type": "function", "function": function}
    function = {"name": names.to_chat(tool["name"], namespace=namespace),
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, names: ToolNames) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": names.to_chat(
            choice["name"], kind=choice["type"], namespace=choice.get("namespace"))}}
    return None


def _response_format(form: Any) -> dict[str, Any] | None:
    if not isinstance(form, dict):
        return None
    if form.get("type") == "json_schema":
        schema = {"name": form.get("name") or "answer", "schema": form.get("schema") or {}}
        if form.get("strict") is not None:
            schema["strict"] = form["strict"]
        if form.get("description"):
            schema["description"] = form["description"]
        return {"type": "json_schema", "json_schema": schema}
    if form.get("type") == "json_object":
        return {"type": "json_object"}
    return None


# --- the assistant, injected in Responses' own terms (a provider that speaks it) ------------------------------


def inject(body: dict[str, Any], assistant) -> None:
    """Apply ``assistant`` to a Responses ``body`` in place: its model; its system prompt first in
    ``instructions``, the client's after it (or dropped, with the client's system and developer input
    messages, when the assistant does not allow them); its parameters as defaults, locked ones forced,
    its ``max_tokens`` a ceiling on ``max_output_tokens``. Nothing is stored: ``store`` is false.
    ``reasoning`` items the gateway made of another provider's reasoning state are left out: only that
    provider could read them."""
    body["model"] = assistant.model
    body["store"] = False
    instructions = body.get("instructions") if assistant.allow_client_system else None
    if not assistant.allow_client_system and isinstance(body.get("input"), list):
        body["input"] = [item for item in body["input"] if not (isinstance(item, dict) and item.get("type", "message")
                                                              == "message" and item.get("role") in ("system", "developer"))]
    if isinstance(body.get("input"), list):  # reasoning the gateway carried for another provider: not this one's
        body["input"] = [item for item in body["input"] if not (isinstance(item, dict) and item.get("type") == "reasoning"
                                                                and decode_reasoning(item.get("encrypted_content"))
                                                                is not None)]
    joined = "\n\n".join(text for text in (assistant.system_prompt, instructions) if text)
    if joined:
        body["instructions"] = joined
    else:
        body.pop("instructions", None)
    for name, value in assistant.extra_params.items():
        body.setdefault(name, value)
    apply_params(body, assistant.parameters, assistant.locked)


def apply_params(body: dict[str, Any], params: dict[str, Any], locked) -> None:
    """Parameters by their Chat Completions names on a Responses body (``max_tokens`` is
    ``max_output_tokens``, ``reasoning_effort`` is ``reasoning.effort``; those Responses has no place for
    are left out)."""
    for name, value in params.items():
        forced = locked is True or name in locked
        if name == "reasoning_effort" and (forced or not (body.get("reasoning") or {}).get("effort")):
            body["reasoning"] = {**(body.get("reasoning") or {}), "effort": value}
        if name in ("max_tokens", "max_completion_tokens"):
            asked = body.get("max_output_tokens")
            body["max_output_tokens"] = value if forced or asked is None else min(asked, value)
        elif name in ("temperature", "top_p") and (forced or body.get(name) is None):
            body[name] = value


def usage_to_chat(usage: Any) -> Any:
    """Responses usage as Chat usage (both count cached tokens among the input)."""
    if not isinstance(usage, dict):
        return usage
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    chat = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": usage.get("total_tokens")}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if cached is not None:
        chat["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        chat["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return chat


# --- Chat Completions -> Responses ---------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_from_chat(usage: Any) -> dict[str, Any]:
    """Chat usage in Responses' terms (``input_tokens`` include the cached ones, as ``prompt_tokens`` do)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                                     or 0, "cache_write_tokens": (usage.get("prompt_tokens_details") or {}).get(
                                         "cache_write_tokens") or 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": (usage.get("completion_tokens_details") or {}).get(
                "reasoning_tokens") or 0},
            "total_tokens": prompt + completion}


def response_object(body: dict[str, Any], response_id: str, model: str, created_at: int, *, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, incomplete: str | None = None) -> dict[str, Any]:
    """The ``response`` object, with the request's own settings echoed as the API does."""
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": model, "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": False, "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
        "metadata": body.get("metadata") or {}, "user": body.get("user"),
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text or
            status == "completed" else []}


def call_item(item_id: str, call_id: str, chat_name: str, arguments: str, names: ToolNames,
              status: str = "completed") -> dict[str, Any]:
    """A tool call as its Responses item: ``function_call``, or ``custom_tool_call`` for a freeform tool."""
    kind, namespace, name = names.described(chat_name)
    if kind == "custom":
        try:
            value = orjson.loads(arguments or "{}")
            text = value.get(CUSTOM_INPUT, "") if isinstance(value, dict) else str(value)
        except orjson.JSONDecodeError:
            text = arguments
        item = {"id": item_id, "type": "custom_tool_call", "call_id": call_id, "name": name, "input": text,
                "status": status}
    else:
        item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
                "status": status}
    if namespace:
        item["namespace"] = namespace
    return item


def reasoning_item(item_id: str, text: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A reasoning item; with ``details`` (the provider's signed reasoning), ``encrypted_content`` carries
    them for the next turn."""
    item = {"id": item_id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else []}
    if details:
        item["encrypted_content"] = encode_reasoning(details)
    return item


def _finish(reason: Any) -> tuple[str, str | None]:
    """(status, incomplete reason) for a chat finish reason."""
    if reason == "length":
        return "incomplete", "max_output_tokens"
    if reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def from_chat(answer: dict[str, Any], body: dict[str, Any], names: ToolNames, response_id: str,
              model: str) -> dict[str, Any]:
    """A ``chat.completion`` as a Responses ``response``."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    reasoning = message.get("reasoning_content")
    details = message.get("reasoning_details") if wants_reasoning(body) else None
    if (isinstance(reasoning, str) and reasoning) or details:
        output.append(reasoning_item(new_id("rs"), reasoning if isinstance(reasoning, str) else "",
                                     details if isinstance(details, list) else None))
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if text:
        output.append(message_item(new_id("msg"), text))
    signatures = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        call_id = call.get("id") or new_id("call")
        output.append(call_item(new_id("fc"), call_id, function.get("name") or "", function.get("arguments") or "",
                                names))
        signature = call_signature(call, call_id)
        if signature is not None:
            signatures.append(signature)
    if signatures and wants_reasoning(body):
        output.append(reasoning_item(new_id("rs"), "", signatures))
    status, incomplete = _finish(choice.get("finish_reason"))
    return response_object(body, response_id, model, int(time.time()), status=status, output=output,
                           usage=usage_from_chat(answer.get("usage")), incomplete=incomplete)


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class StreamRenderer:
    """Chat Completions chunks as Responses stream events, numbered (``sequence_number``).

    An item is opened by its first delta (reasoning, the message's text, each tool call) and closed, with
    the whole item, when another kind begins or the stream ends; the response ends with
    ``response.completed`` (or ``response.incomplete``), carrying every item and the usage, or, when the
    stream fails, ``response.failed``.
    """

    def __init__(self, body: dict[str, Any], names: ToolNames, model: str):
        self.body = body
        self.names = names
        self.model = model
        self.response_id = new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        #: The open item: (kind, key) with kind "reasoning", "text" or "call" (key: the chat tool index).
        self.open: tuple[str, Any] | None = None
        self.item: dict[str, Any] = {}  # the open item ({} when none is)
        self.buffer: list[str] = []
        self.finish_reason: str | None = None
        #: The provider's signed reasoning, when the client asked for it back (``include``).
        self.wants_reasoning = wants_reasoning(body)
        self.reasoning_details: list[dict[str, Any]] = []
        #: Tool calls' own reasoning state (``call_signature``), given back in one reasoning item at the end.
        self.call_signatures: list[dict[str, Any]] = []

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        self.sequence += 1
        return event(kind, {**data, "sequence_number": self.sequence - 1})

    def _response(self, status: str, **extra) -> dict[str, Any]:
        return response_object(self.body, self.response_id, self.model, self.created_at, status=status,
                               output=list(self.output), **extra)

    def start(self) -> list[bytes]:
        snapshot = self._response("in_progress")
        return [self._event("response.created", {"response": snapshot}),
                self._event("response.in_progress", {"response": snapshot})]

    def _open(self, kind: str, key: Any, item: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self.open, self.item, self.buffer = (kind, key), item, []
        events.append(self._event("response.output_item.added", {"output_index": len(self.output), "item": item}))
        if kind == "text":
            events.append(self._event("response.content_part.added", {
                "item_id": item["id"], "output_index": len(self.output), "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}))
        elif kind == "reasoning":
            events.append(self._event("response.content_part.added", {
                "item_id": item["id"], "output_index": len(self.output), "content_index": 0,
                "part": {"type": "reasoning_text", "text": ""}}))
        return events

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        kind, _ = self.open
        item, text, index = self.item, "".join(self.buffer), len(self.output)
        events = []
        if kind == "text":
            done = message_item(item["id"], text)
            events += [self._event("response.output_text.done", {"item_id": item["id"], "output_index": index,
                                                                 "content_index": 0, "text": text, "logprobs": []}),
                       self._event("response.content_part.done", {"item_id": item["id"], "output_index": index,
                                                                  "content_index": 0, "part": done["content"][0]})]
        elif kind == "reasoning":
            done = reasoning_item(item["id"], text, self.reasoning_details if self.wants_reasoning else None)
            self.reasoning_details = []
            events += [self._event("response.reasoning_text.done", {"item_id": item["id"], "output_index": index,
                                                                    "content_index": 0, "text": text}),
                       self._event("response.content_part.done", {"item_id": item["id"], "output_index": index,
                                                                  "content_index": 0,
                                                                  "part": {"type": "reasoning_text", "text": text}})]
        else:
            done = call_item(item["id"], item["call_id"], item["_chat_name"], text, self.names)
            if done["type"] == "custom_tool_call":
                events += [self._event("response.custom_tool_call_input.delta", {
                               "item_id": item["id"], "output_index": index, "delta": done["input"]}),
                           self._event("response.custom_tool_call_input.done", {
                               "item_id": item["id"], "output_index": index, "input": done["input"]})]
            else:
                events.append(self._event("response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": index, "name": done["name"], "arguments": text}))
        events.append(self._event("response.output_item.done", {"output_index": index, "item": done}))
        self.output.append(done)
        self.open, self.item = None, {}
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self.open != ("reasoning", None):
                    events += self._open("reasoning", None, {"id": new_id("rs"), "type": "reasoning", "summary": [],
                                                             "content": []})
                self.buffer.append(reasoning)
                events.append(self._event("response.reasoning_text.delta", {
                    "item_id": self.item["id"], "output_index": len(self.output), "content_index": 0,
                    "delta": reasoning}))
            details = delta.get("reasoning_details")
            if isinstance(details, list) and details:
                if self.open != ("reasoning", None):
                    events += self._open("reasoning", None, {"id": new_id("rs"), "type": "reasoning", "summary": [],
                                                             "content": []})
                self.reasoning_details += [detail for detail in details if isinstance(detail, dict)]
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != ("text", None):
                    events += self._open("text", None, message_item(new_id("msg"), "", "in_progress"))
                self.buffer.append(text)
                events.append(self._event("response.output_text.delta", {
                    "item_id": self.item["id"], "output_index": len(self.output), "content_index": 0,
                    "delta": text, "logprobs": []}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                index = call.get("index", 0)
                signature = call_signature(call, call.get("id") or "")
                if signature is not None and call.get("id"):
                    self.call_signatures.append(signature)
                if self.open != ("call", index):
                    chat_name = function.get("name") or ""
                    item = call_item(new_id("fc" if self.names.described(chat_name)[0] == "function" else "ctc"),
                                     call.get("id") or new_id("call"), chat_name, "", self.names, "in_progress")
                    events += self._open("call", index, item)
                    self.item["_chat_name"] = chat_name
                arguments = function.get("arguments")
                if arguments:
                    self.buffer.append(arguments)
                    if self.item["type"] == "function_call":
                        events.append(self._event("response.function_call_arguments.delta", {
                            "item_id": self.item["id"], "output_index": len(self.output), "delta": arguments}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self, usage: dict[str, Any]) -> list[bytes]:
        """The events that end a stream that came whole."""
        events = self._close()
        if self.wants_reasoning and self.call_signatures:
            events += self._open("reasoning", None, {"id": new_id("rs"), "type": "reasoning", "summary": [],
                                                     "content": []})
            self.reasoning_details = self.call_signatures
            events += self._close()
        status, incomplete = _finish(self.finish_reason)
        response = self._response(status, usage=usage_from_chat(usage), incomplete=incomplete)
        return events + [self._event("response.completed" if status == "completed" else "response.incomplete",
                                     {"response": response})]

    def failed(self, error: APIError) -> bytes:
        """The event that ends a stream that failed after it began (what a 429 waits for is in its message,
        in the words Codex reads: "try again in Ns")."""
        message = error.message
        wait = (error.headers or {}).get("Retry-After")
        if wait and "try again in" not in message:
            message = f"{message} Please try again in {wait}s."
        return self._event("response.failed", {"response": self._response("failed", error={
            "code": failure_code(error), "message": message})})


#: How providers say a prompt is longer than the model takes (OpenAI, Anthropic, Gemini, vLLM).
CONTEXT_TOO_LONG = ("maximum context length", "context_length_exceeded", "prompt is too long", "context window",
                    "input token count", "too many tokens")


def failure_code(error: APIError) -> str:
    """The code clients (Codex) read in ``response.failed``: ``context_length_exceeded``,
    ``insufficient_quota``, ``rate_limit_exceeded`` (its message says when to try again), else ``server_error``
    (or ``invalid_prompt`` for a request refused as it is)."""
    if error.code in ("context_length_exceeded", "insufficient_quota", "rate_limit_exceeded"):
        return error.code
    said = error.message.lower()
    if error.status == 400 and any(words in said for words in CONTEXT_TOO_LONG):
        return "context_length_exceeded"
    if error.status == 429:
        return "rate_limit_exceeded"
    if 400 <= error.status < 500 and error.status not in (408, 409):
        return "invalid_prompt"
    return "server_error"
