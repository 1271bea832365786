"""API-key authentication: ``Authorization: Bearer sk-...`` (or ``x-api-key: sk-...``, as Anthropic's
clients send it) checked against the keys' SHA-256 hashes."""
from __future__ import annotations

from riceball_proxy import appkeys, hookimpl
from riceball_proxy.context import Principal
from riceball_proxy.crypto import hash_api_key
from riceball_proxy.errors import APIError


def _invalid(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key")


@hookimpl(trylast=True)
async def riceball_authenticate(request, assistant_id):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        token = request.headers.get("x-api-key", "")
    if not token.strip():
        raise _invalid(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...' (or 'x-api-key: sk-...')."
        )
    # The root application's cache (config_dict would build a chain of mappings on every call).
    key = await request.match_info.apps[0][appkeys.CONFIG_CACHE].api_key(hash_api_key(token.strip()))
    if key is None:
        raise _invalid("Incorrect API key provided.")
    status = key.status()
    return Principal(
        key_id=key.id,
        name=key.name,
        assistant_ids=None if key.assistant_ids is None else frozenset(key.assistant_ids),
        refused=None if status == "active" else f"This API key is {status}.",
        limits=key.limits or None,
        key_prefix=key.prefix,
    )
