"""Providers as installable plugins: the first-party ones, and one written from scratch by a "third party"."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from riceball_proxy.plugins import describe_plugins, make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings
from tests.support import Panel, riceball_command

FIRST_PARTY = {"echo": "riceball-echo", "anthropic": "riceball-anthropic", "gemini": "riceball-gemini"}

SCRATCH_PLUGIN = '''
"""A provider that answers with the last user message backwards. No network, no core change."""
import time

import orjson

from riceball_proxy.plugin import ProviderAdapter, ProviderType, hookimpl


def _reply(body):
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")[::-1]


class ReverseAdapter(ProviderAdapter):
    async def complete(self, body, *, request_id=None):
        return {"id": "chatcmpl-rev", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": _reply(body)}}]}

    async def stream(self, body, *, request_id=None):
        for letter in _reply(body):
            yield orjson.dumps({"id": "chatcmpl-rev", "object": "chat.completion.chunk", "created": 0,
                                "model": body["model"], "choices": [{"index": 0, "delta": {"content": letter},
                                                                      "finish_reason": None}]})

    async def list_models(self):
        return [{"id": "reverse-1", "object": "model", "created": 0, "owned_by": "someone"}]


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="reverse", label="Reverse", adapter=ReverseAdapter)]
'''


#: The scratch plugin's own test, written as its author would after ``pip install riceball-proxy[testing]``:
#: the gateway's pytest plugin gives it a gateway on a real database, and an SDK client.
SCRATCH_TEST = '''
async def test_the_reverse_provider_answers_backwards(start_gateway, settings):
    gateway = await start_gateway(settings.replace(plugins=frozenset({"reverse"})))
    provider = await gateway.provider("http://unused.invalid", type="reverse", api_key=None)
    assistant = await gateway.assistant(provider, model="reverse-1")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        completion = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "live"}])
    assert completion.choices[0].message.content == "evil"
    assert [row["status"] for row in await gateway.usage_rows(1)] == [200]
'''


@pytest.fixture(scope="module")
def scratch_site(tmp_path_factory):
    """The scratch plugin built and installed by pip (into a folder of its own), as an operator would."""
    root = tmp_path_factory.mktemp("scratch")
    source = root / "riceball-reverse"
    (source / "riceball_reverse").mkdir(parents=True)
    (source / "riceball_reverse" / "__init__.py").write_text(SCRATCH_PLUGIN)
    (source / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                           'build-backend = "setuptools.build_meta"\n')
    (source / "setup.cfg").write_text(textwrap.dedent("""
        [metadata]
        name = riceball-reverse
        version = 0.0.1

        [options]
        packages = riceball_reverse

        [options.entry_points]
        riceball =
            reverse = riceball_reverse

        [tool:pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
    """))
    (source / "tests").mkdir()
    (source / "tests" / "test_reverse.py").write_text(SCRATCH_TEST)
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, timeout=300)
    return site


@pytest.fixture
def scratch_plugin(scratch_site, monkeypatch):
    monkeypatch.syspath_prepend(str(scratch_site))
    yield scratch_site
    sys.modules.pop("riceball_reverse", None)


def test_riceball_plugins_lists_an_installed_third_party_provider(scratch_site):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
    env["PYTHONPATH"] = str(scratch_site)
    result = subprocess.run([*riceball_command(), "--json", "plugins"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["reverse"] == {"name": "reverse", "builtin": False, "distribution": "riceball-reverse",
                                  "version": "0.0.1", "hooks": ["riceball_provider_types"]}


async def test_a_third_party_provider_serves_requests(scratch_plugin, start_gateway, settings):
    gateway = await start_gateway(settings.replace(plugins=frozenset({"reverse"})))
    provider = await gateway.provider("http://unused.invalid", type="reverse", api_key=None)
    assistant = await gateway.assistant(provider, model="reverse-1")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        completion = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "stressed"}])
        assert completion.choices[0].message.content == "desserts"
        stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "abc"}],
                                                      stream=True)
        assert [c.choices[0].delta.content async for c in stream] == ["c", "b", "a"]


def test_a_plugin_s_own_tests_run_on_the_gateway_s_pytest_plugin(scratch_site, postgres_server):
    """The author's suite, in the plugin's own folder, with nothing of this repository's but the installed
    gateway: its fixtures come from the ``pytest11`` entry point."""
    source = scratch_site.parent / "riceball-reverse"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RICEBALL_")}
    env |= {"PYTHONPATH": str(scratch_site), "RICEBALL_TEST_DATABASE_URL": postgres_server}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=source,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_first_party_plugins_are_installed_and_listed():
    described = {p["name"]: p for p in describe_plugins(make_plugin_manager(Settings()))}
    for name, distribution in FIRST_PARTY.items():
        assert described[name]["distribution"] == distribution and described[name]["version"] == "0.1.0"
        assert "riceball_provider_types" in described[name]["hooks"]
    assert {"openai", "echo", "anthropic", "gemini"} <= set(provider_types(make_plugin_manager(Settings())))


async def test_the_admin_panel_offers_every_installed_provider_type(aiohttp_client, settings):
    from riceball_proxy import appkeys, crypto
    from riceball_proxy.app import create_app
    from riceball_proxy.db import admins
    from tests.support import ADMIN_PASSWORD

    app = create_app(settings.replace(plugins=None))
    browser = Panel(await aiohttp_client(app))
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    await browser.login()
    _, form = await browser.get("/admin/providers/new")
    for label in ("OpenAI-compatible", "Anthropic", "Google Gemini", "Echo (offline demo)"):
        assert f">{label}</option>" in form


@pytest.fixture
async def buggy_plugin_gateway(start_gateway, settings, fake_openai):
    """A gateway with the buggy provider types of ``tests/plugins/broken_types.py``."""
    from tests.plugins import broken_types

    pm = make_plugin_manager(settings)
    pm.register(broken_types)
    return await start_gateway(settings, plugin_manager=pm)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_plugin_that_raises_fails_over_to_a_healthy_fallback_and_counts_against_its_circuit(
        buggy_plugin_gateway, fake_openai, caplog, stream):
    import openai

    from riceball_proxy import appkeys
    from riceball_proxy.db.assistants import Target

    gateway = buggy_plugin_gateway
    broken = await gateway.provider("http://unused.invalid", type="broken", api_key=None, name="buggy")
    healthy = await gateway.provider(fake_openai.base_url, name="healthy")
    assistant = await gateway.assistant(broken, fallbacks=[Target(healthy.id, "gpt-4o")])
    async with gateway.client(assistant.id, await gateway.key()) as client:
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}], stream=True)]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = (await client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}])).choices[0].message.content
    assert text == "Hello from the fake upstream"
    assert gateway.app[appkeys.CIRCUITS].health(0)[(broken.id, "gpt-4o")]["failures"] == 1
    logged = [r for r in caplog.records if "its adapter raised KeyError" in r.getMessage()]
    assert logged and "'buggy'" in logged[0].getMessage() and logged[0].exc_info is not None
    alone = await gateway.assistant(broken)  # no fallback: 502, nothing of the plugin's insides
    async with gateway.client(alone.id, await gateway.key()) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                 stream=stream)
    assert raised.value.status_code == 502 and raised.value.code == "provider_error"
    assert "KeyError" not in str(raised.value.body)


async def test_a_plugin_that_raises_mid_stream_ends_it_with_one_error_event(buggy_plugin_gateway, caplog):
    import openai

    gateway = buggy_plugin_gateway
    provider = await gateway.provider("http://unused.invalid", type="breaks_midway", api_key=None, name="midway")
    assistant = await gateway.assistant(provider)
    received = []
    async with gateway.client(assistant.id, await gateway.key()) as client:
        with pytest.raises(openai.APIError) as raised:
            async for chunk in await client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "hi"}], stream=True):
                received.append(chunk.choices[0].delta.content)
    assert received == ["Hello"] and "failed to handle the call" in raised.value.message
    assert any("its adapter raised AttributeError" in r.getMessage() and r.exc_info for r in caplog.records)
    rows = await gateway.usage_rows(1)
    assert rows[0]["status"] == 502 and rows[0]["error_code"] == "provider_error"
