"""The plugin manager: built-in plugins, installed ones found by entry point, and the allow/block lists."""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from riceball_proxy import __version__, hookspecs
from riceball_proxy.settings import Settings

logger = logging.getLogger(__name__)

#: The setuptools entry-point group in which installed plugins declare themselves.
ENTRY_POINT_GROUP = "riceball"

#: The gateway's own behaviour, registered before any installed plugin, exactly like one.
DEFAULT_PLUGINS = (
    "riceball_proxy.builtin.api_key_auth",
    "riceball_proxy.builtin.injection",
    "riceball_proxy.builtin.openai_compat",
    "riceball_proxy.builtin.metrics",
    "riceball_proxy.builtin.usage_recorder",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus where each installed plugin came from."""

    def __init__(self) -> None:
        super().__init__("riceball")
        self.add_hookspecs(hookspecs)
        #: plugin name -> (distribution name, version), for plugins loaded from an entry point.
        self.distributions: dict[str, tuple[str, str]] = {}


def make_plugin_manager(settings: Settings, *, entry_points: bool = True) -> PluginManager:
    """A fresh manager with the built-in plugins and, unless told not to, the installed ones."""
    pm = PluginManager()
    for name in settings.disabled_plugins:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        load_entry_point_plugins(pm, settings.plugins)
    return pm


def load_entry_point_plugins(pm: PluginManager, allowed: Iterable[str] | None = None) -> None:
    """Register every plugin of the ``riceball`` entry-point group (only ``allowed`` ones, if given)."""
    allowed = None if allowed is None else set(allowed)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if (allowed is not None and name not in allowed) or pm.is_blocked(name) or pm.has_plugin(name):
            continue
        pm.register(entry_point.load(), name=name)
        if entry_point.dist is not None:
            pm.distributions[name] = (entry_point.dist.name, entry_point.dist.version)


def describe_plugins(pm: PluginManager) -> list[dict[str, Any]]:
    """Each registered plugin: its name, where it comes from, its version and the hooks it implements."""
    described = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # a blocked name
            continue
        if name in pm.distributions:
            distribution, version = pm.distributions[name]
        elif name in DEFAULT_PLUGINS:
            distribution, version = "riceball-proxy", __version__
        else:
            distribution, version = None, None
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        described.append(
            {
                "name": name,
                "builtin": name in DEFAULT_PLUGINS,
                "distribution": distribution,
                "version": version,
                "hooks": hooks,
            }
        )
    return described


async def await_me_maybe(value: Any) -> Any:
    """The value itself, or what it resolves to when it is awaitable (a hook may return either)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _in_call_order(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
    # pluggy calls the last of get_hookimpls() first; wrappers have no meaning for awaited hooks.
    return [impl for impl in reversed(hook.get_hookimpls()) if not (impl.hookwrapper or impl.wrapper)]


def _call(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    return impl.function(*[kwargs[name] for name in impl.argnames])


async def await_hook(hook: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
    """Call an *awaited* hook: each implementation in pluggy's call order, each awaited before the next.

    Unlike ``hook(**kwargs)``, which runs every synchronous part before any coroutine body, this
    keeps the order of effects the order of the chain. Returns the results that are not None.
    """
    results = []
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call(impl, kwargs))
        if result is not None:
            results.append(result)
    return results


async def await_first(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """Call an *awaited* hook in call order and stop at the first result that is not None."""
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call(impl, kwargs))
        if result is not None:
            return result
    return None


async def fold_hook(hook: pluggy.HookCaller, name: str, value: Any, **kwargs: Any) -> Any:
    """Call an *awaited* hook in call order, passing each result on as argument ``name``; return the last.

    An implementation that returns None leaves the value as it was.
    """
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call(impl, {**kwargs, name: value}))
        if result is not None:
            value = result
    return value
