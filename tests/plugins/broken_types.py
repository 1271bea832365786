"""A provider plugin with bugs, as a third party may ship one: ``broken`` raises KeyError when it is
called, ``breaks_midway`` after its first chunk."""
import orjson

from riceball_proxy import hookimpl
from riceball_proxy.providers import ProviderAdapter, ProviderType


def _chunk(body, text):
    return orjson.dumps({"id": "chatcmpl-broken", "object": "chat.completion.chunk", "created": 0,
                         "model": body["model"], "choices": [{"index": 0, "delta": {"content": text},
                                                              "finish_reason": None}]})


class BrokenAdapter(ProviderAdapter):
    async def complete(self, body, *, request_id=None):
        return {}["choices"]  # a bug: KeyError

    async def stream(self, body, *, request_id=None):
        raise KeyError("delta")
        yield  # an async generator all the same


class BreaksMidwayAdapter(ProviderAdapter):
    async def complete(self, body, *, request_id=None):
        raise ZeroDivisionError("oops")

    async def stream(self, body, *, request_id=None):
        yield _chunk(body, "Hello")
        raise AttributeError("'NoneType' object has no attribute 'text'")


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="broken", label="Broken", adapter=BrokenAdapter),
            ProviderType(name="breaks_midway", label="Breaks midway", adapter=BreaksMidwayAdapter)]
