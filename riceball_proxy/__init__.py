"""RiceBall: configured LLM assistants behind an OpenAI-compatible API."""
import pluggy

__version__ = "0.1.0"

#: Marks a function in a plugin module as the implementation of a RiceBall hook.
hookimpl = pluggy.HookimplMarker("riceball")

__all__ = ["__version__", "hookimpl"]
