"""Checks of a Chat Completions request body, with OpenAI-style errors that name the bad field."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from riceball_proxy.errors import APIError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Arrays and objects nested deeper than this are refused (the JSON encoder stops at 254 levels).
MAX_DEPTH = 64


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


#: Known top-level fields: (check, what the check wants). None is accepted for each (OpenAI's "nullable").
FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "n": (_is_positive_int, "a positive integer"),
    "max_tokens": (_is_positive_int, "a positive integer"),
    "max_completion_tokens": (_is_positive_int, "a positive integer"),
    "seed": (_is_int, "an integer"),
    "stop": (_is_stop, "a string or an array of strings"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (_is_int, "an integer"),
    "logit_bias": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, list), "an array"),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "functions": (lambda v: isinstance(v, list), "an array"),
    "function_call": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "store": (lambda v: isinstance(v, bool), "a boolean"),
    "modalities": (lambda v: isinstance(v, list), "an array"),
    "reasoning_effort": (lambda v: isinstance(v, str), "a string"),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(param: str, expected: str, value: Any) -> APIError:
    """400 for a field of the wrong type."""
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


#: Bodies from this size on are parsed by the standard library's ``json``: orjson's peak memory on a long
#: string is about 13 times the body (a 10 MiB prompt: 130 MiB for a moment), json's 2 to 3 times, at
#: about the same speed (``python -m benchmarks.bodies``). Smaller ones go to the faster orjson.
LARGE_BODY = 256 * 1024


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """A request body's JSON (ValueError when it is not JSON), with the parser that suits its size."""
    if len(raw) < LARGE_BODY:
        return orjson.loads(raw)
    return json.loads(raw, parse_constant=_no_constant)  # NaN and Infinity are no JSON, as orjson says


def check_depth(raw: bytes, body: Any) -> None:
    """Raise APIError (400, naming the field) when ``body`` nests arrays or objects past MAX_DEPTH.

    ``raw`` is the body's JSON: with fewer brackets than MAX_DEPTH nothing can be that deep, which is
    the common case and costs two byte counts.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"'{path}' is nested more than {MAX_DEPTH} levels deep.", param=path,
                           code="too_deep")
        if isinstance(value, dict):
            stack.extend((item, _member(path, key), depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))


def _member(path: str, key: str) -> str:
    """The path of an object's member: ``a.b``, or ``a["b c"]`` for a key that is no plain name."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{orjson.dumps(key).decode()}]"


def drop_null_fields(messages: list[Any]) -> None:
    """Remove the optional fields a message sets to null (``"tool_calls": null``, ``"name": null``...), in place.

    ``message.model_dump()`` of an SDK's reply writes them, and clients append it to the history: null
    means absent. ``content`` is kept (a null content is how an assistant's tool-call turn says it has none).
    """
    for message in messages:
        if isinstance(message, dict) and None in message.values():
            for name in [name for name, value in message.items() if value is None and name != "content"]:
                del message[name]


def validate_chat_request(body: Any) -> dict[str, Any]:
    """Return ``body`` when it is a well-formed Chat Completions request; raise APIError (400) otherwise.

    Null optional fields of its messages are dropped first (:func:`drop_null_fields`).
    """
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    if "messages" not in body:
        raise APIError(400, "Missing required parameter: 'messages'.", param="messages",
                       code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array of message objects", messages)
    if not messages:
        raise APIError(400, "'messages' must contain at least one message.", param="messages", code="empty_array")
    drop_null_fields(messages)
    for index, message in enumerate(messages):
        _validate_message(index, message)
    for name, value in body.items():  # a body has a few fields; FIELD_TYPES has many
        spec = FIELD_TYPES.get(name)
        if spec is not None and value is not None and not spec[0](value):
            raise invalid_type(name, spec[1], value)
    options = body.get("stream_options")
    if options is not None and not isinstance(options.get("include_usage", False), bool):
        raise invalid_type("stream_options.include_usage", "a boolean", options["include_usage"])
    return body


def _validate_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid_type(where, "an object", message)
    role = message.get("role")
    if role is None:
        raise APIError(400, f"Missing required parameter: '{where}.role'.", param=f"{where}.role",
                       code="missing_required_parameter")
    if not isinstance(role, str):
        raise invalid_type(f"{where}.role", "a string", role)
    if role not in ROLES:
        raise APIError(
            400,
            f"Invalid value: '{role}'. Supported values are: {', '.join(repr(r) for r in sorted(ROLES))}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = message.get("content")
    if content is None:
        if role not in ("assistant", "function"):
            raise APIError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                           code="missing_required_parameter")
    elif isinstance(content, list):
        for part_index, part in enumerate(content):
            if not (isinstance(part, dict) and isinstance(part.get("type"), str)):
                raise invalid_type(f"{where}.content[{part_index}]", "an object with a string 'type'", part)
    elif not isinstance(content, str):
        raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise APIError(400, f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id",
                       code="missing_required_parameter")
    for name in ("name", "tool_call_id"):
        if name in message and not isinstance(message[name], str):
            raise invalid_type(f"{where}.{name}", "a string", message[name])
    if "tool_calls" in message and not isinstance(message["tool_calls"], list):
        raise invalid_type(f"{where}.tool_calls", "an array", message["tool_calls"])
