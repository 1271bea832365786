"""The database's configuration as a file that ``riceball apply`` accepts and re-applies unchanged.

Defaults are left out, so the file says only what differs from them. Secrets are never written: a
provider that has a key gets ``api_key: ${NAME_API_KEY}`` (its name in capitals), a base URL with a
password or a key in it ``base_url: ${NAME_BASE_URL}``, a secret-named extra parameter
(``riceball_proxy.masking``) ``${ASSISTANT_PARAM}``; :func:`export` returns those variable names so
that the caller can say which to set.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from decimal import Decimal
from typing import Any

import yaml

from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.declared.schema import VERSION
from riceball_proxy.masking import secret_params, url_has_secret
from riceball_proxy.specs import AssistantSpec, LimitsSpec, ProviderSpec, TargetSpec


def secret_variable(provider_name: str, taken: Collection[str] = frozenset(), what: str = "API_KEY",
                    kind: str = "PROVIDER") -> str:
    """The environment variable an exported file reads a secret from: the owner's name in capitals, other
    characters as ``_`` (``PROVIDER_`` before one that would start with a digit or be empty), a number
    after it when another owner's name made the same, then what it holds (``API_KEY``, ``BASE_URL``...)."""
    stem = re.sub(r"[^A-Z0-9]+", "_", provider_name.upper()).strip("_")
    if not stem or stem[0].isdigit():
        stem = f"{kind}_{stem}" if stem else kind
    variable, n = f"{stem}_{what}", 1
    while variable in taken:
        n += 1
        variable = f"{stem}_{n}_{what}"
    return variable


def _referenced(value: Any, paths: list[tuple], name: str, variables: list[str]) -> Any:
    """A copy of a JSON value whose values at ``paths`` are ``${VARIABLE}`` references (added to
    ``variables``), named after ``name`` and each path."""
    for path in paths:
        what = re.sub(r"[^A-Z0-9]+", "_", "_".join(map(str, path)).upper()).strip("_") or "SECRET"
        variables.append(secret_variable(name, set(variables), what, kind="ASSISTANT"))
        value = _replaced(value, path, "${%s}" % variables[-1])
    return value


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


async def export(db) -> tuple[dict[str, Any], list[str]]:
    """The configuration (as plain data, in the file's shape) and the variables its secrets come from."""
    all_providers = await providers.list_all(db)
    provider_names = {provider.id: provider.name for provider in all_providers}
    all_assistants = await assistants.list_all(db)
    assistant_names = {assistant.id: assistant.name for assistant in all_assistants}
    variables: list[str] = []
    data: dict[str, Any] = {"version": VERSION, "providers": [], "assistants": [], "keys": []}
    for provider in all_providers:
        item: dict[str, Any] = _without_defaults(ProviderSpec, ProviderSpec.of(provider))
        if url_has_secret(provider.base_url):  # a password or a key in the URL: never in the file
            variables.append(secret_variable(provider.name, set(variables), "BASE_URL"))
            item["base_url"] = "${%s}" % variables[-1]
        if provider.has_api_key:  # after the base URL
            variables.append(secret_variable(provider.name, set(variables)))
            item = {name: value for name, value in item.items() if name in ("name", "type", "base_url")} | {
                "api_key": "${%s}" % variables[-1]} | item
        data["providers"].append(item)
    for assistant in all_assistants:
        item = AssistantSpec.of(assistant, provider_names)
        item["extra_params"] = _referenced(item["extra_params"], secret_params(assistant.extra_params),
                                           assistant.name, variables)
        item["limits"] = _amounts(item["limits"])
        item["prices"] = item["prices"] and _amounts(item["prices"])
        item["fallbacks"] = [
            _without_defaults(TargetSpec, spec | {
                "params": _referenced(spec["params"], secret_params(target.params), f"{assistant.name} {target.model}",
                                      variables),
                "prices": spec["prices"] and _amounts(spec["prices"])})
            for spec, target in zip(item["fallbacks"], assistant.fallbacks)]
        data["assistants"].append({name: value for name, value in _without_defaults(AssistantSpec, item).items()
                                   if value not in ({}, [])})
    for key in reversed(await api_keys.list_all(db)):  # oldest first, as they were made
        if key.revoked_at is not None:
            continue
        item = {"name": key.name}
        if key.assistant_ids is not None:
            item["assistants"] = [assistant_names[i] for i in key.assistant_ids if i in assistant_names]
        if key.expires_at is not None:
            item["expires_at"] = key.expires_at
        limits = _amounts(LimitsSpec.of(key.limits))
        if limits:
            item["limits"] = limits
        data["keys"].append(item)
    return {kind: value for kind, value in data.items() if value or kind == "version"}, variables


def _without_defaults(spec, values: dict[str, Any]) -> dict[str, Any]:
    fields = spec.model_fields
    return {name: value for name, value in values.items()
            if not (name in fields and fields[name].default == value)}


def _amounts(values: dict[str, Any]) -> dict[str, Any]:
    """A spec's data (limits, prices) with each amount as the file writes it."""
    return {name: _amount(value) if isinstance(value, Decimal) else value for name, value in values.items()}


def _amount(value: Decimal) -> Decimal:
    """An amount without the database's trailing zeros: 0.150000 is 0.15."""
    text = format(value, "f")
    return Decimal(text.rstrip("0").rstrip(".") if "." in text else text)


# --- YAML --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line text as blocks, exact decimals as plain numbers."""


def _text(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value and not any(c in value for c in "\r\t") and value == value.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _decimal(dumper: yaml.SafeDumper, value: Decimal):
    text = format(_amount(value), "f")
    tag = "tag:yaml.org,2002:float" if "." in text else "tag:yaml.org,2002:int"
    return dumper.represent_scalar(tag, text)


_Dumper.add_representer(str, _text)
_Dumper.add_representer(Decimal, _decimal)


def inline(value: Any) -> str:
    """One value as the file writes it, on one line: ``0.15``, ``[a, b]``, ``{top_k: 40}``."""
    try:
        text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, allow_unicode=True, width=10**9)
    except yaml.YAMLError:  # a value of no YAML type
        return str(value)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def dump(data: dict[str, Any]) -> str:
    """The file's text."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
