"""Route one call over its assistant's targets: the primary, then the fallbacks, until one answers.

A target is tried only before the client has seen a byte: a non-streamed call until its answer, a
stream until its first chunk. What fails over: an upstream that cannot be reached, a timeout, 429,
500, 502, 503, 504, 529 (each becomes one of the statuses in ``FAILS_OVER``), an upstream's 401 or 403
(the gateway's own credentials refused: 502 ``upstream_auth_failed``), and an error event before the
first chunk. Any other error (a 400 is bad everywhere) is the answer. Targets of one
priority are tried in an order drawn by weight; a target whose circuit is open is skipped. All attempts
together stay within the assistant's ``deadline`` and ``max_attempts``.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from riceball_proxy import appkeys
from riceball_proxy.api.stages import select_provider
from riceball_proxy.caching import chat_with_breakpoints
from riceball_proxy.context import ChatContext
from riceball_proxy.db.assistants import Target
from riceball_proxy.errors import APIError
from riceball_proxy.providers import adapter_failed
from riceball_proxy.upstream import ATTEMPT_HEADERS, UPSTREAM_AUTH_FAILED

logger = logging.getLogger(__name__)

#: Statuses (as the adapters answer them) after which the next target is tried.
FAILS_OVER = frozenset({429, 500, 502, 503, 504, 529})
#: Consecutive failures that open a target's circuit, and its first cooldown (seconds); cooldowns double
#: up to the longest rest (``RICEBALL_MAX_UPSTREAM_REST``).
CIRCUIT_FAILURES = 3
CIRCUIT_COOLDOWN = 5.0
DEFAULT_MAX_REST = 60.0


class Circuits:
    """Each target's health in this process: consecutive failures, and until when it is skipped (wall
    clock, so that processes can share it: ``riceball_proxy.circuits_shared``).

    A rest never lasts longer than ``max_rest`` seconds, whatever an upstream's ``Retry-After`` says: one
    client's request must not keep a target from everyone for long. A 429 about one request alone (too
    large for the upstream's per-minute budget) fails the call over but neither counts nor rests.
    """

    def __init__(self, max_rest: float = DEFAULT_MAX_REST) -> None:
        #: (provider id, model) -> [consecutive failures, skipped until (epoch s), cooldown, last error, when]
        self.state: dict[tuple[int, str], list[Any]] = {}
        self.max_rest = max_rest
        #: Called with a target's key whenever its rest starts or ends (to tell the other processes).
        self.on_change: Any = None
        #: The wall clock rests are counted on (a test moves its own instead of waiting).
        self.clock: Callable[[], float] = time.time

    def closed(self, target: Target, now: float) -> bool:
        state = self.state.get((target.provider_id, target.model))
        return state is None or state[1] <= now

    def failed(self, target: Target, error: APIError, now: float) -> bool:
        """Count a failure; True when it opened the target's circuit."""
        if concerns_one_request(error):
            return False
        state = self.state.setdefault((target.provider_id, target.model), [0, 0.0, 0.0, None, None])
        state[0] += 1
        state[3], state[4] = (error.detail or error.message)[:300], self.clock()  # for the operator: the whole
        retry_after = _seconds((error.headers or {}).get("Retry-After"))
        if retry_after:
            retry_after = min(retry_after, self.max_rest)
        opened = state[0] >= CIRCUIT_FAILURES
        if opened:
            state[2] = min(self.max_rest, state[2] * 2 if state[2] else CIRCUIT_COOLDOWN)
            state[1] = now + max(state[2], retry_after or 0)
        elif retry_after:  # the upstream said when: it is skipped until then
            state[1] = now + retry_after
        if (opened or retry_after) and self.on_change is not None:
            self.on_change((target.provider_id, target.model))
        return opened

    def succeeded(self, target: Target) -> bool:
        """Forget a target's failures; True when its circuit had been opened."""
        state = self.state.pop((target.provider_id, target.model), None)
        if state is not None and state[1] and self.on_change is not None:
            self.on_change((target.provider_id, target.model))
        return state is not None and state[0] >= CIRCUIT_FAILURES

    def health(self, now: float) -> dict[tuple[int, str], dict[str, Any]]:
        """Each target with a recent failure: failures in a row, seconds of rest left, the last error and when."""
        return {key: {"failures": state[0], "resting": max(0, round(state[1] - now)), "error": state[3],
                      "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(state[4])) if state[4] else None}
                for key, state in self.state.items()}

    def open_targets(self, now: float) -> dict[tuple[int, str], float]:
        """The targets skipped now, and for how many more seconds."""
        return {key: state[1] - now for key, state in self.state.items() if state[1] > now}


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < math.inf else None


#: What an upstream says of a 429 that only one request's size caused (OpenAI: "Request too large for
#: gpt-4o ... on tokens per min"); another request may pass at once.
_ONE_REQUEST_CODES = frozenset({"request_too_large", "tokens_exceeded"})


def concerns_one_request(error: APIError) -> bool:
    """True for an upstream 429 caused by this request alone (too large), not by the upstream's load."""
    return error.status == 429 and (error.code in _ONE_REQUEST_CODES or "too large" in error.message.lower())


def ordered_targets(targets: tuple[Target, ...]) -> list[Target]:
    """The targets by priority; within one priority, an order drawn by weight."""
    ordered: list[Target] = []
    for priority in sorted({target.priority for target in targets}):
        group = [target for target in targets if target.priority == priority]
        while group:
            pick = random.choices(group, weights=[target.weight for target in group])[0]
            group.remove(pick)
            ordered.append(pick)
    return ordered


def body_for(ctx: ChatContext, target: Target) -> dict[str, Any]:
    """The prepared upstream body with the target's model and parameter overrides, without the fields the
    gateway derived that the target is known to refuse (``RefusedFields``)."""
    if ctx.resolved_assistant.as_prepared(target):
        body = ctx.body
    else:
        body = {**ctx.body, **target.params, "model": target.model}
    if ctx.derived_fields:
        refused = ctx.app[appkeys.REFUSED_FIELDS].of(target) & ctx.derived_fields
        if refused:
            body = {name: value for name, value in body.items() if name not in refused}
    return body


def without_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the signed reasoning a dialect restored on its assistant messages, for a provider
    that would not read it (or would refuse the field)."""
    return {**body, "messages": [{name: value for name, value in message.items() if name != "reasoning_details"}
                                 for message in body["messages"]]}


class RefusedFields:
    """Request fields each target refused although the gateway, not the client, put them in (a Messages
    call's thinking as ``reasoning_effort``, which a model that does not reason refuses): such a call is
    asked again without the field, and later calls to that target leave it out from the start.
    Remembered in this process, for at most ``remember`` targets (the oldest forgotten first)."""

    def __init__(self, remember: int = 1024) -> None:
        self.remember = remember
        self._fields: dict[tuple[int, str], frozenset[str]] = {}

    def of(self, target: Target) -> frozenset[str]:
        return self._fields.get((target.provider_id, target.model), frozenset())

    def add(self, target: Target, field: str) -> None:
        key = (target.provider_id, target.model)
        self._fields[key] = self._fields.pop(key, frozenset()) | {field}
        while len(self._fields) > self.remember:
            del self._fields[next(iter(self._fields))]


def refused_derived_field(ctx: ChatContext, error: APIError, body: dict[str, Any]) -> str | None:
    """The field the gateway derived (``ctx.derived_fields``) that an upstream's 400 says it refuses."""
    if error.status != 400 or not ctx.derived_fields:
        return None
    for name in ctx.derived_fields:
        if name in body and (error.param == name or name in error.message):
            return name
    return None


async def _attempt_started(ctx: ChatContext, target: Target) -> contextvars.Token | None:
    """Announce an attempt to the ``riceball_attempt_started`` hooks; the headers they give are sent
    with its upstream requests until the returned token is reset (None: none given)."""
    given = await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_attempt_started", ctx=ctx, target=target,
                                                      attempt=ctx.attempts)
    ctx.attempt_announced = True
    headers = {name: value for extra in given if isinstance(extra, dict) for name, value in extra.items()}
    return ATTEMPT_HEADERS.set(headers) if headers else None


async def _attempt_finished(ctx: ChatContext, target: Target, error: APIError | None) -> None:
    """Tell the ``riceball_attempt_finished`` hooks how the attempt announced last ended."""
    if ctx.attempt_announced:
        ctx.attempt_announced = False
        await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_attempt_finished", ctx=ctx, target=target,
                                                  attempt=ctx.attempts, error=error)


async def call_upstream(ctx: ChatContext, *, stream: bool) -> Any:
    """The first answer any target gives: a ``chat.completion`` dict, or for a stream (first payload,
    the rest of the stream). Raises the last target's error when none answered."""
    assistant = ctx.resolved_assistant
    circuits = ctx.app[appkeys.CIRCUITS]
    metrics = ctx.app[appkeys.METRICS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + assistant.deadline
    error: APIError | None = None
    targets = assistant.targets if not assistant.fallbacks else ordered_targets(assistant.targets)
    queue = collections.deque(targets)
    while queue:
        target = queue.popleft()
        now = circuits.clock()
        if len(targets) > 1 and not circuits.closed(target, now):
            continue
        if (target.provider_id, target.model) in ctx.barred_targets:
            logger.info("call %s: %s on provider %s skipped: barred by admission (no known price under a USD "
                        "budget)", ctx.request_id, target.model, target.provider_id)
            continue
        if ctx.attempts >= assistant.max_attempts:
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            error = deadline_passed(assistant.deadline)
            break
        ctx.attempts += 1
        ctx.target = target
        body = body_for(ctx, target)
        native = None
        announced = None
        try:
            adapter = await select_provider(ctx, target.provider_id)
            if "reasoning_details" in ctx.derived_fields and not adapter.reads_reasoning_details:
                body = without_reasoning(body)
            if ctx.native_body is not None and ctx.dialect.name in adapter.native_dialects:
                native = ctx.dialect.native_body_for(ctx, target)
            elif ctx.untranslatable is not None:  # the client's to fix, whichever provider would be asked
                ctx.attempts -= 1
                ctx.target = None
                error = ctx.untranslatable
                continue
            if assistant.auto_cache and adapter.cache_breakpoints:
                if native is None:
                    body = chat_with_breakpoints(body)
                else:
                    native = ctx.dialect.with_breakpoints(native)
            announced = await _attempt_started(ctx, target)
            async with asyncio.timeout(remaining):
                if stream:
                    upstream: AsyncIterator[bytes] = (
                        adapter.stream(body, request_id=ctx.request_id) if native is None else
                        adapter.stream_native(ctx.dialect.name, native, headers=ctx.native_headers,
                                              request_id=ctx.request_id))
                    try:
                        first = await anext(upstream)
                    except StopAsyncIteration:
                        first = None
                    except BaseException:
                        aclose = getattr(upstream, "aclose", None)  # an async generator, as adapters' are
                        if aclose is not None:
                            await aclose()
                        raise
                    answer: Any = (first, upstream)
                elif native is None:
                    answer = await adapter.complete(body, request_id=ctx.request_id)
                else:
                    answer = await adapter.complete_native(ctx.dialect.name, native, headers=ctx.native_headers,
                                                           request_id=ctx.request_id)
        except TimeoutError:
            error = deadline_passed(assistant.deadline)
            metrics.attempt(ctx.provider.name if ctx.provider else "-", target.model, "deadline")
            await _attempt_finished(ctx, target, error)
            break
        except Exception as caught:  # noqa: BLE001 - the boundary: plugin code's failures become APIErrors
            exc = caught if isinstance(caught, APIError) else adapter_failed(
                ctx.provider.name if ctx.provider else str(target.provider_id), caught)
            error = exc
            await _attempt_finished(ctx, target, exc)
            refused = native is None and refused_derived_field(ctx, exc, body)
            if refused:  # the gateway's own addition, not the client's: the same target again without it
                ctx.app[appkeys.REFUSED_FIELDS].add(target, refused)
                logger.info("call %s: %s on provider %s refuses %r, which the gateway derived from the request: "
                            "asked again without it (and from now on)", ctx.request_id, target.model,
                            ctx.provider.name if ctx.provider else target.provider_id, refused)
                ctx.attempts -= 1
                queue.appendleft(target)
                continue
            outcome = "failed_over" if exc.status in FAILS_OVER else "refused"
            metrics.attempt(ctx.provider.name if ctx.provider else "-", target.model, outcome)
            if exc.code == UPSTREAM_AUTH_FAILED and ctx.provider is not None:
                ctx.app[appkeys.PROVIDER_ALERTS].credentials_refused(ctx.provider, exc)
            # The upstream's own words (the client may get fewer: its 5xx page, account identifiers).
            logger.log(logging.WARNING if exc.status in FAILS_OVER else logging.INFO,
                       "call %s: attempt %d on %s %s failed (%s %s): %s", ctx.request_id, ctx.attempts,
                       ctx.provider.name if ctx.provider else target.provider_id, target.model, exc.status,
                       exc.code, (exc.detail or exc.message)[:500])
            if exc.status not in FAILS_OVER:
                break
            if circuits.failed(target, exc, circuits.clock()):
                metrics.circuit(ctx.provider.name if ctx.provider else "-", target.model, True)
            continue
        finally:
            if announced is not None:
                ATTEMPT_HEADERS.reset(announced)
        await _attempt_finished(ctx, target, None)
        provider = ctx.selected_provider
        if circuits.succeeded(target):
            metrics.circuit(provider.name, target.model, False)
        ctx.app[appkeys.PROVIDER_ALERTS].answered(provider.id)
        metrics.attempt(provider.name, target.model, "answered")
        ctx.body = body
        ctx.served_natively = native is not None
        if native is not None:
            ctx.native_body = native
        if assistant.expose_target:
            ctx.response_headers = {**(ctx.response_headers or {}), "x-riceball-provider": provider.name,
                                    "x-riceball-model": target.model}
        return answer
    if error is None:  # every target skipped: their circuits are open
        wait = min(circuits.open_targets(circuits.clock()).values(), default=1.0)
        error = APIError(503, "Every provider of this assistant is failing; they are given a rest before they are "
                              "tried again.", type="api_error", code="upstream_unavailable",
                         headers={"Retry-After": str(max(1, round(wait)))})
    ctx.upstream_error = error
    raise error


def deadline_passed(seconds: float) -> APIError:
    return APIError(504, f"The assistant's providers did not answer within its deadline of {seconds:g} s.",
                    type="api_error", code="upstream_timeout")
