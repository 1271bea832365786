"""What a provider, an assistant (with its fallback targets) and an API key are: the one description
that the admin forms, the command line and configuration files all fill in.

Each spec holds the rules of its own object: ranges, a pair of prices, a locked parameter's value, no
target twice. A value that breaks one raises pydantic's ``ValidationError``; :func:`build` turns it into a
:class:`SpecError` whose ``problems`` each name a field path (``fallbacks[1].weight``,
``limits.budget_usd``) so that every front end can put the message where it belongs: a form beside its
field, the command line as ``field: message``, a configuration file under the object's own path. Rules
that need the database (a provider that exists, a price for a USD budget, a name nobody has) are
``riceball_proxy.services``'.

Names, not ids, refer to other objects (``provider: openai``, ``assistants: [demo]``), as a person
writes them.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from riceball_proxy.db.assistants import DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS, EFFORTS, PARAMETERS
from riceball_proxy.db.providers import DEFAULT_MAX_CONNECTIONS, DEFAULT_QUEUE_TIMEOUT
from riceball_proxy.limits import MAX_BUDGET_USD, PERIODS, Limits

#: The numeric model parameters an assistant sets: (lowest, highest, whole number). The spec checks
#: them; the admin form and the command line read their bounds here.
RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "max_tokens": (1, 2**31 - 1, True),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "seed": (-(2**63), 2**63 - 1, True),
}
#: Seconds for all attempts of one call together, and the upstream calls one call may make.
DEADLINE_RANGE = (0.1, 3600)
ATTEMPTS_RANGE = (1, 20)
#: Stop sequences at most.
MAX_STOP = 4
#: Fallback targets an assistant has at most.
MAX_FALLBACKS = 20

#: A problem with a value: (field path, message), the path empty for the object as a whole.
Problem = tuple[str, str]


class SpecError(ValueError):
    """Values that cannot make the object; ``problems`` name each field that is wrong and why."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self, prefix: str = "") -> list[str]:
        """Each problem as ``path: message``, the paths under ``prefix`` (``assistants[2]``)."""
        return [f"{join(prefix, path) or 'the file'}: {message}" for path, message in self.problems]


class RuleError(ValueError):
    """Raised by a spec's own rules, with the problems it found: their paths relative to the spec (or,
    raised by a field's validator, to the object that holds the field)."""

    def __init__(self, problems: list[Problem], *, beside: bool = False):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems
        #: Raised by a field's validator: the paths are the field's siblings'.
        self.beside = beside


def join(prefix: str, path: str) -> str:
    """``prefix`` and ``path`` as one field path (``assistants[0]`` + ``limits.rpm``)."""
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def path_of(loc: Iterable[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def problems_of(exc: ValidationError) -> list[Problem]:
    """pydantic's errors as problems, in words a person reads."""
    problems: list[Problem] = []
    for error in exc.errors():
        path, kind = path_of(error["loc"]), error["type"]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, RuleError):
            loc = error["loc"][:-1] if cause.beside else error["loc"]
            problems += [(join(path_of(loc), inner), message) for inner, message in cause.problems]
            continue
        if kind == "missing":
            message = "is required"
        elif kind == "extra_forbidden":
            message = "is not a known field"
        elif kind == "value_error":
            message = str(cause)
        elif kind == "string_pattern_mismatch" and path.endswith("base_url"):
            message = "must be an http:// or https:// URL"
        elif kind == "string_too_short":
            least = error["ctx"]["min_length"]
            message = "must not be empty" if least == 1 else f"must be at least {least} characters"
        elif kind == "string_too_long":
            message = f"must be at most {error['ctx']['max_length']:,} characters"
        elif kind in ("too_long", "too_short"):
            bound = error["ctx"]["max_length" if kind == "too_long" else "min_length"]
            message = f"must have at {'most' if kind == 'too_long' else 'least'} {bound} item{'s' * (bound != 1)}"
        elif kind in ("int_parsing", "int_from_float"):
            message = "must be a whole number"
        elif kind in ("float_parsing", "decimal_parsing", "finite_number"):
            message = "must be a number"
        else:
            message = error["msg"]
            if message.startswith("Input should be"):
                message = "must be" + message[len("Input should be"):]
            elif message.startswith("Input "):
                message = message[len("Input "):]
        problems.append((path, message))
    return problems


Spec = TypeVar("Spec", bound=BaseModel)


def build(spec: type[Spec], data: Mapping[str, Any]) -> Spec:
    """``data`` checked as a ``spec``; SpecError naming every problem otherwise."""
    try:
        return spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_of(exc)) from None


# --- value types -----------------------------------------------------------------------------------


def between(low: float, high: float):
    """A check that a number lies in [low, high], saying so in those words."""

    def check(value):
        if value is not None and not low <= value <= high:  # NaN fails too
            raise ValueError(f"must be between {_text(low)} and {_text(high)}")
        return value

    return AfterValidator(check)


def _text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _decimal_places(places: int):
    def check(value: Decimal | None) -> Decimal | None:
        exponent = value.as_tuple().exponent if value is not None else 0
        if isinstance(exponent, int) and exponent < -places:
            raise ValueError(f"must have at most {places} decimal places")
        return value

    return AfterValidator(check)


def _json_value(value: Any) -> Any:
    """Only what JSON can hold (YAML also has dates, sets, binary...)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        raise ValueError("must hold only JSON values (text, numbers, booleans, null, lists, mappings)") from None


def _budget(value: Decimal) -> Decimal:
    if not 0 < value <= MAX_BUDGET_USD:
        raise ValueError(f"must be an amount of USD above 0 and at most {MAX_BUDGET_USD:,}")
    return value


def _newlines(value: Any) -> Any:
    """Text with every line ending a ``\\n`` (a browser sends ``\\r\\n``)."""
    return value.replace("\r\n", "\n").replace("\r", "\n") if isinstance(value, str) else value


def _stop(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _parameter(name: str):
    low, high, whole = RANGES[name]
    return Annotated[int if whole else float, between(low, high)] | None


Name = Annotated[str, Field(min_length=1, max_length=200)]
Model = Annotated[str, Field(min_length=1, max_length=300)]
Seconds = Annotated[float, between(0.001, 86_400)]
Amount = Annotated[Decimal, between(0, 10**9 - 1), _decimal_places(6)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_value)]
Parameter = Literal[PARAMETERS]  # type: ignore[valid-type]  # the tuple, read at run time


class Strict(BaseModel):
    """Unknown fields are mistakes, not extensions."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the specs -------------------------------------------------------------------------------------


class LimitsSpec(Strict):
    rpm: Annotated[int, between(1, 2**31 - 1)] | None = None
    tpm: Annotated[int, between(1, 2**31 - 1)] | None = None
    max_parallel: Annotated[int, between(1, 2**31 - 1)] | None = None
    budget_usd: Annotated[Decimal, AfterValidator(_budget), _decimal_places(6)] | None = None
    budget_tokens: Annotated[int, between(1, 2**62)] | None = None
    budget_period: Literal[PERIODS] = "month"  # type: ignore[valid-type]  # the tuple, read at run time

    def limits(self) -> Limits:
        return Limits(**self.model_dump())

    @classmethod
    def of(cls, limits: Limits) -> dict[str, Any]:
        """``limits`` as a spec's data, without the defaults."""
        return {name: getattr(limits, name) for name in cls.model_fields
                if getattr(limits, name) is not None and cls.model_fields[name].default != getattr(limits, name)}


class PricesSpec(Strict):
    """USD per million tokens: input and output, or neither; the cache prices beside them."""

    input: Amount | None = None
    output: Amount | None = None
    #: Input read from the prompt cache (default: the input price).
    cached_input: Amount | None = None
    #: Input written to the prompt cache (default: 1.25 times the input price).
    cache_write: Amount | None = None

    @model_validator(mode="after")
    def _pairs(self):
        problems: list[Problem] = []
        if self.input is None and self.output is not None:
            problems.append(("input", "set an input price beside the output price, or neither"))
        if self.output is None and self.input is not None:
            problems.append(("output", "set an output price beside the input price, or neither"))
        if self.input is None and self.output is None:
            problems += [(name, "a cache price needs the input and output prices")
                         for name in ("cached_input", "cache_write") if getattr(self, name) is not None]
        if problems:
            raise RuleError(problems)
        return self

    def as_tuple(self):
        return self.input, self.output, self.cached_input, self.cache_write

    @classmethod
    def of(cls, prices) -> dict[str, Any]:
        """(input, output, cache read, cache write) as a spec's data, without those not set."""
        return {name: price for name, price in zip(cls.model_fields, prices) if price is not None}


def prices_of(spec: PricesSpec | None):
    """A spec's prices as the four (input, output, cache read, cache write) an assistant or target stores."""
    return (None, None, None, None) if spec is None else spec.as_tuple()


class ProviderSpec(Strict):
    name: Name
    type: Annotated[str, Field(min_length=1, max_length=100)]
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+", max_length=2000)]
    #: The upstream's key: ``${ENV_NAME}`` in a file (or, with a warning, the key itself).
    api_key: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    #: A file holding the upstream's key (surrounding white space is ignored).
    api_key_file: Path | None = None
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 300.0
    max_connections: Annotated[int, between(1, 100_000)] = DEFAULT_MAX_CONNECTIONS
    queue_timeout: Annotated[float, between(0, 3600)] = DEFAULT_QUEUE_TIMEOUT

    @model_validator(mode="after")
    def _one_secret(self):
        if self.api_key is not None and self.api_key_file is not None:
            raise RuleError([("api_key_file", "give api_key or api_key_file, not both")])
        return self

    @classmethod
    def of(cls, provider) -> dict[str, Any]:
        """A stored provider as a spec's data (its key apart: it is never read back out)."""
        return {"name": provider.name, "type": provider.type, "base_url": provider.base_url,
                "connect_timeout": provider.connect_timeout, "read_timeout": provider.read_timeout,
                "max_connections": provider.max_connections, "queue_timeout": provider.queue_timeout}

    def settings(self) -> dict[str, Any]:
        """What the providers table stores besides the name and the key."""
        return {"type": self.type, "base_url": self.base_url.rstrip("/"), "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout, "max_connections": self.max_connections,
                "queue_timeout": self.queue_timeout}


class TargetSpec(Strict):
    provider: Name
    model: Model
    #: 0: shares the primary's calls by weight; 1, 2...: tried when those before failed. Default: its place.
    priority: Annotated[int, between(0, 100)] | None = None
    weight: Annotated[int, between(1, 1000)] = 1
    params: JsonObject = {}
    #: What this target's calls cost, when neither the assistant's prices (same model) nor genai-prices say.
    prices: PricesSpec | None = None


class AssistantSpec(Strict):
    name: Name
    provider: Name
    model: Model
    system_prompt: Annotated[str, BeforeValidator(_newlines), Field(max_length=100_000)] = ""
    temperature: _parameter("temperature") = None  # type: ignore[valid-type]
    top_p: _parameter("top_p") = None  # type: ignore[valid-type]
    max_tokens: _parameter("max_tokens") = None  # type: ignore[valid-type]
    presence_penalty: _parameter("presence_penalty") = None  # type: ignore[valid-type]
    frequency_penalty: _parameter("frequency_penalty") = None  # type: ignore[valid-type]
    seed: _parameter("seed") = None  # type: ignore[valid-type]
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_stop),
                    Field(min_length=1, max_length=MAX_STOP)] | None = None
    reasoning_effort: Literal[EFFORTS] | None = None  # type: ignore[valid-type]
    #: Parameters whose value here wins over the client's.
    locked: list[Parameter] = []
    extra_params: JsonObject = {}
    allow_client_system: bool = True
    enabled: bool = True
    limits: LimitsSpec = LimitsSpec()
    prices: PricesSpec | None = None
    fallbacks: Annotated[list[TargetSpec], Field(max_length=MAX_FALLBACKS)] = []
    deadline: Annotated[float, between(*DEADLINE_RANGE)] = DEFAULT_DEADLINE
    max_attempts: Annotated[int, between(*ATTEMPTS_RANGE)] = DEFAULT_MAX_ATTEMPTS
    expose_target: bool = False
    #: Prompt-cache breakpoints on the system prompt and the last turn of calls that set none.
    auto_cache: bool = False

    @field_validator("locked")
    @classmethod
    def _locks_have_values(cls, locked: list[str], info: ValidationInfo) -> list[str]:
        # info.data holds the fields before this one that were valid: a bad value is reported on its own
        problems = [(name, "a locked parameter needs a value")
                    for name in dict.fromkeys(locked) if name in info.data and info.data[name] is None]
        if problems:
            raise RuleError(problems, beside=True)
        return locked

    @model_validator(mode="after")
    def _no_target_twice(self):
        problems: list[Problem] = []
        seen = {(self.provider, self.model)}
        for n, target in enumerate(self.fallbacks):
            if (target.provider, target.model) in seen:
                problems.append((f"fallbacks[{n}]", f"the target {target.provider}:{target.model} is listed twice"))
            seen.add((target.provider, target.model))
        if problems:
            raise RuleError(problems)
        return self

    @property
    def parameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMETERS if getattr(self, name) is not None}

    @classmethod
    def of(cls, assistant, provider_names: Mapping[int, str]) -> dict[str, Any]:
        """A stored assistant as a spec's data (defaults included), its providers by name."""
        return {
            "name": assistant.name, "provider": provider_names[assistant.provider_id], "model": assistant.model,
            "system_prompt": assistant.system_prompt, **assistant.parameters,
            "locked": [name for name in PARAMETERS if name in assistant.locked],
            "extra_params": dict(assistant.extra_params), "allow_client_system": assistant.allow_client_system,
            "enabled": assistant.enabled, "limits": LimitsSpec.of(assistant.limits),
            "prices": PricesSpec.of(assistant.prices) or None,
            "fallbacks": [{"provider": provider_names[target.provider_id], "model": target.model,
                           "priority": target.priority, "weight": target.weight, "params": dict(target.params),
                           "prices": PricesSpec.of(target.prices) or None} for target in assistant.fallbacks],
            "deadline": assistant.deadline, "max_attempts": assistant.max_attempts,
            "expose_target": assistant.expose_target, "auto_cache": assistant.auto_cache,
        }


class KeySpec(Strict):
    name: Name
    #: The assistants (by name) the key may call; absent: every assistant.
    assistants: list[Name] | None = None
    expires_at: datetime.datetime | None = None
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _aware(self):
        if self.expires_at is not None and self.expires_at.tzinfo is None:  # a time without a zone is UTC
            object.__setattr__(self, "expires_at", self.expires_at.replace(tzinfo=datetime.timezone.utc))
        return self
