"""Two more OpenAI-compatible provider types, as a provider plugin would offer them: ``deepseek`` (whose
models genai-prices knows) and ``selfhosted`` (whose models nobody prices)."""
from riceball_proxy import hookimpl
from riceball_proxy.builtin.openai_compat import OpenAICompatibleAdapter
from riceball_proxy.providers import ProviderType


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="deepseek", label="DeepSeek", adapter=OpenAICompatibleAdapter),
            ProviderType(name="selfhosted", label="Self-hosted", adapter=OpenAICompatibleAdapter)]
