"""The repository modules against the real schema: records, constraints and lookups."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from riceball_proxy import crypto
from riceball_proxy.db import admins, api_keys, assistants, conversations, providers, usage_events


async def _provider(db, name="up"):
    return await providers.create(db, name=name, type="openai", base_url="http://127.0.0.1:9/v1")


async def test_admins(db):
    admin = await admins.create(db, "root", crypto.hash_password("s3cret-pass"))
    assert (await admins.get_by_username(db, "root")).id == admin.id
    assert await admins.count(db) == 1
    with pytest.raises(admins.UsernameTaken):
        await admins.create(db, "root", "x")
    assert "password_hash" not in repr(admin)


async def test_providers(db):
    provider = await _provider(db)
    assert provider.has_api_key is False
    assert (provider.connect_timeout, provider.read_timeout) == (10.0, 300.0)
    assert await providers.get_by_name(db, "up") == provider
    assert [p.name for p in await providers.list_all(db)] == ["up"]
    with pytest.raises(providers.ProviderNameTaken):
        await _provider(db)


async def test_assistants_keep_parameters_and_locks(db):
    provider = await _provider(db)
    assistant = await assistants.create(
        db,
        name="helper",
        provider_id=provider.id,
        model="gpt-4o",
        system_prompt="Be brief.",
        parameters={"temperature": 0.2, "max_tokens": 256, "stop": ["END"], "seed": 7},
        locked={"temperature"},
        extra_params={"reasoning_effort": "low"},
        allow_client_system=False,
    )
    again = await assistants.get(db, assistant.id)
    assert again == assistant
    assert again.parameters == {"temperature": 0.2, "max_tokens": 256, "stop": ["END"], "seed": 7}
    assert again.locked == {"temperature"}
    assert again.extra_params == {"reasoning_effort": "low"}
    assert again.allow_client_system is False and again.enabled is True
    assert await assistants.existing_ids(db, [assistant.id, uuid.uuid4()]) == {assistant.id}


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"parameters": {"temperature": 3.0}}, "out of range"),
        ({"parameters": {"max_tokens": 0}}, "out of range"),
        ({"parameters": {"verbosity": 1}}, "unknown parameters: verbosity"),
        ({"provider_id": 999999}, "provider does not exist"),
    ],
)
async def test_assistants_refuse_bad_values(db, changes, says):
    provider = await _provider(db)
    with pytest.raises(assistants.InvalidAssistant, match=says):
        await assistants.create(db, **({"name": "a", "provider_id": provider.id, "model": "m"} | changes))


async def test_a_provider_in_use_cannot_be_deleted(db):
    provider = await _provider(db)
    await assistants.create(db, name="a", provider_id=provider.id, model="m")
    with pytest.raises(Exception, match="foreign key"):
        await db.execute("DELETE FROM providers WHERE id = $1", provider.id)


async def test_api_keys_store_only_hash_and_prefix(db):
    secret = crypto.generate_api_key()
    scope = [uuid.uuid4()]
    key = await api_keys.create(
        db, name="ci", key_hash=crypto.hash_api_key(secret), prefix=crypto.display_prefix(secret), assistant_ids=scope
    )
    row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key.id)
    assert secret not in " ".join(str(v) for v in row.values())
    assert (await api_keys.get_by_hash(db, crypto.hash_api_key(secret))).id == key.id
    assert key.assistant_ids == tuple(scope) and key.allows(scope[0]) and not key.allows(uuid.uuid4())
    assert key.status() == "active"
    assert (await api_keys.find(db, key.prefix)).id == key.id
    assert (await api_keys.find(db, str(key.id))).id == key.id
    assert await api_keys.find(db, "sk-nothing") is None
    revoked = await api_keys.revoke(db, key.id)
    assert revoked.status() == "revoked"
    assert (await api_keys.revoke(db, key.id)).revoked_at == revoked.revoked_at


async def test_api_key_expiry_and_ambiguous_prefix(db):
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    first = await api_keys.create(db, name="a", key_hash=b"a" * 32, prefix="sk-same_1", expires_at=past)
    await api_keys.create(db, name="b", key_hash=b"b" * 32, prefix="sk-same_2")
    assert first.status() == "expired"
    assert first.allows(uuid.uuid4())  # no scope: every assistant
    with pytest.raises(api_keys.AmbiguousKey):
        await api_keys.find(db, "sk-same")
    assert (await api_keys.find(db, "sk-same_1")).name == "a"
    assert await api_keys.find(db, "sk-sam%") is None  # LIKE wildcards are literal


async def test_usage_events_are_copied_in_batches(db):
    provider = await _provider(db)
    now = datetime.now(timezone.utc)
    events = [
        usage_events.UsageEvent(created_at=now, request_id=f"req_{n}", status=200, provider_id=provider.id,
                                upstream_model="gpt-4o", stream=bool(n % 2), prompt_tokens=10, completion_tokens=n,
                                total_tokens=10 + n, latency_ms=12.5, ttft_ms=3.0, client_addr="127.0.0.1")
        for n in range(3)
    ]
    await usage_events.insert_many(db, events)
    assert sorted(await usage_events.recent(db), key=lambda e: e.request_id) == events


async def test_conversations_keep_messages_in_order(db):
    conversation = await conversations.create(db, admin_id=None, assistant_id=None, title="try")
    await conversations.add_message(db, conversation.id, "user", "hello")
    await conversations.add_message(db, conversation.id, "assistant", [{"type": "text", "text": "hi"}])
    messages = await conversations.messages(db, conversation.id)
    assert [(m.role, m.content) for m in messages] == [("user", "hello"), ("assistant", [{"type": "text", "text": "hi"}])]


async def test_login_failures_keep_within_their_bound(db):
    import datetime

    from riceball_proxy.db import login_failures

    window = datetime.timedelta(minutes=15)
    for n in range(10):
        await login_failures.add(db, [bytes([n]) * 32, b"\xff" * 32], window, max_rows=6)
    assert await db.fetchval("SELECT count(*) FROM login_failures") <= 6
    recent = await login_failures.recent(db, [b"\xff" * 32, b"\x09" * 32], window)
    assert recent[b"\x09" * 32][0] == 1 and 0 < recent[b"\xff" * 32][1] <= window.total_seconds()
