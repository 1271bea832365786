"""OpenAI Chat Completions <-> Gemini generateContent: requests, answers and streamed chunks."""
from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from riceball_proxy.plugin import (
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

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
#: The ``format`` of Gemini's thought signatures among ``reasoning_details`` (each with the id of its call).
REASONING_FORMAT = "google-gemini-v1"
#: Google's documented stand-in for a function call's thought signature in a history Gemini did not
#: write (another provider's, or a client's that lost it): accepted without validation.
SKIP_SIGNATURE = "skip_thought_signature_validator"
#: Gemini 3's ``thinkingLevel`` for each ``reasoning_effort`` (its Pro models take "low" and "high" only).
THINKING_LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "high"}
PRO_THINKING_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high"}
#: Gemini 2.5's ``thinkingBudget`` for each ``reasoning_effort`` (0 turns thinking off where the model allows it).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}
GENERATION_CONFIG = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


def _linked_image(url: str) -> dict[str, Any]:
    extension = url.rsplit(".", 1)[-1].lower().split("?")[0]
    mime = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}.get(extension,
                                                                                                    "image/png")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _parts(content: Any) -> list[dict[str, Any]]:
    return content_parts(content, text=lambda text: {"text": text},
                         inline_image=lambda mime, data: {"inlineData": {"mimeType": mime, "data": data}},
                         linked_image=_linked_image)


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    arguments = tool_arguments(call)
    return arguments if isinstance(arguments, dict) else {"value": arguments}


def _tool_response(content: Any) -> dict[str, Any]:
    text = text_of(content)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return parsed if isinstance(parsed, dict) else {"content": parsed}


def signature_of(call: dict[str, Any], details: Any) -> str:
    """A function call's thought signature: the convention of OpenAI-compatible APIs
    (``extra_content.google.thought_signature``), or one of the message's ``reasoning_details`` for that
    call's id; Google's stand-in when it has none."""
    signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if isinstance(signature, str) and signature:
        return signature
    for detail in details or ():
        if isinstance(detail, dict) and detail.get("format") == REASONING_FORMAT and detail.get("id") == call.get("id"):
            return detail.get("data") or SKIP_SIGNATURE
    return SKIP_SIGNATURE


def thinking_config(model: str, effort: Any) -> dict[str, Any] | None:
    """Gemini's ``thinkingConfig`` for a ``reasoning_effort``: a thinking level for Gemini 3, a budget for
    Gemini 2.5 (Pro cannot stop thinking: its least is 128), with the thoughts included. None for another
    model, or no effort."""
    if effort not in THINKING_BUDGETS:
        return None
    name = model.removeprefix("models/")
    if name.startswith("gemini-3"):
        levels = PRO_THINKING_LEVELS if "-pro" in name else THINKING_LEVELS
        return {"thinkingLevel": levels[effort], "includeThoughts": True}
    if name.startswith("gemini-2.5"):
        budget = THINKING_BUDGETS[effort]
        if "-pro" in name:
            budget = max(budget, 128)
        return {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return None


def text_signature(details: Any) -> str | None:
    """The thought signature of an answer's text (one of ``reasoning_details`` with no call id), if any."""
    for detail in details or ():
        if isinstance(detail, dict) and detail.get("format") == REASONING_FORMAT and not detail.get("id") \
                and isinstance(detail.get("data"), str):
            return detail["data"]
    return None


def to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Chat Completions body as a Gemini ``generateContent`` body (the model goes in the URL)."""
    turns = Turns("parts")
    call_names: dict[str, str] = {}
    for message in body["messages"]:
        role = message["role"]
        if role == "user":
            turns.add("user", _parts(message.get("content")))
        elif role == "assistant":
            parts = _parts(message.get("content"))
            signature = text_signature(message.get("reasoning_details"))
            if signature is not None and parts and "text" in parts[-1]:
                parts[-1]["thoughtSignature"] = signature
            for call in message.get("tool_calls") or []:
                name = call.get("function", {}).get("name", "")
                call_names[call.get("id", "")] = name
                parts.append({"functionCall": {"name": name, "args": _arguments(call)},
                              "thoughtSignature": signature_of(call, message.get("reasoning_details"))})
            turns.add("model", parts)
        elif role in ("tool", "function"):
            name = call_names.get(message.get("tool_call_id", ""), message.get("name", ""))
            turns.add("user", [{"functionResponse": {"name": name,
                                                     "response": _tool_response(message.get("content"))}}])

    gemini: dict[str, Any] = {"contents": turns.turns}
    system = system_text(body["messages"])
    if system:
        gemini["systemInstruction"] = {"parts": [{"text": system}]}
    config = {target: body[source] for source, target in GENERATION_CONFIG.items() if body.get(source) is not None}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    thinking = thinking_config(body["model"], body.get("reasoning_effort"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    response_format = body.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    if config:
        gemini["generationConfig"] = config
    tools = [t["function"] for t in body.get("tools") or [] if t.get("type") == "function"]
    if tools:
        gemini["tools"] = [{"functionDeclarations": [
            {"name": t["name"], "description": t.get("description", ""),
             **({"parameters": t["parameters"]} if t.get("parameters") else {})} for t in tools]}]
        choice = body.get("tool_choice")
        if choice is not None:
            if isinstance(choice, dict):
                calling = {"mode": "ANY", "allowedFunctionNames": [(choice.get("function") or {}).get("name", "")]}
            else:
                calling = {"mode": {"none": "NONE", "required": "ANY"}.get(choice, "AUTO")}
            gemini["toolConfig"] = {"functionCallingConfig": calling}
    return gemini


def usage_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """Gemini ``usageMetadata`` as OpenAI usage."""
    prompt = metadata.get("promptTokenCount") or 0
    completion = (metadata.get("candidatesTokenCount") or 0) + (metadata.get("thoughtsTokenCount") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": metadata.get("totalTokenCount") or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": metadata.get("cachedContentTokenCount") or 0},
        "completion_tokens_details": {"reasoning_tokens": metadata.get("thoughtsTokenCount") or 0},
    }


def new_call_id() -> str:
    """Gemini does not name its function calls: the gateway does, as OpenAI clients expect."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _split(parts: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], str, list[dict[str, Any]]]:
    """The visible text, the function calls, the thoughts (when asked for) and the signatures of text
    parts (as ``reasoning_details``) among a candidate's parts."""
    text, calls, thoughts, details = [], [], [], []
    for part in parts:
        if "functionCall" not in part and isinstance(part.get("thoughtSignature"), str):
            details.append({"type": "reasoning.encrypted", "data": part["thoughtSignature"],
                            "format": REASONING_FORMAT})
        if part.get("thought") and isinstance(part.get("text"), str):
            thoughts.append(part["text"])
        if "functionCall" in part:
            call = part["functionCall"]
            calls.append({"id": new_call_id(), "type": "function",
                          "function": {"name": call.get("name", ""),
                                       "arguments": orjson.dumps(call.get("args") or {}).decode()}})
            if isinstance(part.get("thoughtSignature"), str):  # back to Gemini with the call, on the next turn
                calls[-1]["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
        elif "text" in part and not part.get("thought"):
            text.append(part["text"])
    return "".join(text), calls, "".join(thoughts), details


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def from_gemini(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A Gemini ``GenerateContentResponse`` as an OpenAI ``chat.completion``."""
    choices = []
    for index, candidate in enumerate(response.get("candidates") or []):
        text, calls, thoughts, details = _split((candidate.get("content") or {}).get("parts") or [])
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        if thoughts:
            message["reasoning_content"] = thoughts
        if details:
            message["reasoning_details"] = details
        choices.append({"index": candidate.get("index", index), "message": message, "logprobs": None,
                        "finish_reason": _finish(candidate.get("finishReason"), bool(calls))})
    if not choices:  # the prompt itself was blocked
        choices.append({"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": "content_filter"})
    return {
        "id": f"chatcmpl-{response.get('responseId') or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.get("modelVersion") or model,
        "choices": choices,
        "usage": usage_of(response.get("usageMetadata") or {}),
    }


class StreamTranslator:
    """Turns Gemini's streamed ``GenerateContentResponse`` chunks into OpenAI chunk payloads (JSON bytes).

    Gemini's stream has no closing event: it is complete when a candidate gave its finish reason (or
    the prompt was blocked) before the connection ended.
    """

    #: Gemini says nothing after its last chunk: the stream is read to its end.
    done = False

    def __init__(self, model: str, include_usage: bool):
        self.chunks = ChunkBuilder(model)
        self.include_usage = include_usage
        self.started = False
        self.finished = False
        self.tool_calls = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, response: dict[str, Any]) -> list[bytes]:
        """The payloads one streamed response chunk makes; an error chunk raises APIError."""
        if not isinstance(response, dict):
            raise bad_upstream_response("stream")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            raise stream_error({"message": error.get("message"), "code": error.get("status")})
        delta = self.chunks.delta
        payloads = []
        if not self.started:
            self.started = True
            payloads.append(delta({"role": "assistant", "content": ""}))
        if response.get("usageMetadata"):
            self.usage = response["usageMetadata"]
        for candidate in (response.get("candidates") or [])[:1]:
            text, calls, thoughts, details = _split((candidate.get("content") or {}).get("parts") or [])
            if thoughts:
                payloads.append(delta({"reasoning_content": thoughts}))
            if details:
                payloads.append(delta({"reasoning_details": details}))
            if text:
                payloads.append(delta({"content": text}))
            if calls:
                payloads.append(delta({"tool_calls": [
                    call | {"index": self.tool_calls + n} for n, call in enumerate(calls)]}))
                self.tool_calls += len(calls)
            if candidate.get("finishReason"):
                self.finished = True
                payloads.append(delta({}, _finish(candidate["finishReason"], self.tool_calls > 0)))
        if not response.get("candidates") and (response.get("promptFeedback") or {}).get("blockReason"):
            self.finished = True
            payloads.append(delta({}, "content_filter"))
        return payloads

    def finish(self) -> list[bytes]:
        """The usage chunk when the client asked for it; APIError when no finish reason came."""
        if not self.finished:
            raise stream_ended_early()
        if self.include_usage and self.usage is not None:
            return [self.chunks.usage(usage_of(self.usage))]
        return []
