"""What a plugin may rely on: every name here keeps its meaning across minor releases of
``riceball-proxy`` (a change that breaks one is announced in the changelog a minor release ahead, and
comes with a major one). Anything imported from elsewhere in ``riceball_proxy`` is the gateway's own
and may change in any release.

::

    from riceball_proxy.plugin import APIError, ProviderType, TranslatingAdapter, hookimpl

The hooks themselves are in docs/plugins.md (``riceball_proxy.hookspecs``); writing a provider is in
docs/writing-a-provider.md; testing one with the gateway's pytest plugin in ``riceball_proxy.testing``.
"""
from riceball_proxy import appkeys, hookimpl
from riceball_proxy.builtin.openai_compat import OpenAICompatibleAdapter
from riceball_proxy.chunks import ChunkBuilder
from riceball_proxy.content import (
                                    SYSTEM_ROLES,
                                    Turns,
                                    content_parts,
                                    image_url_of,
                                    split_data_url,
                                    system_text,
                                    text_of,
                                    tool_arguments,
)
from riceball_proxy.context import ChatContext, Principal, Usage
from riceball_proxy.dialects import Dialect
from riceball_proxy.dialects.chat import ChatCompletions
from riceball_proxy.errors import APIError
from riceball_proxy.providers import ProviderAdapter, ProviderType, TranslatingAdapter
from riceball_proxy.sse import iter_data
from riceball_proxy.upstream import (
                                    bad_upstream_response,
                                    connection_error,
                                    join_url,
                                    json_events,
                                    stream_ended_early,
                                    stream_error,
                                    upstream_error,
)

__all__ = [
    # hooks
    "hookimpl",
    # provider adapters
    "ProviderType", "ProviderAdapter", "TranslatingAdapter", "OpenAICompatibleAdapter", "ChunkBuilder",
    # upstream calls and their errors
    "APIError", "join_url", "upstream_error", "connection_error", "bad_upstream_response", "stream_error",
    "stream_ended_early", "json_events", "iter_data",
    # OpenAI message content
    "SYSTEM_ROLES", "Turns", "content_parts", "image_url_of", "split_data_url", "system_text", "text_of",
    "tool_arguments",
    # what hooks receive, and the application's shared objects (``app[appkeys.DATABASE]``...)
    "ChatContext", "Principal", "Usage", "appkeys",
    # inbound APIs
    "Dialect", "ChatCompletions",
]
