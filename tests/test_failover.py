"""Fallback targets: what fails over and what does not, circuits, weights and the deadline, through the SDK."""
import asyncio
import collections
import socket

import openai
import pytest

from riceball_proxy import appkeys
from riceball_proxy.db import assistants
from riceball_proxy.db.assistants import Target

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def failing_over(start_gateway, settings, fake_openai, second_openai):
    """A gateway, an assistant whose primary is ``fake_openai`` and whose fallback is ``second_openai``
    (model ``backup-model``), and a key."""

    async def start(primary_url=None, **fields):
        gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
        primary = await gateway.provider(primary_url or fake_openai.base_url, name="primary", read_timeout=2)
        fallback = await gateway.provider(second_openai.base_url, name="fallback")
        assistant = await gateway.assistant(primary, fallbacks=[Target(fallback.id, "backup-model")], **fields)
        return gateway, assistant, await gateway.key()

    return start


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize("failure, stream", [
    (failure, stream) for failure in ("refused", "hangs", "429", "500", "529") for stream in (False, True)
] + [("error_event", True)])  # an error event before the first chunk is a stream's
async def test_the_fallback_answers_when_the_primary_fails_before_the_first_byte(
        failing_over, fake_openai, second_openai, failure, stream):
    primary_url = f"http://127.0.0.1:{refused_port()}/v1" if failure == "refused" else None
    gateway, assistant, key = await failing_over(primary_url)
    if failure == "hangs":
        fake_openai.delay = 5  # past the primary's 2 s read timeout
    elif failure == "error_event":
        fake_openai.fail_after_chunks = 0
    elif failure != "refused":
        fake_openai.error = (int(failure), {"error": {"message": "down", "type": "server_error"}})
        fake_openai.error_headers = {"Retry-After": "30"} if failure == "429" else {}
    async with gateway.client(assistant.id, key) as client:
        if stream:
            chunks = [chunk async for chunk in await client.chat.completions.create(
                model="x", messages=MESSAGES, stream=True)]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = (await client.chat.completions.create(model="x", messages=MESSAGES)).choices[0].message.content
    assert text == "Hello from the fallback"
    assert second_openai.last["model"] == "backup-model"
    row = (await gateway.usage_rows(1))[0]
    assert (row["status"], row["upstream_model"], row["attempts"]) == (200, "backup-model", 2)
    fallback = await gateway.pool.fetchval("SELECT id FROM providers WHERE name = 'fallback'")
    assert row["provider_id"] == fallback
    metrics = gateway.app[appkeys.METRICS].registry
    assert metrics.get_sample_value("riceball_upstream_attempts_total", {
        "provider": "primary", "model": "gpt-4o", "outcome": "failed_over"}) == 1


async def test_a_failure_after_the_first_chunk_does_not_fail_over(failing_over, fake_openai, second_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.reply = "one two three four"
    fake_openai.fail_after_chunks = 2
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.APIError):
            async for _ in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
                pass
    assert second_openai.requests == []


async def test_a_400_is_the_answer_without_failover(failing_over, fake_openai, second_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (400, {"error": {"message": "bad tool schema", "type": "invalid_request_error",
                                         "param": "tools", "code": "invalid_value"}})
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "invalid_value" and second_openai.requests == []


class Clock:
    """The circuits' wall clock, moved by the test instead of waited for."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_three_failures_open_the_circuit_and_a_success_after_the_cooldown_closes_it(
        failing_over, fake_openai, second_openai):
    from riceball_proxy.api import routing

    gateway, assistant, key = await failing_over()
    clock = gateway.app[appkeys.CIRCUITS].clock = Clock()
    fake_openai.error = (503, {"error": {"message": "overloaded", "type": "server_error"}})
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert len(fake_openai.requests) == 3
        for _ in range(3):  # open: the primary is not called during the cooldown
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert len(fake_openai.requests) == 3 and len(second_openai.requests) == 6
        clock.now += routing.CIRCUIT_COOLDOWN - 0.1
        await client.chat.completions.create(model="x", messages=MESSAGES)  # still resting
        assert len(fake_openai.requests) == 3
        clock.now += 0.2
        fake_openai.error = None  # one trial call after the cooldown succeeds: closed again
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
        assert answer.choices[0].message.content == "Hello from the fake upstream"
        await client.chat.completions.create(model="x", messages=MESSAGES)
    assert len(fake_openai.requests) == 5


async def test_a_429_with_retry_after_rests_the_target_that_long(failing_over, fake_openai, second_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (429, {"error": {"message": "slow down", "type": "requests"}})
    fake_openai.error_headers = {"Retry-After": "30"}
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert len(fake_openai.requests) == 1 and len(second_openai.requests) == 3


async def test_a_429_about_one_request_alone_fails_over_without_resting_the_target(failing_over, fake_openai,
                                                                                   second_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (429, {"error": {"message": "Request too large for gpt-4o in organization org-x on tokens per "
                                                   "min (TPM): Limit 30000, Requested 45000.", "type": "tokens",
                                         "code": "rate_limit_exceeded"}})
    fake_openai.error_headers = {"Retry-After": "30"}
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)  # the big one
        assert answer.choices[0].message.content == "Hello from the fallback"
        fake_openai.error = None
        for _ in range(3):  # everyone else's calls still go to the primary
            answer = await client.chat.completions.create(model="x", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hello from the fake upstream"
    assert gateway.app[appkeys.CIRCUITS].health(0) == {}


async def test_a_rest_is_capped_whatever_retry_after_says(start_gateway, settings, fake_openai, second_openai):
    gateway = await start_gateway(settings.replace(max_upstream_rest=1.0))
    primary = await gateway.provider(fake_openai.base_url, name="primary")
    fallback = await gateway.provider(second_openai.base_url, name="fallback")
    assistant = await gateway.assistant(primary, fallbacks=[Target(fallback.id, "backup-model")])
    key = await gateway.key()
    clock = gateway.app[appkeys.CIRCUITS].clock = Clock()
    fake_openai.error = (429, {"error": {"message": "slow down", "type": "requests"}})
    fake_openai.error_headers = {"Retry-After": "3600"}
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        resting = gateway.app[appkeys.CIRCUITS].open_targets(clock.now)
        assert list(resting.values()) == [1.0]
        fake_openai.error = None
        clock.now += 1.0
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the fake upstream"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_refusing_the_gateways_credentials_fails_over_counts_and_shows_on_the_provider(
        failing_over, fake_openai, second_openai, panel, caplog, status, stream):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (status, {"error": {"message": "Incorrect API key provided: sk-upstream-secret. Project "
                                                      "proj_Secret123 of org-Acme", "type": "invalid_request_error",
                                            "code": "invalid_api_key"}})
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):  # served by the fallback; the primary's circuit counts each refusal
            if stream:
                chunks = [c async for c in await client.chat.completions.create(model="x", messages=MESSAGES,
                                                                                  stream=True)]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = (await client.chat.completions.create(model="x", messages=MESSAGES)).choices[0].message.content
            assert text == "Hello from the fallback"
        assert len(fake_openai.requests) == 3
        await client.chat.completions.create(model="x", messages=MESSAGES)  # the circuit is open: skipped
        assert len(fake_openai.requests) == 3
    assert [r for r in caplog.records if r.levelname == "ERROR" and "refused the gateway's credentials" in r.message]
    assert "sk-upstream-secret" not in caplog.text
    # Without a fallback the client gets 502, not its own 401/403, and none of the upstream's words.
    alone = await gateway.assistant(await gateway.provider(fake_openai.base_url, name="alone"))
    async with gateway.client(alone.id, key) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_auth_failed"
    assert "proj_" not in str(raised.value.body) and "org-" not in str(raised.value.body)
    assert "retry-after" not in raised.value.response.headers
    # The admin panel shows it on the provider, until the provider is answered again.
    for _ in range(100):
        _, page = await panel.get("/admin/providers")
        if page.count("refused by the upstream") == 2:  # the primary and "alone"
            break
        await asyncio.sleep(0.02)
    assert "refused by the upstream" in page and f"({status}, " in page
    assert "sk-upstream-secret" not in page
    # A new key for the provider ends the alert.
    from riceball_proxy.db import providers

    primary = await providers.get_by_name(gateway.pool, "primary")
    await providers.update(gateway.pool, primary.id, name="primary", type="openai", base_url=primary.base_url,
                           api_key_encrypted=gateway.secret_box.encrypt("sk-new"), connect_timeout=10,
                           read_timeout=2)
    _, after = await panel.get("/admin/providers")
    assert after.count("refused by the upstream") == 1
    from riceball_proxy.db import provider_alerts

    assert primary.id not in await provider_alerts.by_provider(gateway.pool)


async def test_equal_priorities_share_calls_by_weight(start_gateway, settings, fake_openai, second_openai):
    gateway = await start_gateway(settings)
    one = await gateway.provider(fake_openai.base_url)
    two = await gateway.provider(second_openai.base_url)
    assistant = await gateway.assistant(one, model="m1", fallbacks=[Target(two.id, "m2", weight=3, priority=1),
                                                                    Target(one.id, "m3", weight=1, priority=1)])
    # The primary answers while it is up; take it out to see the fallbacks share.
    fake_openai.error = (500, {"error": {"message": "down"}})
    key = await gateway.key()
    served = collections.Counter()
    async with gateway.client(assistant.id, key) as client:
        for _ in range(200):
            raw = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
            served[raw.parse().choices[0].message.content] += 1
            gateway.app[appkeys.CIRCUITS].state.clear()  # keep the primary in play
    # m3 is on the failing upstream too, so a call drawn to it first goes on to m2: m2 serves them all,
    # and m3 is tried first in about a quarter of the calls.
    tried_m3_first = sum(1 for r in fake_openai.requests if r["body"] and r["body"]["model"] == "m3")
    assert served == {"Hello from the fallback": 200}
    assert 30 <= tried_m3_first <= 70  # 50 expected


async def test_a_target_of_priority_0_shares_the_calls_with_the_primary(start_gateway, settings, fake_openai,
                                                                        second_openai):
    gateway = await start_gateway(settings)
    primary = await gateway.provider(fake_openai.base_url)
    beside = await gateway.provider(second_openai.base_url)
    assistant = await gateway.assistant(primary, fallbacks=[Target(beside.id, "m2", weight=1, priority=0)])
    async with gateway.client(assistant.id, await gateway.key()) as client:
        for _ in range(200):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert 70 <= len(second_openai.requests) <= 130 and len(fake_openai.requests) + len(second_openai.requests) == 200


async def test_the_deadline_bounds_all_attempts(failing_over, fake_openai, second_openai):
    """Both targets hang; the primary's read timeout (2 s) would hand the call to the fallback, but the
    deadline (1 s) ends it first: 504, and the fallback never called."""
    gateway, assistant, key = await failing_over(deadline=1.0)
    fake_openai.delay = second_openai.delay = 10
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"
    assert len(fake_openai.requests) == 1 and second_openai.requests == []


async def test_a_client_that_leaves_stops_the_chain(failing_over, fake_openai, second_openai):
    import aiohttp

    gateway, assistant, key = await failing_over()
    fake_openai.delay = 10
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(gateway.base_url(assistant.id) + "/chat/completions",
                                    json={"messages": MESSAGES}, headers={"Authorization": f"Bearer {key}"},
                                    timeout=aiohttp.ClientTimeout(total=0.5)):
                pass
    in_flight = gateway.app[appkeys.IN_FLIGHT]
    while len(in_flight):  # a chain still running would call the fallback after the primary's read timeout
        await asyncio.sleep(0.01)
    assert second_openai.requests == [] and len(fake_openai.requests) == 1


async def test_bad_targets_are_refused_and_nothing_saved(start_gateway, settings, fake_openai):
    from riceball_proxy import services, specs

    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url, name="up")
    for target, problem in (({"provider": "up", "model": "gpt-4o"}, ("fallbacks[0]", "the target up:gpt-4o is "
                                                                                        "listed twice")),
                            ({"provider": "up", "model": "m", "weight": 0}, ("fallbacks[0].weight",
                                                                             "must be between 1 and 1000")),
                            ({"provider": "gone", "model": "m"}, ("fallbacks[0].provider", "no provider named 'gone'"))):
        with pytest.raises(specs.SpecError) as refused:
            spec = specs.build(specs.AssistantSpec, {"name": "a", "provider": "up", "model": "gpt-4o",
                                                     "fallbacks": [target]})
            await services.save_assistant(gateway.pool, spec)
        assert refused.value.problems == [problem]
    # What gets past the rules (a caller of the table's own functions) the table refuses.
    for fallbacks, says in (([Target(provider.id, "m"), Target(provider.id, "m")], "listed twice"),
                            ([Target(provider.id, "m", weight=0)], "out of range"),
                            ([Target(999_999, "m")], "provider does not exist")):
        with pytest.raises(assistants.InvalidAssistant, match=says):
            await gateway.assistant(provider, fallbacks=fallbacks)
    assert await assistants.list_all(gateway.pool) == []


async def test_the_assistant_page_shows_each_targets_health(failing_over, fake_openai, aiohttp_client):
    from riceball_proxy.db import admins
    from tests.support import ADMIN_PASSWORD, Panel

    gateway, assistant, key = await failing_over()
    fake_openai.error = (503, {"error": {"message": "overloaded <now>", "type": "server_error"}})
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    from riceball_proxy import crypto

    await admins.create(gateway.pool, username="root", password_hash=crypto.hash_password(ADMIN_PASSWORD))
    panel = Panel(await aiohttp_client(gateway.server))
    await panel.login()
    _, page = await panel.get(f"/admin/assistants/{assistant.id}")
    assert "backup-model" in page and "primary" in page
    assert "open</span>" in page and "overloaded &lt;now&gt;" in page  # escaped, as every page


async def test_answers_name_the_serving_target_only_when_the_assistant_says_so(failing_over, fake_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (502, {"error": {"message": "bad gateway"}})
    async with gateway.client(assistant.id, key) as client:
        hidden = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        assert "x-riceball-provider" not in hidden.headers and "x-riceball-model" not in hidden.headers
        await assistants.update(gateway.pool, assistant.id, **{
            name: getattr(assistant, name) for name in ("name", "provider_id", "model", "fallbacks")},
            expose_target=True)
        await gateway.wait_until_listening()
        for _ in range(100):
            shown = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
            async for _ in shown.parse():
                pass
            if "x-riceball-model" in shown.headers:
                break
            await asyncio.sleep(0.02)
    assert (shown.headers["x-riceball-provider"], shown.headers["x-riceball-model"]) == ("fallback", "backup-model")


async def test_an_open_circuit_shows_in_metrics(failing_over, fake_openai):
    gateway, assistant, key = await failing_over()
    fake_openai.error = (500, {"error": {"message": "down"}})
    metrics = gateway.app[appkeys.METRICS].registry
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert metrics.get_sample_value("riceball_circuit_open", {"provider": "primary", "model": "gpt-4o"}) == 1
    assert metrics.get_sample_value("riceball_upstream_attempts_total", {
        "provider": "fallback", "model": "backup-model", "outcome": "answered"}) == 3


async def test_circuits_are_shared_through_redis(start_gateway, settings, redis_url, fake_openai, second_openai):
    shared = settings.replace(redis_url=redis_url)
    one, other = await start_gateway(shared), await start_gateway(shared)
    primary = await one.provider(fake_openai.base_url, name="primary")
    fallback = await one.provider(second_openai.base_url, name="fallback")
    assistant = await one.assistant(primary, fallbacks=[Target(fallback.id, "backup-model")])
    key = await one.key()
    fake_openai.error = (500, {"error": {"message": "down"}})
    async with one.client(assistant.id, key) as client:
        for _ in range(3):  # opens the primary's circuit in the first gateway
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert len(fake_openai.requests) == 3
    for _ in range(100):  # the other gateway hears of it
        if (primary.id, "gpt-4o") in other.app[appkeys.CIRCUITS].state:
            break
        await asyncio.sleep(0.02)
    async with other.client(assistant.id, key) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the fallback"
    assert len(fake_openai.requests) == 3  # the other gateway did not try the resting primary


async def test_a_target_overrides_parameters_for_its_model(start_gateway, settings, fake_openai, second_openai):
    gateway = await start_gateway(settings)
    primary = await gateway.provider(fake_openai.base_url)
    fallback = await gateway.provider(second_openai.base_url)
    assistant = await gateway.assistant(primary, system_prompt="Be kind.", parameters={"temperature": 1.0},
                                        fallbacks=[Target(fallback.id, "small", params={"temperature": 0.2})])
    fake_openai.error = (503, {"error": {"message": "busy"}})
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    assert fake_openai.last["temperature"] == 1.0 and fake_openai.last["model"] == "gpt-4o"
    sent = second_openai.last
    assert (sent["model"], sent["temperature"], sent["messages"][0]) == (
        "small", 0.2, {"role": "system", "content": "Be kind."})


async def test_a_target_that_cannot_be_resolved_is_skipped_never_a_500(start_gateway, settings, fake_openai,
                                                                       second_openai, caplog):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    primary = await gateway.provider(fake_openai.base_url, name="primary")
    uninstalled = await gateway.provider(second_openai.base_url, name="uninstalled", type="no-such-type")
    healthy = await gateway.provider(second_openai.base_url, name="healthy")
    assistant = await gateway.assistant(primary, fallbacks=[Target(uninstalled.id, "m1", priority=1),
                                                            Target(healthy.id, "m2", priority=2)])
    only = await gateway.assistant(primary, fallbacks=[Target(uninstalled.id, "m1")])
    key = await gateway.key()
    fake_openai.error = (500, {"error": {"message": "down", "type": "server_error"}})
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the fallback" and second_openai.last["model"] == "m2"
    async with gateway.client(only.id, key) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert any("target skipped" in r.getMessage() and "no-such-type" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stream", [False, True])
async def test_each_attempt_is_announced_and_the_headers_a_plugin_gives_go_upstream(
        failing_over, fake_openai, second_openai, stream):
    from riceball_proxy.plugin import hookimpl

    gateway, assistant, key = await failing_over()
    fake_openai.error = (500, {"error": {"message": "down", "type": "server_error"}})
    seen = []

    class Attempts:
        @hookimpl
        def riceball_attempt_started(self, ctx, target, attempt):
            seen.append(("started", attempt, target.model, ctx.selected_provider.name))
            # A trace context for the upstream; a header of the adapter's own is never replaced.
            return {"traceparent": f"00-{'a' * 32}-{attempt:016x}-01", "Authorization": "Bearer not-the-key"}

        @hookimpl
        def riceball_attempt_finished(self, ctx, target, attempt, error):
            seen.append(("finished", attempt, target.model, None if error is None else error.status))

    gateway.app[appkeys.PLUGIN_MANAGER].register(Attempts(), name="attempts")
    async with gateway.client(assistant.id, key) as client:
        if stream:
            async for _ in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
                pass
        else:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert seen == [("started", 1, "gpt-4o", "primary"), ("finished", 1, "gpt-4o", 502),
                    ("started", 2, "backup-model", "fallback"), ("finished", 2, "backup-model", None)]

    def header(fake, name):
        return {key.lower(): value for key, value in fake.requests[-1]["headers"].items()}[name]

    assert header(fake_openai, "traceparent") == f"00-{'a' * 32}-{1:016x}-01"
    assert header(second_openai, "traceparent") == f"00-{'a' * 32}-{2:016x}-01"
    assert header(second_openai, "authorization") == "Bearer sk-upstream-secret"
