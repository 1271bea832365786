"""Secrets that travel inside configuration values: a password in a base URL (``https://user:pw@host``),
a key in its query (``?key=...``), an ``api_key`` among an assistant's extra parameters. Listings and
pages show them masked (``***``); ``riceball export`` writes them as ``${VARIABLE}`` references.

A name is taken for a secret's when one of its words (split on ``_``, ``-`` and case) is a word of
``SECRET_WORDS``: ``api_key``, ``x-api-key``, ``accessToken``, ``client_secret``, ``password``...
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any

#: Words that make a parameter's or a field's name a secret's.
SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authorization",
                          "credential", "credentials", "signature", "sig", "cookie"})
MASK = "***"
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def secret_name(name: Any) -> bool:
    """True when ``name`` (a query parameter, a JSON key) names a secret."""
    if not isinstance(name, str):
        return False
    words = [word.lower() for word in _WORDS.findall(name)]
    return any(word in SECRET_WORDS for word in words) or "".join(words) in SECRET_WORDS


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def url_has_secret(url: str) -> bool:
    """True when a URL carries a password, or a query parameter named like a secret."""
    parts = _split(url)
    if parts is None:
        return False
    return parts.password is not None or any(
        secret_name(name) for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))


def mask_url(url: str) -> str:
    """``url`` with its password and its secret-named query values as ``***``."""
    parts = _split(url)
    if parts is None or not url_has_secret(url):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = urllib.parse.urlencode([(name, MASK if secret_name(name) else value) for name, value
                                    in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_params(value: Any) -> Any:
    """A JSON value with the values of its secret-named keys, at any depth, as ``***``."""
    if isinstance(value, dict):
        return {key: MASK if secret_name(key) and item not in (None, "") else mask_params(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [mask_params(item) for item in value]
    return value


def secret_params(value: Any, path: tuple = ()) -> list[tuple]:
    """The paths (tuples of keys) of a JSON value's secret-named keys that hold a value."""
    found: list[tuple] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if secret_name(key) and item not in (None, ""):
                found.append((*path, key))
            else:
                found += secret_params(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += secret_params(item, (*path, index))
    return found
