"""The limits policy for one call: what it must check, what it reserves, the headers and the refusals
its client gets, and what it gives back when it ends. The built-in plugin
``riceball_proxy.builtin.limits`` calls :class:`Limiter` from the ``riceball_admit`` and
``riceball_settle`` hooks.

A call is checked against its key's limits and its assistant's (the tighter wins, since both must
admit it). Before it goes upstream it reserves its worst case: one request, its prompt's tokens
(estimated from the text: about one token per 3 characters, a fixed 1,000 per image or audio part) plus
its ceiling on answer tokens (``max_tokens`` or ``max_completion_tokens`` times ``n``), and their
cost at the price of the dearest target it may reach (a fallback may cost more than the primary).
Under a USD budget a call never goes to a target whose price nobody knows. When it ends, the
reservation is settled to what the upstream reported using, or, when it reported nothing (a client
gone before the usage chunk, an upstream that sends none), to the gateway's estimate of it
(``riceball_proxy.estimates``, flagged on the usage row); a call that failed before an answer gives
it all back. A call with no ceiling reserves its prompt alone, so a budget can be overshot by at most
the answers of the calls in flight.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import cachetools

from riceball_proxy import appkeys
from riceball_proxy.cache import ProviderNotInstalled
from riceball_proxy.context import ChatContext, Outcome
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimate_prompt_tokens
from riceball_proxy.limits import Limits, period_bounds
from riceball_proxy.limits.counters import Bucket, Budget, Busy, Counters, Decision, Settlement, Slots, Unavailable
from riceball_proxy.pricing import NANO, target_price

logger = logging.getLogger(__name__)

#: Seconds the shared counters are not asked again after they failed (fail-open or -closed meanwhile).
RETRY_UNAVAILABLE_AFTER = 1.0


@dataclasses.dataclass(slots=True)
class Reservation:
    """What an admitted call took: kept in ``ctx.stash["limits"]`` until it is settled."""

    tokens: int
    nano_usd: int
    token_buckets: list[Bucket]
    budgets: list[Budget]
    slots: list[Slots]


#: What this process's call ids begin with, and their numbers (made anew in a forked child).
_CALLS_PREFIX: str
_calls: Iterator[int]


def _reseed() -> None:
    global _CALLS_PREFIX, _calls
    _CALLS_PREFIX = f"{os.getpid()}-{uuid.uuid4().hex[:12]}-"
    _calls = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)  # call ids never repeat across processes


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one key's or assistant's limits check, worked out once (per budget period) and kept."""

    rpm: Bucket | None
    tpm_key: str
    slots_key: str
    #: (key, limit in units, "usd" | "tokens", source) per budget.
    budgets: tuple[tuple[str, int, str, tuple], ...]
    #: When the budget period ends (epoch ms), and with it this plan; None: never.
    period_ends_ms: float | None

    @classmethod
    def of(cls, scope: str, owner: Any, limits: Limits, now_ms: float) -> Plan:
        prefix = f"{scope[0]}:{owner}"
        budgets: list = []
        ends_ms = None
        if limits.has_budget:
            start, end = period_bounds(limits.budget_period, datetime.fromtimestamp(now_ms / 1000, timezone.utc))
            period = "total" if start is None else f"{limits.budget_period}:{start:%Y%m%d}"
            ends_ms = None if end is None else end.timestamp() * 1000
            for kind, limit in (("usd", limits.budget_usd), ("tokens", limits.budget_tokens)):
                if limit is not None:
                    budgets.append((f"{prefix}:budget:{kind}:{period}", int(limit * NANO) if kind == "usd" else limit,
                                    kind, (scope, owner, kind, start, end, limits.budget_period)))
        return cls(rpm=Bucket(f"{prefix}:rpm", limits.rpm, 1) if limits.rpm else None, tpm_key=f"{prefix}:tpm",
                   slots_key=f"{prefix}:parallel", budgets=tuple(budgets), period_ends_ms=ends_ms)


class Limiter:
    """Admits and settles calls against the limits of their key and assistant, on ``counters``."""

    def __init__(self, counters: Counters, *, load_spent, fail_open: bool = True, metrics=None):
        self.counters = counters
        #: ``async (scope, id, since, db) -> (nano_usd, tokens)``: what the usage table says was spent.
        self.load_spent = load_spent
        self.fail_open = fail_open
        self.metrics = metrics
        self._down_until = 0.0
        #: The clock the counters' absence is timed on (a test moves its own instead of waiting).
        self.clock: Callable[[], float] = time.monotonic
        #: (scope, owner, limits) -> its Plan; bounded, the least recently used go first.
        self._plans: cachetools.LRUCache = cachetools.LRUCache(maxsize=10_000)
        if metrics is not None:
            counters.on_lost = metrics.settlements_lost.inc

    async def admit_caller(self, ctx: ChatContext) -> None:
        """Take the call's slots (``max_parallel`` of its key and of its assistant) before its body is read,
        so that a caller over them never has its body read and parsed; :meth:`admit` takes the rest."""
        checks: list = []
        for scope, limits, owner in self._scopes(ctx):
            if limits and limits.max_parallel:
                checks.append(Slots(self._plan(scope, owner, limits, time.time() * 1000).slots_key,
                                    limits.max_parallel, f"{_CALLS_PREFIX}{next(_calls)}"))
        if not checks:
            return
        decision = await self._decide(ctx, checks)
        if decision is None:
            return  # the counters are away and calls are admitted meanwhile
        ctx.stash["limits"] = Reservation(0, 0, [], [], checks)

    def _scopes(self, ctx: ChatContext):
        return (("key", ctx.principal.limits if ctx.principal is not None else None,
                 ctx.principal and ctx.principal.key_id),
                ("assistant", ctx.resolved_assistant.limits, ctx.resolved_assistant.id))

    async def _decide(self, ctx: ChatContext, checks: list) -> Decision | None:
        """Ask the counters about ``checks``: the decision when admitted, APIError when refused, None when
        the counters are away and calls are admitted meanwhile."""
        if self.clock() < self._down_until:
            self._unavailable(None)
            return None
        try:
            decision = await self.counters.admit(checks, self._load)
            refused = decision.refused
            if not decision.admitted and refused is not None and not isinstance(refused, Bucket) \
                    and await self.counters.settle_first({refused.key}):
                # Calls that just ended here gave back to the counter that refused: ask again.
                decision = await self.counters.admit(checks, self._load)
        except Busy as exc:  # the counters are there but overwhelmed: this call alone waits no longer
            logger.warning("limit counters (%s) busy: call %s refused: %s", self.counters.name, ctx.request_id, exc)
            if self.metrics is not None:
                self.metrics.limited("busy")
            raise APIError(503, "The gateway is too busy to check this API key's limits right now. Try again "
                                "shortly.", type="server_error", code="limits_busy",
                           headers={"Retry-After": "1"}) from None
        except Unavailable as exc:
            self._down_until = self.clock() + RETRY_UNAVAILABLE_AFTER
            self._unavailable(exc)
            return None
        headers = rate_headers(checks, decision)
        if headers:  # beside those another admission plugin may have set
            ctx.response_headers = {**(ctx.response_headers or {}), **headers}
        if not decision.admitted:
            if self.metrics is not None:
                self.metrics.limited(type(decision.refused).__name__.lower())
            raise refusal(decision, estimate_prompt_tokens(ctx.body), answer_ceiling(ctx.body))
        return decision

    async def admit(self, ctx: ChatContext) -> None:
        key_limits = ctx.principal.limits if ctx.principal is not None else None
        assistant_limits = ctx.resolved_assistant.limits
        if not key_limits and not assistant_limits:
            return  # nothing to count: no round trip
        early = ctx.stash.get("limits")  # the slots admit_caller took, if it ran
        prompt = estimate_prompt_tokens(ctx.body)
        tokens = prompt + answer_ceiling(ctx.body)
        usd_budget = (key_limits is not None and key_limits.budget_usd is not None) \
            or (assistant_limits is not None and assistant_limits.budget_usd is not None)
        nano_usd = await self._dearest(ctx, prompt, tokens - prompt) if usd_budget else 0
        now = time.time() * 1000
        checks: list = []
        reservation = Reservation(tokens, nano_usd, [], [], [])
        for scope, limits, owner in self._scopes(ctx):
            if limits:
                self._checks(checks, reservation, scope, owner, limits, tokens, nano_usd, now,
                             slots=early is None, prompt=prompt)
        if checks and await self._decide(ctx, checks) is None:
            return  # the counters are away and calls are admitted meanwhile
        if early is not None:
            reservation.slots = early.slots  # taken before the body was read
        ctx.stash["limits"] = reservation

    async def _dearest(self, ctx: ChatContext, prompt: int, answer: int) -> int:
        """The most (nano-USD) this call can cost on any target it may reach, and the targets it may not
        reach because nobody knows their price (``ctx.barred_targets``): a USD budget is never spent
        uncounted. 403 when no target of the assistant has a known price."""
        assistant, cache = ctx.resolved_assistant, ctx.app[appkeys.CONFIG_CACHE]
        dearest, barred = None, set()
        for target in assistant.targets:
            if ctx.provider is not None and target.provider_id == ctx.provider.id:
                provider_type = ctx.provider.type
            else:
                try:
                    provider_type = (await cache.provider(target.provider_id))[0].type
                except (LookupError, ProviderNotInstalled):
                    provider_type = None  # the call cannot go there anyway
            price = target_price(assistant, target, provider_type)
            if price is None:
                barred.add((target.provider_id, target.model))
            else:
                cost = price.nano_usd(prompt, answer)
                dearest = cost if dearest is None else max(dearest, cost)
        if dearest is None:
            raise APIError(403, "This call is under a USD budget, and no price is known for the model of this "
                                "assistant: its calls could not be counted. Ask the operator to set the assistant's "
                                "prices, or to use a budget in tokens.", type="permission_error",
                           code="budget_needs_price")
        if barred:
            ctx.barred_targets = ctx.barred_targets | barred
        return dearest

    def _plan(self, scope: str, owner: Any, limits: Limits, now: float) -> Plan:
        plan = self._plans.get((scope, owner, limits))
        if plan is None or (plan.period_ends_ms is not None and now >= plan.period_ends_ms):
            plan = self._plans[scope, owner, limits] = Plan.of(scope, owner, limits, now)
        return plan

    def _checks(self, checks: list, reservation: Reservation, scope: str, owner: Any, limits: Limits,
                tokens: int, nano_usd: int, now: float, *, slots: bool = True, prompt: int = 0) -> None:
        plan = self._plan(scope, owner, limits, now)
        if plan.rpm:
            checks.append(plan.rpm)
        if limits.tpm:
            if tokens > limits.tpm:
                ceiling = tokens - prompt
                made_of = (f"its prompt of about {prompt:,} tokens and its max_tokens of {ceiling:,}" if ceiling
                           else "its prompt; it sets no max_tokens")
                raise APIError(429, f"This request needs about {tokens:,} tokens ({made_of}), more than the "
                                    f"{limits.tpm:,} tokens per minute this {_whose(scope)} may use. "
                                    + ("Send a shorter request or a lower max_tokens." if ceiling
                                       else "Send a shorter request."),
                               type="tokens", code="rate_limit_exceeded", param="max_tokens" if ceiling else None,
                               headers={"x-should-retry": "false"})
            bucket = Bucket(plan.tpm_key, limits.tpm, tokens)
            checks.append(bucket)
            reservation.token_buckets.append(bucket)
        if limits.max_parallel and slots:
            slot = Slots(plan.slots_key, limits.max_parallel, f"{_CALLS_PREFIX}{next(_calls)}")
            checks.append(slot)
            reservation.slots.append(slot)
        for key, units, kind, source in plan.budgets:
            budget = Budget(key, units, nano_usd if kind == "usd" else tokens, plan.period_ends_ms, source)
            checks.append(budget)
            reservation.budgets.append(budget)

    async def _load(self, budget: Budget, db=None) -> int:
        scope, owner, kind, start, *_ = budget.source
        nano_usd, tokens = await self.load_spent(scope, owner, start, db)
        return nano_usd if kind == "usd" else tokens

    def _unavailable(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.warning("limit counters (%s) unavailable, calls are %s until they are back: %s",
                           self.counters.name, "admitted" if self.fail_open else "refused", exc)
        if self.metrics is not None:
            self.metrics.limits_unavailable(self.counters.name)
        if not self.fail_open:
            raise APIError(503, "The gateway cannot check this API key's limits right now. Try again shortly.",
                           type="server_error", code="limits_unavailable", headers={"Retry-After": "1"})

    async def settle(self, ctx: ChatContext, outcome: Outcome) -> None:
        reservation = ctx.stash.pop("limits", None)
        if reservation is None:
            return
        usage = outcome.usage
        used_tokens = usage.total_tokens
        if used_tokens is None and usage.prompt_tokens is not None:
            used_tokens = usage.prompt_tokens + (usage.completion_tokens or 0)
        if used_tokens is not None:  # reported, or estimated when the upstream never said (stages.finish)
            tokens_delta = used_tokens - reservation.tokens
            cost = outcome.cost_usd
            usd_delta = (math.ceil(cost * NANO) if cost is not None else 0) - reservation.nano_usd
        else:  # no upstream worked on it (refused, failed before answering, or never asked): nothing used
            tokens_delta, usd_delta = -reservation.tokens, -reservation.nano_usd
        budgets = tuple((budget, usd_delta if ":budget:usd:" in budget.key else tokens_delta)
                        for budget in reservation.budgets)
        settlement = Settlement(buckets=tuple((bucket, tokens_delta) for bucket in reservation.token_buckets),
                                budgets=budgets, slots=tuple(reservation.slots))
        await self.counters.settle(settlement)  # memory: at once; shared: queued until applied (counters.py)

    async def close(self) -> None:
        """Send the settlements still queued, then let go of the counters' connections."""
        await self.counters.close()


def _whose(scope: str) -> str:
    return "API key" if scope == "key" else "assistant"


def answer_ceiling(body: dict) -> int:
    """The most answer tokens the request allows (0 when it sets no ceiling)."""
    ceiling = body.get("max_completion_tokens")
    if not isinstance(ceiling, int) or isinstance(ceiling, bool):
        ceiling = body.get("max_tokens")
    if not isinstance(ceiling, int) or isinstance(ceiling, bool) or ceiling < 0:
        return 0
    n = body.get("n")
    return ceiling * (n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)


def duration(ms: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(0, math.ceil(ms))}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, seconds = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{seconds}s"


def rate_headers(checks: list, decision: Decision) -> dict[str, str] | None:
    """OpenAI's ``x-ratelimit-*`` headers, for the tightest request and token limits this call met."""
    headers: dict[str, str] = {}
    for kind, suffix in (("rpm", "requests"), ("tpm", "tokens")):
        tightest = None
        for check in checks:
            if isinstance(check, Bucket) and check.key.endswith(kind) and check.key in decision.buckets:
                remaining, reset_ms = decision.buckets[check.key]
                if tightest is None or remaining < tightest[1]:
                    tightest = (check.per_minute, remaining, reset_ms)
        if tightest is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(tightest[0])
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(tightest[1], 0))
            headers[f"x-ratelimit-reset-{suffix}"] = duration(tightest[2])
    return headers or None


def refusal(decision: Decision, prompt: int = 0, ceiling: int = 0) -> APIError:
    """The 429 for a refused call, in OpenAI's words: ``rate_limit_exceeded`` or ``insufficient_quota``
    (``prompt``: the tokens its prompt is estimated at; ``ceiling``: its answer's, 0 when none is set)."""
    check = decision.refused
    if check is None:
        raise ValueError("a decision that refused nothing")
    scope = "key" if check.key.startswith("k:") else "assistant"
    retry_after = max(1, math.ceil(decision.retry_after_ms / 1000))
    if isinstance(check, Budget):
        _, _, kind, _, end, period = check.source

        def worth(units: int) -> str:
            return f"${units / NANO:,.2f}" if kind == "usd" else f"{units:,} tokens"

        renews = ("it does not renew (a total budget)" if end is None
                  else f"it renews at {end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        whole = "" if end is None else f" for this {period}"
        spent = check.limit if decision.spent is None else decision.spent
        if spent < check.limit:  # some is left, but not this call's worst case
            made_of = (f"its prompt of about {prompt:,} tokens and its max_tokens of {ceiling:,}" if ceiling
                       else f"its prompt of about {prompt:,} tokens; it sets no max_tokens")
            fewer = "ask for fewer tokens (max_tokens), send a shorter prompt" if ceiling else "send a shorter prompt"
            message = (f"This call may use up to {worth(check.amount)} ({made_of}), more than the "
                       f"{worth(check.limit - spent)} left of this {_whose(scope)}'s budget of "
                       f"{worth(check.limit)}{whole}: {fewer}, or wait: {renews}.")
        else:
            message = f"This {_whose(scope)} has used its budget of {worth(check.limit)}{whole}; {renews}."
        return APIError(429, message, type="insufficient_quota", code="insufficient_quota",
                        headers={"x-should-retry": "false"})
    if isinstance(check, Slots):
        message = (f"This {_whose(scope)} already has {check.limit} calls in flight, its limit (max_parallel). "
                   "Try again when one of them has finished.")
        kind = "requests"
    else:
        kind = "requests" if check.key.endswith("rpm") else "tokens"
        unit = "requests" if kind == "requests" else "tokens"
        message = (f"Rate limit reached for this {_whose(scope)}: {check.per_minute} {unit} per minute. "
                   f"Please try again in {duration(decision.retry_after_ms)}.")
    return APIError(429, message, type=kind, code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after),
                             "retry-after-ms": str(math.ceil(decision.retry_after_ms))})
