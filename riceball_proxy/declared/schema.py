"""The configuration file's format, checked before anything is written.

A file (YAML, or JSON, which is YAML too) declares ``providers``, ``assistants`` and ``keys``, each a list
of objects named uniquely within it; docs/configuration.md shows a complete one. :func:`load` reads and
checks it, returning a :class:`ConfigFile` or raising :class:`ConfigFileError` whose lines each name a
path in the file: ``assistants[1].temperature: must be between 0 and 2``.

Each object is its spec (``riceball_proxy.specs``), the description the admin forms and the command line
fill in too; so a rule and its words are the same everywhere.

Secrets never need to be in the file: a provider's ``api_key`` may be ``${ENV_NAME}``, read from the
environment, or the provider gives ``api_key_file: /path``. :func:`resolve_secrets` reads them. A
provider's ``base_url`` and any value of an assistant's ``extra_params`` (or a fallback's ``params``) may
be a ``${ENV_NAME}`` reference too, read as the file is parsed (``riceball export`` writes those that
hold a password or a key that way).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError

from riceball_proxy.specs import AssistantSpec, KeySpec, ProviderSpec, SpecError, Strict, problems_of

#: The format's version; a file may say ``version: 1``.
VERSION = 1
#: A value that is an environment variable's name: ``${OPENAI_API_KEY}``.
ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
#: Largest file read, in bytes.
MAX_FILE_BYTES = 10 * 1024 * 1024


class ConfigFileError(ValueError):
    """The file cannot be applied; ``problems`` are lines of the form ``path: what is wrong``. ``data``,
    when the file was a mapping of YAML, is what it holds (so that the names it uses can be checked too,
    and all its problems reported at once)."""

    def __init__(self, problems: list[str], data: dict | None = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.data = data


class ConfigFile(Strict):
    version: Literal[VERSION] = VERSION  # type: ignore[valid-type]
    providers: list[ProviderSpec] = []
    assistants: list[AssistantSpec] = []
    keys: list[KeySpec] = []


#: Bounds on what a file may make its reader build: nesting, and values once aliases are expanded (a
#: 700-byte "billion laughs" file expands to gigabytes). A configuration file comes near neither.
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 1_000_000


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, made strict: a key twice in one mapping, nesting past ``MAX_DEPTH``, aliases
    that expand past ``MAX_EXPANDED_NODES`` values and NUL characters (which no database text column
    takes) are refused, each with its line and column."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}  # per node: aliases share nodes, so each is measured once

        def size(node) -> int:
            known = sizes.get(id(node))
            if known is None:
                known = 1
                if isinstance(node, yaml.SequenceNode):
                    known += sum(size(item) for item in node.value)
                elif isinstance(node, yaml.MappingNode):
                    known += sum(size(key) + size(value) for key, value in node.value)
                sizes[id(node)] = known
            return known

        if node is not None and size(node) > MAX_EXPANDED_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand the document to more than {MAX_EXPANDED_NODES:,} values",
                node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in one "
                                                        "mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_scalar(self, node):
        value = super().construct_scalar(node)
        if isinstance(value, str) and "\x00" in value:
            raise yaml.constructor.ConstructorError(None, None, "a NUL character (\\0) cannot be stored",
                                                    node.start_mark)
        return value


def _resolve_references(data: dict, env) -> list[str]:
    """Replace, in place, the ``${VARIABLE}`` references a file may put where a secret can stand besides
    provider keys (``resolve_secrets``): a provider's ``base_url``, any value of an assistant's
    ``extra_params`` or a fallback's ``params``. Returns the problems (a variable that is not set)."""
    problems: list[str] = []

    def resolved(value, where: str):
        if isinstance(value, str):
            reference = ENV_REFERENCE.match(value)
            if reference is None:
                return value
            if env.get(reference[1]) is None:
                problems.append(f"{where}: the environment variable {reference[1]} is not set")
                return value
            return env[reference[1]]
        if isinstance(value, dict):
            return {key: resolved(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [resolved(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return value

    for index, provider in enumerate(data.get("providers") or ()):
        if isinstance(provider, dict) and isinstance(provider.get("base_url"), str):
            provider["base_url"] = resolved(provider["base_url"], f"providers[{index}].base_url")
    for index, assistant in enumerate(data.get("assistants") or ()):
        if not isinstance(assistant, dict):
            continue
        if isinstance(assistant.get("extra_params"), dict):
            assistant["extra_params"] = resolved(assistant["extra_params"], f"assistants[{index}].extra_params")
        for n, target in enumerate(assistant.get("fallbacks") or ()):
            if isinstance(target, dict) and isinstance(target.get("params"), dict):
                target["params"] = resolved(target["params"], f"assistants[{index}].fallbacks[{n}].params")
    return problems


def parse(text: str, environ=None) -> ConfigFile:
    """Check a file's text (its ``${VARIABLE}`` references read from ``environ``, by default the process's
    environment); ConfigFileError names every problem found."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader, made stricter
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigFileError([f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(["the file must hold a mapping with providers, assistants and keys"])
    problems = _resolve_references(data, os.environ if environ is None else environ)
    if problems:
        raise ConfigFileError(problems)
    try:
        config = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigFileError(SpecError(problems_of(exc)).lines(), data) from None
    problems = []
    for kind in ("providers", "assistants", "keys"):
        seen: dict[str, int] = {}
        for index, item in enumerate(getattr(config, kind)):
            if item.name in seen:
                problems.append(f"{kind}[{index}].name: {item.name!r} is also the name of {kind}[{seen[item.name]}]")
            seen.setdefault(item.name, index)
    if problems:
        raise ConfigFileError(problems, data)
    return config


def load(path: str | Path, environ=None) -> ConfigFile:
    """Read and check the file at ``path`` (``-``: standard input)."""
    try:
        if str(path) == "-":
            import sys

            stdin = getattr(sys.stdin, "buffer", None)  # refused whole past the bound, never cut
            raw = stdin.read(MAX_FILE_BYTES + 1) if stdin is not None \
                else sys.stdin.read(MAX_FILE_BYTES + 1).encode("utf-8", "surrogateescape")
        else:
            with open(path, "rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigFileError([f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB"])
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot be read ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError([f"{path}: not UTF-8 text (byte {exc.start + 1})"]) from None
    return parse(text, environ)


def resolve_secrets(config: ConfigFile, environ=None) -> tuple[dict[str, str | None], list[str]]:
    """Each provider's upstream key (by provider name; None: no key), and warnings; ConfigFileError when a
    variable is unset or a file cannot be read."""
    env = os.environ if environ is None else environ
    secrets: dict[str, str | None] = {}
    problems, warnings = [], []
    for index, provider in enumerate(config.providers):
        where = f"providers[{index}]"
        secret = None
        if provider.api_key is not None:
            reference = ENV_REFERENCE.match(provider.api_key)
            if reference:
                secret = env.get(reference[1], "").strip() or None
                if secret is None:
                    problems.append(f"{where}.api_key: the environment variable {reference[1]} is not set")
            elif "${" in provider.api_key:
                problems.append(f"{where}.api_key: write a reference as the whole value, like ${{OPENAI_API_KEY}}")
            else:
                secret = provider.api_key
                warnings.append(f"{where}.api_key: the key itself is written in the file; "
                                "prefer ${ENV_NAME} or api_key_file")
        elif provider.api_key_file is not None:
            try:
                secret = provider.api_key_file.read_text(encoding="utf-8").strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{where}.api_key_file: cannot be read "
                                f"({exc.strerror if isinstance(exc, OSError) else 'not text'})")
            else:
                if secret is None:
                    problems.append(f"{where}.api_key_file: the file is empty")
        secrets[provider.name] = secret
    if problems:
        raise ConfigFileError(problems)
    return secrets, warnings
