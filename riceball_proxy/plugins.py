"""The plugin manager: built-in plugins, installed ones found by entry point, and the allow/block lists."""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from riceball_proxy import __version__, hookspecs
from riceball_proxy.hookspecs import Policy
from riceball_proxy.settings import Settings

logger = logging.getLogger(__name__)

#: The setuptools entry-point group in which installed plugins declare themselves.
ENTRY_POINT_GROUP = "riceball"

#: The gateway's own behaviour, registered before any installed plugin, exactly like one.
DEFAULT_PLUGINS = (
    "riceball_proxy.builtin.api_key_auth",
    "riceball_proxy.builtin.dialects",
    "riceball_proxy.builtin.injection",
    "riceball_proxy.builtin.limits",
    "riceball_proxy.builtin.openai_compat",
    "riceball_proxy.builtin.metrics",
    "riceball_proxy.builtin.usage_recorder",
)
#: The built-in plugin registered only when ``Settings.otel`` asks for OpenTelemetry.
TRACING_PLUGIN = "riceball_proxy.builtin.tracing"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus where each installed plugin came from, and each hook's policy enforced.

    At registration, an implementation of an *isolated* hook gets its exceptions logged instead of
    raised (so the other implementations still run), and a wrapper of a *fold* hook is refused.

    A hook with no wrapper among its implementations, called while no hook-call monitor (tracing) is
    installed, is called through a list worked out once: the same implementations, in pluggy's order,
    with the same arguments, without pluggy's per-call machinery. Anything that could tell the two
    apart (a wrapper, a monitor) sends every call through pluggy.
    """

    def __init__(self) -> None:
        super().__init__("riceball")
        self.add_hookspecs(hookspecs)
        #: plugin name -> (distribution name, version), for plugins loaded from an entry point.
        self.distributions: dict[str, tuple[str, str]] = {}
        self._policies = {name: policy_of(getattr(self.hook, name)) for name in dir(self.hook)
                          if name.startswith("riceball_")}
        # For fold hooks: the implementations last seen, and one caller for each of them.
        self._one_by_one: dict[str, tuple[list[pluggy.HookImpl], list[pluggy.HookCaller]]] = {}
        # Hook name -> its call list (None: through pluggy), dropped whenever a plugin comes or goes.
        self._call_lists: dict[str, CallList | None] = {}
        self._plain_hookexec = self._inner_hookexec  # pluggy's own, until a monitor replaces it

    async def run(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name`` by its declared policy: the list of results (``all``, ``select``), the
        first result (``first``) or the folded value (``fold``). pluggy calls the implementations, or
        the hook's call list where nothing could tell the difference (see the class)."""
        hook = getattr(self.hook, name)
        policy = self._policies.get(name) or policy_of(hook)
        calls = self._call_list(name, hook)
        if policy.how == "fold" and policy.fold is not None:  # a fold names its argument (hookspecs.runs)
            if calls is not None:
                return await _fold_calls(calls, policy.fold, kwargs)
            return await self._fold(hook, policy.fold, kwargs)
        if calls is None:
            results = hook(**kwargs)  # pluggy: implementations, wrappers, tracing; None results are left out
        else:
            results = [result for result in (function(*[kwargs[arg] for arg in args]) for function, args in calls)
                       if result is not None]
        if policy.how == "select":
            return results
        values = []
        awaited = 0
        try:
            for result in results:
                awaited += 1
                value = await await_me_maybe(result)
                if value is not None:
                    if policy.how == "first":
                        return value
                    values.append(value)
        finally:
            for later in results[awaited:]:  # after a first result, or an exception
                if inspect.iscoroutine(later):
                    later.close()  # never started: nothing ran, and no "never awaited" warning
        return None if policy.how == "first" else values

    async def _fold(self, hook: pluggy.HookCaller, argument: str, kwargs: dict[str, Any]) -> Any:
        value = kwargs[argument]
        for caller in self._callers_one_by_one(hook):
            for result in caller(**{**kwargs, argument: value}):
                result = await await_me_maybe(result)
                if result is not None:
                    value = result
        return value

    def _call_list(self, name: str, hook: pluggy.HookCaller) -> CallList | None:
        """``hook``'s implementations in call order, each with the names of its arguments; None when
        pluggy must make the call (a wrapper, a keyword argument, a monitor)."""
        if self._inner_hookexec is not self._plain_hookexec:
            return None
        try:
            return self._call_lists[name]
        except KeyError:
            pass
        impls = hook.get_hookimpls()
        calls = None
        if not any(impl.wrapper or impl.hookwrapper or impl.kwargnames for impl in impls):
            calls = tuple((impl.function, tuple(impl.argnames)) for impl in reversed(impls))
        self._call_lists[name] = calls
        return calls

    def _callers_one_by_one(self, hook: pluggy.HookCaller) -> list[pluggy.HookCaller]:
        """One pluggy caller per implementation, in call order (each leaves out every other plugin)."""
        impls = hook.get_hookimpls()
        cached = self._one_by_one.get(hook.name)
        if cached is not None and cached[0] == impls:
            return cached[1]
        plugins = [impl.plugin for impl in impls]
        callers = [self.subset_hook_caller(hook.name, [other for other in plugins if other is not impl.plugin])
                   for impl in reversed(impls)]
        self._one_by_one[hook.name] = (impls, callers)
        return callers

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._call_lists.clear()
        return super().unregister(plugin, name)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._call_lists.clear()
        name = super().register(plugin, name)
        if name is None:  # blocked
            return None
        for caller in self.get_hookcallers(plugin) or ():
            if caller.spec is None:  # a hook no spec declares (pluggy's check_pending reports it)
                continue
            policy = policy_of(caller)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if impl.wrapper or impl.hookwrapper:
                    if policy.how == "fold":
                        self.unregister(plugin)
                        raise pluggy.PluginValidationError(
                            plugin, f"{name}: {caller.name} is called one implementation at a time; "
                                    "a wrapper has nothing to wrap there")
                elif policy.isolated:
                    impl.function = _isolated(impl.function, caller.name, name)  # type: ignore[misc]  # pluggy calls it
        return name


def make_plugin_manager(settings: Settings, *, entry_points: bool = True) -> PluginManager:
    """A fresh manager with the built-in plugins and, unless told not to, the installed ones."""
    pm = PluginManager()
    for name in settings.disabled_plugins:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    if settings.otel is not None and not pm.is_blocked(TRACING_PLUGIN):
        pm.register(importlib.import_module(TRACING_PLUGIN).plugin(settings.otel), name=TRACING_PLUGIN)
    if entry_points:
        load_entry_point_plugins(pm, settings.plugins)
    if settings.trace_plugins:
        trace_hook_calls(pm)
    return pm


#: How much of each argument and result a hook-call trace shows.
TRACE_WIDTH = 300


def _shown(value: Any) -> str:
    if hasattr(value, "request_id") and hasattr(value, "body"):  # a ChatContext: its request, not its all
        return f"<{type(value).__name__} {value.request_id}>"
    text = repr(value)
    return text if len(text) <= TRACE_WIDTH else text[:TRACE_WIDTH] + "..."


def trace_hook_calls(pm: PluginManager) -> None:
    """Log every hook call (logger ``riceball_proxy.plugins.trace``): the hook, the plugins that
    implement it in calling order, its arguments, then its result or exception; a result the gateway
    awaits (an implementation's coroutine) is logged when it is awaited, with what it gave."""
    trace = logging.getLogger(f"{__name__}.trace")

    async def awaited(hook_name: str, coroutine):
        try:
            result = await coroutine
        except BaseException as exc:
            trace.info("%s (awaited) raised %s", hook_name, _shown(exc))
            raise
        trace.info("%s (awaited) gave %s", hook_name, _shown(result))
        return result

    def before(hook_name, implementations, kwargs):
        trace.info("%s(%s) -> %s", hook_name, ", ".join(f"{k}={_shown(v)}" for k, v in kwargs.items()),
                   ", ".join(impl.plugin_name for impl in reversed(implementations)) or "(no implementation)")

    def after(outcome, hook_name, implementations, kwargs):
        if outcome.exception is not None:
            trace.info("%s raised %s", hook_name, _shown(outcome.exception))
            return
        result = outcome.get_result()
        if inspect.iscoroutine(result):
            outcome.force_result(awaited(hook_name, result))
        elif isinstance(result, list) and any(inspect.iscoroutine(item) for item in result):
            outcome.force_result([awaited(hook_name, item) if inspect.iscoroutine(item) else item
                                  for item in result])
        trace.info("%s returned %s", hook_name, _shown(result))

    pm.add_hookcall_monitoring(before, after)


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
        elif name in DEFAULT_PLUGINS or name == TRACING_PLUGIN:
            distribution, version = "riceball-proxy", __version__
        else:
            distribution, version = None, None
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        described.append(
            {
                "name": name,
                "builtin": name in DEFAULT_PLUGINS or name == TRACING_PLUGIN,
                "distribution": distribution,
                "version": version,
                "hooks": hooks,
            }
        )
    return described


#: A hook's implementations in call order: (function, names of the arguments it takes).
CallList = tuple[tuple[Callable, tuple[str, ...]], ...]


async def _fold_calls(calls: CallList, argument: str, kwargs: dict[str, Any]) -> Any:
    """``PluginManager._fold`` for a hook called through its call list."""
    value = kwargs[argument]
    for function, args in calls:
        kwargs[argument] = value
        result = function(*[kwargs[arg] for arg in args])
        result = await await_me_maybe(result)
        if result is not None:
            value = result
    return value


async def await_me_maybe(value: Any) -> Any:
    """The value itself, or what it resolves to when it is awaitable (a hook may return either)."""
    if inspect.isawaitable(value):
        return await value
    return value


def policy_of(hook: pluggy.HookCaller) -> Policy:
    """The calling policy declared on a hook's spec (``hookspecs.runs``)."""
    return hook.spec.function.riceball_policy  # type: ignore[union-attr]  # every riceball hook has a spec


def _isolated(function: Callable, hook_name: str, plugin_name: str) -> Callable:
    """``function`` with its exceptions (and its awaitable's) logged instead of raised."""

    async def logged(awaitable):
        try:
            return await awaitable
        except Exception:
            logger.exception("plugin %r failed in %s", plugin_name, hook_name)
            return None

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            result = function(*args)
        except Exception:
            logger.exception("plugin %r failed in %s", plugin_name, hook_name)
            return None
        return logged(result) if inspect.isawaitable(result) else result

    return call
