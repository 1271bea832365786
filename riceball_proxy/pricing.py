"""What a call costs in USD: the assistant's own price when the operator set one, else the price the
``genai-prices`` library knows for the provider and model, else unknown (None).

Prices are USD per million tokens. ``genai-prices`` is asked once per provider type and model (its
look-up costs a fraction of a millisecond, too much for every call); a model priced in tiers is priced
at its first tier.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from decimal import Decimal

from riceball_proxy.context import Usage

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
#: Budgets in USD are counted in whole nano-dollars (exact integers, in every counter backend).
NANO = Decimal(1_000_000_000)
#: What a prompt-cache write costs, times the input price, kept 5 minutes and an hour (Anthropic's prices).
CACHE_WRITE = Decimal("1.25")
CACHE_WRITE_1H = Decimal(2)
#: The provider types whose ``genai-prices`` provider has another name.
GENAI_PROVIDER_IDS = {"gemini": "google"}


@dataclasses.dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    #: ``assistant`` (the operator's) or ``genai-prices``.
    source: str
    #: Input written to the prompt cache, for 5 minutes and for an hour (None: Anthropic's rule, 1.25 and
    #: 2 times the input price).
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal | None:
        """The cost of these token counts, None when the counts are not known: input read from the cache
        at its price, input written to it at the write prices, the rest at the input price."""
        if usage.prompt_tokens is None or usage.completion_tokens is None:
            return None
        cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
        written = min(usage.cache_write_tokens or 0, usage.prompt_tokens - cached)
        hour = min(usage.cache_write_1h_tokens or 0, written)
        write = self.input * CACHE_WRITE if self.cache_write is None else self.cache_write
        write_1h = self.input * CACHE_WRITE_1H if self.cache_write_1h is None else self.cache_write_1h
        return (self.input * (usage.prompt_tokens - cached - written) + self.cached_input * cached
                + write * (written - hour) + write_1h * hour + self.output * usage.completion_tokens) / MILLION

    def nano_usd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The most that many tokens cost (cached input at the full price), in nano-dollars, rounded up."""
        return math.ceil((self.input * prompt_tokens + self.output * completion_tokens) * 1000)


def operator_price(prices) -> Price | None:
    """The operator's prices (input, output, cache read, cache write) as a Price; None without input and
    output prices. Cache reads default to the input price, 5-minute cache writes to 1.25 times it, and
    1-hour writes are twice the input price."""
    price_input, price_output, cache_read, cache_write = prices
    if price_input is None or price_output is None:
        return None
    return Price(price_input, price_output, price_input if cache_read is None else cache_read, "assistant",
                 cache_write=cache_write)


def target_price(assistant, target, provider_type: str | None) -> Price | None:
    """What a call of ``assistant`` costs when ``target`` (the primary or a fallback, on a provider of
    ``provider_type``) serves it: the target's own prices when the operator set them; else the
    assistant's, which are its own model's, when that model serves; else the price genai-prices knows
    for that provider type and model; else None."""
    return (operator_price(target.prices)
            or (operator_price(assistant.prices) if target.model == assistant.model else None)
            or model_price(provider_type, target.model))


def call_price(ctx) -> Price | None:
    """The price of a call (a ``ChatContext``): that of the target that served it (or, before an
    answer, the one being tried), on its provider."""
    if ctx.assistant is None:
        return None
    target = ctx.target if ctx.target is not None else ctx.assistant.targets[0]
    return target_price(ctx.assistant, target, ctx.provider.type if ctx.provider else None)


async def unpriced_targets(db, model: str, prices, provider, fallbacks) -> list[str]:
    """The targets of an assistant-to-be whose calls have no known price, as ``'model' on 'provider'``:
    the rule every front end applies to an assistant's USD budget, which needs a price for every target
    a call may reach.

    ``prices`` are the assistant's (input, output, cache read, cache write), ``provider`` its primary's
    row, ``fallbacks`` its fallback targets.
    """
    from riceball_proxy.db import providers

    known = {provider.id: provider} if provider is not None else {}
    missing = []
    for provider_id, target_model, own in [(provider.id if provider else None, model, prices),
                                           *((t.provider_id, t.model, t.prices) for t in fallbacks)]:
        if provider_id is not None and provider_id not in known:
            known[provider_id] = await providers.get(db, provider_id)
        row = known.get(provider_id)
        if operator_price(own) or (target_model == model and operator_price(prices)) \
                or model_price(row.type if row else None, target_model):
            continue
        missing.append(f"{target_model!r} on {row.name if row else provider_id!r}")
    return missing


def model_price(provider_type: str | None, model: str) -> Price | None:
    """The price ``genai-prices`` knows for a model on a provider of this type, or None."""
    if provider_type is None:
        return None
    return library_price(GENAI_PROVIDER_IDS.get(provider_type, provider_type), model)


@functools.lru_cache(maxsize=1024)
def library_price(provider_id: str, model: str) -> Price | None:
    """``genai-prices``' price for a model of a provider (cached), or None when it knows none."""
    try:
        import genai_prices
    except ImportError:  # pragma: no cover - a dependency; an install without it prices nothing
        return None

    def per_million(**tokens: int) -> Decimal:
        usage = genai_prices.Usage(**{name: count * 1000 for name, count in tokens.items()})
        return genai_prices.calc_price(usage, model, provider_id=provider_id).total_price * 1000

    try:
        return Price(input=per_million(input_tokens=1), output=per_million(output_tokens=1),
                     cached_input=per_million(input_tokens=1, cache_read_tokens=1), source="genai-prices",
                     cache_write=per_million(input_tokens=1, cache_write_tokens=1))
    except LookupError:
        return None
    except Exception:  # the library's data or rules went wrong: no price rather than a failed call
        logger.exception("genai-prices could not price %s on %s", model, provider_id)
        return None


async def assistant_budget_problem(db, limits, model: str, prices, provider, fallbacks) -> str | None:
    """Why an assistant-to-be cannot have its USD budget, in the words every front end shows (beside
    the budget field); None when it can. The rule: a USD budget needs a known price for every target a
    call may reach (``unpriced_targets``)."""
    if limits.budget_usd is None:
        return None
    missing = await unpriced_targets(db, model, prices, provider, fallbacks)
    if not missing:
        return None
    return (f"no price is known for {', '.join(missing)}: a USD budget needs one for every target; give the "
            "assistant prices (for its model) or that fallback its own, choose fallbacks of known price, or use "
            "a budget in tokens")


async def key_budget_problem(db, limits, assistant_ids) -> tuple[str | None, list[str]]:
    """Why a key-to-be cannot have its USD budget (no assistant it may call has a known price), in the
    words every front end shows, or None; and the names of the assistants it may call whose calls have
    no known price (under the budget they may not reach those targets)."""
    if limits.budget_usd is None:
        return None, []
    priced, unknown = await unpriced(db, None if assistant_ids is None else set(assistant_ids))
    if priced:
        return None, unknown
    return (f"no assistant this key may call has a known price ({', '.join(unknown) or 'none'}), so a USD "
            "budget cannot be counted: give them prices, or use a budget in tokens"), unknown


async def unpriced(db, assistant_ids=None) -> tuple[list[str], list[str]]:
    """The names of the assistants (those of ``assistant_ids``, or every one) whose every target's calls
    have a known price, and of those with a target whose have none."""
    from riceball_proxy.db import assistants, providers

    types = {provider.id: provider.type for provider in await providers.list_all(db)}
    priced: list[str] = []
    unknown: list[str] = []
    for assistant in await assistants.list_all(db):
        if assistant_ids is None or assistant.id in assistant_ids:
            known = all(target_price(assistant, target, types.get(target.provider_id)) is not None
                        for target in assistant.targets)
            (priced if known else unknown).append(assistant.name)
    return priced, unknown
