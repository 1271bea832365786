"""A plugin that records when the gateway starts and stops, and offers a provider type of its own."""
from riceball_proxy import hookimpl
from riceball_proxy.builtin.openai_compat import OpenAICompatibleAdapter
from riceball_proxy.providers import ProviderType

events = []


@hookimpl
async def riceball_startup(app):
    events.append("startup")


@hookimpl
def riceball_shutdown(app):
    events.append("shutdown")


@hookimpl
def riceball_provider_types():
    return [
        ProviderType(name="recorder", label="Recorder (tests)", adapter=OpenAICompatibleAdapter),
        # Same name as the built-in: an installed plugin's type wins.
        ProviderType(name="openai", label="OpenAI (replaced by tests)", adapter=OpenAICompatibleAdapter),
    ]
