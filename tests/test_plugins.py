import inspect

import pytest

from riceball_proxy import __version__, hookspecs
from riceball_proxy.plugins import DEFAULT_PLUGINS, await_me_maybe, describe_plugins, make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings

@pytest.fixture
def installed_plugin(install_plugin):
    """``tests/plugins/lifecycle_recorder.py`` installed as distribution ``riceball-recorder`` 1.2.3."""
    recorder = install_plugin("lifecycle_recorder", "recorder", "riceball-recorder", "1.2.3")
    recorder.events.clear()
    return recorder


def test_default_plugins_are_registered_like_any_plugin():
    pm = make_plugin_manager(Settings(), entry_points=False)
    assert [name for name, _ in pm.list_name_plugin()] == list(DEFAULT_PLUGINS)
    described = {p["name"]: p for p in describe_plugins(pm)}
    assert described["riceball_proxy.builtin.openai_compat"] == {
        "name": "riceball_proxy.builtin.openai_compat",
        "builtin": True,
        "distribution": "riceball-proxy",
        "version": __version__,
        "hooks": ["riceball_provider_types"],
    }
    assert described["riceball_proxy.builtin.api_key_auth"]["hooks"] == ["riceball_authenticate"]
    assert described["riceball_proxy.builtin.injection"]["hooks"] == ["riceball_prepare_request"]
    assert described["riceball_proxy.builtin.metrics"]["hooks"] == ["riceball_request_finished"]
    assert described["riceball_proxy.builtin.usage_recorder"]["hooks"] == [
        "riceball_request_finished", "riceball_shutdown", "riceball_startup"]
    assert list(provider_types(pm)) == ["openai"]


def test_installed_plugins_are_found_by_entry_point(installed_plugin):
    pm = make_plugin_manager(Settings(plugins=frozenset({"recorder"})))
    recorder = next(p for p in describe_plugins(pm) if p["name"] == "recorder")
    assert recorder == {
        "name": "recorder",
        "builtin": False,
        "distribution": "riceball-recorder",
        "version": "1.2.3",
        "hooks": ["riceball_provider_types", "riceball_shutdown", "riceball_startup"],
    }
    types = provider_types(pm)
    assert sorted(types) == ["openai", "recorder"]
    assert "recorder" in dict(make_plugin_manager(Settings()).list_name_plugin())  # no allowlist: all load
    assert types["openai"].label == "OpenAI (replaced by tests)"  # the installed plugin wins


def test_the_allowlist_keeps_other_installed_plugins_out(installed_plugin):
    assert "recorder" not in dict(make_plugin_manager(Settings(plugins=frozenset({"other"}))).list_name_plugin())
    assert "recorder" in dict(make_plugin_manager(Settings(plugins=frozenset({"recorder"}))).list_name_plugin())


def test_disabled_plugins_are_not_registered(installed_plugin):
    pm = make_plugin_manager(Settings(plugins=frozenset({"recorder"}),
                                      disabled_plugins=frozenset({"recorder", "riceball_proxy.builtin.openai_compat"})))
    names = [p["name"] for p in describe_plugins(pm)]
    assert names == [name for name in DEFAULT_PLUGINS if name != "riceball_proxy.builtin.openai_compat"]
    assert provider_types(pm) == {}


def test_every_hookspec_says_how_its_result_is_used():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("riceball_")]
    assert len(specs) >= 9
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert any(word in doc for word in ("*Awaited*", "*Selector*", "Synchronous")), spec.__name__


async def test_await_me_maybe():
    async def later():
        return 2

    assert await await_me_maybe(1) == 1
    assert await await_me_maybe(later()) == 2
    assert await await_me_maybe(None) is None
