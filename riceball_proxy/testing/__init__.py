"""Testing a plugin (or a deployment) the way RiceBall tests itself: real servers, no mocks.

Installing ``riceball-proxy[testing]`` brings a pytest plugin (``riceball_proxy.testing.fixtures``,
loaded by the ``pytest11`` entry point) whose fixtures start a gateway on a real PostgreSQL and fake
upstreams that speak the providers' wire formats. A provider plugin's test::

    from riceball_proxy.testing import FakeOpenAI

    async def test_my_provider(start_gateway, settings, install_plugin, aiohttp_server):
        install_plugin("riceball_acme", "acme", "riceball-acme")   # or pip install -e . beforehand
        gateway = await start_gateway(settings.replace(plugins=frozenset({"acme"})))
        provider = await gateway.provider("http://...", type="acme")
        assistant = await gateway.assistant(provider, model="acme-1")
        async with gateway.client(assistant.id, await gateway.key()) as client:
            answer = await client.chat.completions.create(model="x", messages=[...])

``plugins/echo/tests`` is the smallest complete example; ``docs/writing-a-provider.md`` walks through one.
"""
from riceball_proxy.testing.fake_anthropic import FakeAnthropic
from riceball_proxy.testing.fake_openai import FakeOpenAI
from riceball_proxy.testing.fixtures import Gateway, run_sync, usage_rows_of, with_database

__all__ = ["FakeAnthropic", "FakeOpenAI", "Gateway", "run_sync", "usage_rows_of", "with_database"]
