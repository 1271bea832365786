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
    assert list(provider_types(pm)) == ["openai", "openai-responses"]


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
    assert sorted(types) == ["openai", "openai-responses", "recorder"]
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


# --- the hook runner: pluggy calls the implementations, each hook by its declared policy -----------------

MESSAGES = [{"role": "user", "content": "hello"}]


def test_every_hook_declares_its_policy():
    pm = make_plugin_manager(Settings(), entry_points=False)
    for name in dir(pm.hook):
        if name.startswith("riceball_"):
            assert getattr(pm.hook, name).spec.function.riceball_policy.how in ("all", "first", "fold", "select")


@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
async def test_a_wrapper_around_prepare_request_sees_the_injected_body(start_gateway, settings, fake_openai, style):
    from riceball_proxy import hookimpl

    seen = []

    class Wrapper:
        if style == "wrapper":
            @hookimpl(wrapper=True)
            def riceball_prepare_request(self, ctx):
                seen.append(("before", ctx.body["messages"][0]["role"]))
                result = yield
                seen.append(("after", ctx.body["messages"][0]["content"], ctx.body["model"]))
                return result
        else:
            @hookimpl(hookwrapper=True)
            def riceball_prepare_request(self, ctx):
                seen.append(("before", ctx.body["messages"][0]["role"]))
                yield
                seen.append(("after", ctx.body["messages"][0]["content"], ctx.body["model"]))

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(Wrapper(), name="wrapper")
    calls = []
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name), lambda *args: None)
    gateway = await start_gateway(settings, plugin_manager=pm)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider, system_prompt="Be brief.", model="gpt-4o-mini")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    assert seen == [("before", "user"), ("after", "Be brief.", "gpt-4o-mini")]
    # pluggy's monitoring sees the hooks a request goes through
    assert {"riceball_authenticate", "riceball_prepare_request", "riceball_request_finished"} <= set(calls)


async def test_a_failing_observer_and_shutdown_hook_stop_no_built_in(start_gateway, settings, fake_openai, db, caplog):
    from riceball_proxy import appkeys, hookimpl

    class Careless:
        @hookimpl
        def riceball_request_finished(self, ctx, outcome):
            raise RuntimeError("sync observer broke")

        @hookimpl
        def riceball_shutdown(self, app):
            raise RuntimeError("sync shutdown broke")

    class CarelessAsync:
        @hookimpl
        async def riceball_request_finished(self, ctx, outcome):
            raise RuntimeError("async observer broke")

        @hookimpl
        async def riceball_shutdown(self, app):
            raise RuntimeError("async shutdown broke")

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(Careless(), name="careless")
    pm.register(CarelessAsync(), name="careless-async")
    gateway = await start_gateway(settings.replace(usage_flush_interval=3600), plugin_manager=pm)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    await gateway.app[appkeys.OBSERVERS].queue.join()
    assert 'riceball_requests_total{api="chat",assistant="%s",status="200"} 3.0' % assistant.id in \
        gateway.app[appkeys.METRICS].exposition().decode()
    await gateway.server.close()  # the usage writer's shutdown still writes what waits
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 3
    logged = caplog.text
    assert all(f"{what} broke" in logged for what in ("sync observer", "async observer", "sync shutdown",
                                                      "async shutdown"))


def test_a_wrapper_of_a_fold_hook_is_refused_at_registration():
    import pluggy

    from riceball_proxy import hookimpl

    class Wrapping:
        @hookimpl(wrapper=True)
        def riceball_transform_response(self, ctx, response):
            return (yield)

    pm = make_plugin_manager(Settings(), entry_points=False)
    with pytest.raises(pluggy.PluginValidationError, match="one implementation at a time"):
        pm.register(Wrapping(), name="wrapping")
    assert not pm.has_plugin("wrapping")


async def test_fold_hooks_pass_each_result_on_through_pluggy():
    from riceball_proxy import hookimpl

    class Exclaim:
        @hookimpl
        async def riceball_transform_response(self, ctx, response):
            return response + "!"

    class Shout:
        @hookimpl(tryfirst=True)
        def riceball_transform_response(self, ctx, response):
            return response.upper()

    class Keep:
        @hookimpl(trylast=True)
        def riceball_transform_response(self, ctx, response):
            return None  # leaves it as it is

    pm = make_plugin_manager(Settings(), entry_points=False)
    for plugin in (Exclaim(), Shout(), Keep()):
        pm.register(plugin)
    calls = []
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(len(impls)), lambda *args: None)
    assert await pm.run("riceball_transform_response", ctx=None, response="hi") == "HI!"
    assert calls == [1, 1, 1]  # pluggy called each implementation on its own


def test_an_implementation_of_an_undeclared_hook_registers_as_pluggy_allows():
    from riceball_proxy import hookimpl

    class Stray:
        @hookimpl
        def riceball_not_a_hook(self):
            return 1

    pm = make_plugin_manager(Settings(), entry_points=False)
    assert pm.register(Stray(), name="stray") == "stray"


async def test_a_hook_is_called_the_same_with_or_without_pluggy_in_the_way():
    """Without wrappers or monitors the manager calls a hook's implementations from a list worked out
    once; plugins that come and go, a monitor and a wrapper each change what is called at once."""
    from riceball_proxy import hookimpl

    order = []

    class Early:
        @hookimpl(tryfirst=True)
        def riceball_prepare_request(self, ctx):
            order.append("early")

    class Late:
        @hookimpl(trylast=True)
        async def riceball_prepare_request(self, ctx):
            order.append("late")

    class Refuse:
        @hookimpl
        async def riceball_authenticate(self, request, assistant_id):
            return f"refused {assistant_id}"

    pm = make_plugin_manager(Settings(), entry_points=False)
    for name in DEFAULT_PLUGINS:  # only this test's plugins
        pm.unregister(name=name)
    pm.register(Early(), name="early")
    late = Late()
    pm.register(late, name="late")
    await pm.run("riceball_prepare_request", ctx=None)
    assert order == ["early", "late"]

    pm.unregister(late)
    await pm.run("riceball_prepare_request", ctx=None)
    assert order == ["early", "late", "early"]
    assert await pm.run("riceball_authenticate", request=None, assistant_id=1) is None
    pm.register(Refuse(), name="refuse")
    assert await pm.run("riceball_authenticate", request=None, assistant_id=1) == "refused 1"

    monitored = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: monitored.append(name), lambda *args: None)
    assert await pm.run("riceball_authenticate", request=None, assistant_id=2) == "refused 2"
    await pm.run("riceball_prepare_request", ctx=None)
    assert monitored == ["riceball_authenticate", "riceball_prepare_request"]
    undo()
    await pm.run("riceball_prepare_request", ctx=None)
    assert monitored == ["riceball_authenticate", "riceball_prepare_request"]

    class Wrapper:
        @hookimpl(wrapper=True)
        def riceball_prepare_request(self, ctx):
            order.append("wrapped")
            return (yield)

    pm.register(Wrapper(), name="wrapper")
    order.clear()
    await pm.run("riceball_prepare_request", ctx=None)
    assert order == ["wrapped", "early"]


async def test_riceball_trace_plugins_logs_every_hook_call_with_its_arguments_and_result(
        start_gateway, settings, fake_openai, caplog, monkeypatch):
    import logging

    monkeypatch.setenv("RICEBALL_TRACE_PLUGINS", "1")
    traced = Settings.from_env().trace_plugins
    assert traced and not Settings().trace_plugins
    gateway = await start_gateway(settings.replace(trace_plugins=True))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider, model="traced-model")
    caplog.set_level(logging.INFO, logger="riceball_proxy.plugins.trace")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    lines = [record.getMessage() for record in caplog.records if record.name == "riceball_proxy.plugins.trace"]
    calls = [line for line in lines if line.startswith("riceball_prepare_request(")]
    assert calls and "ctx=<ChatContext req_" in calls[0] and "riceball_proxy.builtin.injection" in calls[0]
    assert any(line.startswith("riceball_prepare_request returned") for line in lines)
    assert any(line.startswith("riceball_authenticate (awaited) gave Principal(") for line in lines)
