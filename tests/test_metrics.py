"""Prometheus metrics after a known set of calls, on the main port, on a port of their own, and across workers."""
import asyncio
import json
import os
import signal
import subprocess

import aiohttp
import openai
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, riceball_command, wait_for_http

MESSAGES = [{"role": "user", "content": "three words here"}]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        return samples(await response.text())


async def test_metrics_after_a_known_set_of_calls(configured):
    gateway, client, fake = configured.gateway, configured.client, configured.upstream
    a = str(configured.assistant.id)
    for _ in range(3):
        await client.chat.completions.create(model="x", messages=MESSAGES)
    for _ in range(2):
        async for _ in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
            pass
    async with gateway.client(configured.assistant.id, "sk-wrong") as stranger:
        try:
            await stranger.chat.completions.create(model="x", messages=MESSAGES)
        except openai.AuthenticationError:
            pass
    fake.error = (500, {"error": {"message": "boom"}})
    try:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    except openai.InternalServerError:
        pass

    async def check():
        values = await scrape(gateway.url("/metrics"))
        assert values[("riceball_requests_total", (("api", "chat"), ("assistant", a), ("status", "200")))] == 5
        assert values[("riceball_requests_total", (("api", "chat"), ("assistant", "-"), ("status", "401")))] == 1
        assert values[("riceball_requests_total", (("api", "chat"), ("assistant", a), ("status", "502")))] == 1
        name = configured.provider.name
        assert values[("riceball_upstream_errors_total", (("provider", name), ("status", "502")))] == 1
        assert values[("riceball_tokens_total", (("assistant", a), ("kind", "prompt")))] == 15
        assert values[("riceball_tokens_total", (("assistant", a), ("kind", "completion")))] == 25
        assert values[("riceball_request_duration_seconds_count", (("assistant", a), ("stream", "false")))] == 4
        assert values[("riceball_request_duration_seconds_count", (("assistant", a), ("stream", "true")))] == 2
        assert values[("riceball_time_to_first_token_seconds_count", (("assistant", a),))] == 5
        assert values[("riceball_streams_in_flight", ())] == 0

    for _ in range(250):
        try:
            await check()
            break
        except (AssertionError, KeyError):
            await asyncio.sleep(0.02)
    await check()


async def test_streams_in_flight(configured):
    configured.upstream.reply = " ".join(["word"] * 100)
    configured.upstream.chunk_delay = 0.02
    stream = await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    async for _ in stream:
        values = await scrape(configured.gateway.url("/metrics"))
        assert values[("riceball_streams_in_flight", ())] == 1
        break
    await stream.close()


async def test_metrics_can_be_turned_off(start_gateway, settings):
    gateway = await start_gateway(settings.replace(metrics=False))
    async with aiohttp.ClientSession() as session, session.get(gateway.url("/metrics")) as response:
        assert response.status == 404


async def test_metrics_on_a_port_of_their_own(start_gateway, settings):
    port = free_port()
    gateway = await start_gateway(settings.replace(metrics_port=port))
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url("/metrics")) as response:
            assert response.status == 404  # not beside the API
    assert ("riceball_streams_in_flight", ()) in await scrape(f"http://127.0.0.1:{port}/metrics")


async def test_metrics_add_up_across_workers(cli_env, fake_openai):
    env = dict(os.environ)

    async def riceball(*argv):
        result = await asyncio.to_thread(subprocess.run, [*riceball_command(), "--json", *argv], env=env,
                                         capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    await riceball("provider", "add", "--name", "up", "--type", "openai", "--base-url", fake_openai.base_url)
    assistant = await riceball("assistant", "add", "--name", "a", "--provider", "up", "--model", "m")
    key = (await riceball("key", "create", "--name", "k"))["key"]
    port = free_port()
    server = subprocess.Popen([*riceball_command(), "serve", "--port", str(port), "--workers", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/readyz", server) == 200
        base_url = f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1"
        for _ in range(20):  # a new connection each time, so that both workers take calls
            async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
                await client.chat.completions.create(model="x", messages=MESSAGES)
        label = (("api", "chat"), ("assistant", assistant["id"]), ("status", "200"))
        totals: set = set()
        for _ in range(100):
            totals = {(await scrape(f"http://127.0.0.1:{port}/metrics")).get(("riceball_requests_total", label))
                      for _ in range(6)}
            if totals == {20}:
                break
            await asyncio.sleep(0.05)
        assert totals == {20}  # whichever worker answers the scrape, it counts both workers' calls
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
        server.stderr.close()


async def test_metrics_are_for_this_machine_or_the_token_holder(start_gateway, settings, tmp_path):
    gateway = await start_gateway(settings)
    forwarded = {"X-Forwarded-For": "203.0.113.7"}  # a proxy in front, passing on someone else's call
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url("/metrics")) as response:
            assert response.status == 200  # loopback, straight here
        async with session.get(gateway.url("/metrics"), headers=forwarded) as response:
            assert response.status == 403 and "RICEBALL_METRICS_TOKEN" in await response.text()

    locked = await start_gateway(settings.replace(metrics_token="s3cret-token"))
    async with aiohttp.ClientSession() as session:
        async with session.get(locked.url("/metrics"), headers=forwarded) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(locked.url("/metrics"), headers=forwarded | {"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with session.get(locked.url("/metrics"),
                               headers=forwarded | {"Authorization": "Bearer s3cret-token"}) as response:
            assert response.status == 200 and "riceball_requests" in await response.text()

    # A peer that is no loopback address at all: here, a unix socket.
    from riceball_proxy.app import create_app

    runner = web.AppRunner(create_app(settings.replace(metrics_token="s3cret-token")))
    await runner.setup()
    path = str(tmp_path / "gateway.sock")
    await web.UnixSite(runner, path).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            async with session.get("http://gateway/metrics") as response:
                assert response.status == 401
            async with session.get("http://gateway/metrics",
                                   headers={"Authorization": "Bearer s3cret-token"}) as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
