"""The objects that travel through one API request's hook chain."""
from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from riceball_proxy.db.assistants import Assistant, Target
from riceball_proxy.db.providers import Provider
from riceball_proxy.errors import APIError
from riceball_proxy.limits import Limits
from riceball_proxy.validation import drop_null_fields, parse_json

if TYPE_CHECKING:
    from aiohttp import web


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the API key (or whatever a plugin authenticates) and what it may use."""

    key_id: uuid.UUID | None
    name: str
    #: None: every assistant; otherwise only these.
    assistant_ids: frozenset[uuid.UUID] | None = None
    #: Why this known caller may not call at all (a revoked or expired key): answered 401 with it,
    #: and still recorded as this caller's call.
    refused: str | None = None
    #: What this caller may spend (None or empty: no limits of its own).
    limits: Limits | None = None
    #: The admin calling from the panel's playground (no API key), or None.
    admin_id: int | None = None
    #: The key's display prefix (``sk-...``, as the admin panel shows it), to name it where its id would not do.
    key_prefix: str | None = None

    def allows(self, assistant_id: uuid.UUID) -> bool:
        """True when this caller may use that assistant."""
        return self.assistant_ids is None or assistant_id in self.assistant_ids


#: Request fields that observers do not get (``ChatContext.release_bodies``).
BULKY_FIELDS = frozenset({"messages", "system", "tools", "functions", "response_format", "prediction", "logit_bias",
                          "metadata"})
#: The largest token count a usage row stores (the columns are PostgreSQL ``integer``).
MAX_TOKEN_COUNT = 2**31 - 1
#: The most finish reasons noted for one answer (one per choice: OpenAI takes an ``n`` of 128 at most).
MAX_FINISH_REASONS = 128


@dataclasses.dataclass
class Usage:
    """Token counts reported by the upstream (None where it reported nothing, or nothing usable)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    #: Input tokens written to the provider's prompt cache (Anthropic charges them above the input
    #: price), and of them those kept for an hour (charged more than the 5-minute ones).
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    #: True when the upstream reported something that is not a token count (kept as None).
    invalid: bool = False
    #: True when the gateway estimated the counts (the upstream never reported them).
    estimated: bool = False

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """The counts of an OpenAI ``usage`` object; whatever is not a count in range becomes None, flagged."""
        if not isinstance(usage, dict):
            return cls(invalid=usage is not None)
        flags: list[bool] = []

        def count(container: Any, name: str) -> int | None:
            if not isinstance(container, dict):
                flags.append(container is not None)
                return None
            value = container.get(name)
            if value is None or (type(value) is int and 0 <= value <= MAX_TOKEN_COUNT):
                return value
            flags.append(True)
            return None

        return cls(
            prompt_tokens=count(usage, "prompt_tokens"),
            completion_tokens=count(usage, "completion_tokens"),
            total_tokens=count(usage, "total_tokens"),
            cached_tokens=count(usage.get("prompt_tokens_details"), "cached_tokens"),
            cache_write_tokens=count(usage.get("prompt_tokens_details"), "cache_write_tokens"),
            cache_write_1h_tokens=count(usage.get("prompt_tokens_details"), "cache_write_1h_tokens"),
            reasoning_tokens=count(usage.get("completion_tokens_details"), "reasoning_tokens"),
            invalid=any(flags),
        )


@dataclasses.dataclass(slots=True, eq=False)
class ChatContext:
    """One API request on its way through the gateway (``riceball_proxy/api/chat.py``).

    Filled in stage by stage: ``principal`` by authentication, ``assistant`` by its resolution,
    ``client_body``/``body`` from the validated request, ``provider`` by provider selection. A request
    refused before a stage reaches ``riceball_request_finished`` with that stage's fields still None.
    Plugins keep their own state in ``stash`` (the class has slots: no other attribute can be added).
    """

    request_id: str
    #: The gateway's root application: its shared objects are under ``riceball_proxy.appkeys``.
    app: web.Application
    client_addr: str | None = None
    principal: Principal | None = None
    #: The assistant id the request's path names (once it is known to be one).
    assistant_id: uuid.UUID | None = None
    assistant: Assistant | None = None
    provider: Provider | None = None
    #: The target being tried, then the one that served (its model and provider price the call).
    target: Target | None = None
    #: Targets this call may not use, as (provider id, model): an admission policy's say (a USD budget
    #: never lets a call reach a target whose price nobody knows).
    barred_targets: frozenset[tuple[int, str]] = frozenset()
    #: The upstream request body (OpenAI format), changed in place by ``riceball_prepare_request``.
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The body as the client sent it: a copy of its own (nothing in it is shared with ``body``).
    client_body: dict[str, Any] = dataclasses.field(default_factory=dict)
    stream: bool = False
    #: What the client asked for in ``stream_options.include_usage``.
    client_wants_usage: bool = False
    #: When the request arrived: a monotonic clock for durations, and the wall clock for records.
    started_at: float = dataclasses.field(default_factory=time.perf_counter)
    received_at: datetime.datetime = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    first_token_at: float | None = None
    #: The error that ended an answer already under way (a stream's error event), if any.
    error: APIError | None = None
    #: The error the upstream call ended with, if it failed.
    upstream_error: APIError | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    #: Set when the gateway ends this call because it is shutting down.
    shutting_down: bool = False
    #: Free space for plugins, keyed by plugin name.
    stash: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Upstream calls made for this call (several when it failed over to fallback targets).
    attempts: int = 0
    #: True between an attempt's ``riceball_attempt_started`` and its ``riceball_attempt_finished``.
    attempt_announced: bool = False
    #: True once the call reached admission (``riceball_admit``): it is then settled as it ends.
    admission_started: bool = False
    #: Headers every answer to this call carries, whatever it is (the rate-limit headers...).
    response_headers: dict[str, str] | None = None
    #: The call's cost in USD, once it is known (``riceball_proxy.pricing``).
    cost_usd: Decimal | None = None
    #: Characters of answer relayed to the client so far: its usage, if the upstream never reports it,
    #: is estimated from them (``riceball_proxy.estimates``).
    relayed_chars: int = 0
    #: Bytes of request body this call holds in the body budget (``riceball_proxy.bodies``), given back
    #: when it ends.
    held_body_bytes: int = 0
    #: The inbound API the call came in by (``riceball_proxy.dialects``); None: Chat Completions.
    dialect: Any = None
    #: The client's request in its dialect's own form, the assistant injected in that dialect's terms:
    #: what a provider that speaks the dialect natively is sent (None for Chat Completions).
    native_body: dict[str, Any] | None = None
    #: The client's headers a provider that speaks the dialect natively is sent too (its API's version...).
    native_headers: dict[str, str] | None = None
    #: True when the target that answered was sent ``native_body`` (its answer is in the dialect's form).
    served_natively: bool = False
    #: Why the request cannot be translated to the internal form (a content block only its own API
    #: takes): the 400 a provider that does not speak the dialect answers.
    untranslatable: APIError | None = None
    #: Fields of ``body`` the gateway derived from the request in its dialect's terms, not written by the
    #: client (a Messages call's thinking as ``reasoning_effort``): left out for a target that refuses them.
    derived_fields: frozenset[str] = frozenset()
    #: What the dialect keeps for the stream it is rendering (its renderer), for its last event.
    stream_state: Any = None
    #: Tool names the dialect renamed for the internal form, and back (``dialects.anthropic_messages.ToolNames``).
    tool_names: Any = None
    #: What the upstream said of its answer, as the gateway read it on its way: the answer's id, the
    #: model that answered, and why each choice ended (``stop``, ``length``, Anthropic's ``end_turn``...).
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    #: The trace the call belongs to (32 hex digits), when a tracing plugin says so: in its access-log line.
    trace_id: str | None = None

    @property
    def resolved_assistant(self) -> Assistant:
        """``assistant``, in the stages after its resolution, where it is always set."""
        if self.assistant is None:
            raise RuntimeError("the assistant is read before it was resolved")
        return self.assistant

    @property
    def selected_provider(self) -> Provider:
        """``provider``, in the stages after a target's provider was selected."""
        if self.provider is None:
            raise RuntimeError("the provider is read before one was selected")
        return self.provider

    def take_body(self, client_body: dict[str, Any], raw: bytes) -> None:
        """Take a validated request body, parsed from ``raw``, as the client's; the upstream body is
        ``raw`` parsed again, so the two share nothing (cheaper than a deep copy).

        Streams always ask the upstream for usage (the gateway records it); whether the client asked is kept.
        """
        self.client_body = client_body
        self.body = body = parse_json(raw)
        drop_null_fields(body["messages"])  # as validation did to the client's copy
        self.stream = body.get("stream") is True
        if self.stream:
            options = body.get("stream_options") or {}
            self.client_wants_usage = options.get("include_usage") is True
            body["stream_options"] = {**options, "include_usage": True}

    def release_bodies(self) -> None:
        """Let go of the request's bulk once the answer is sent: ``body`` and ``client_body`` keep every
        field but ``BULKY_FIELDS`` (the prompt, tools and the like), so queued outcomes stay small."""
        self.body = {name: value for name, value in self.body.items() if name not in BULKY_FIELDS}
        self.client_body = {name: value for name, value in self.client_body.items() if name not in BULKY_FIELDS}
        self.native_body = None

    def note_answer(self, answer_id: Any, model: Any, finish_reasons: Any = ()) -> None:
        """Note what the upstream said of its answer (the first id and model said win; each finish
        reason is added); whatever is not a string is left out."""
        if self.response_id is None and type(answer_id) is str:
            self.response_id = answer_id[:256]
        if self.response_model is None and type(model) is str:
            self.response_model = model[:256]
        for reason in finish_reasons:
            if type(reason) is str and len(self.finish_reasons) < MAX_FINISH_REASONS:
                self.finish_reasons += (reason[:64],)

    def note_chunk(self, chunk: dict[str, Any]) -> None:
        """Note what a ``chat.completion`` or ``chat.completion.chunk`` says of the answer."""
        choices = chunk.get("choices")
        self.note_answer(chunk.get("id"), chunk.get("model"),
                         [choice.get("finish_reason") for choice in choices if type(choice) is dict]
                         if type(choices) is list else ())

    def record_usage(self, usage: Any) -> None:
        """Take the token counts of an OpenAI ``usage`` object (see :meth:`Usage.from_openai`)."""
        self.usage = Usage.from_openai(usage)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a request ended, for ``riceball_request_finished`` observers."""

    status: int
    error_type: str | None
    latency_ms: float
    ttft_ms: float | None
    usage: Usage
    #: True when the client went away before the answer was complete.
    client_disconnected: bool = False
    #: The error's code and message as the client got them (None for a success).
    error_code: str | None = None
    error_message: str | None = None
    #: USD; None when no price or no token counts are known.
    cost_usd: Decimal | None = None
