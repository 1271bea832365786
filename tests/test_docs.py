"""The documentation is part of the contract: every hook documented with its exact signature and a
runnable example, and the API guide's Python example working against a real gateway."""
import asyncio
import inspect
import re
from pathlib import Path

import pytest

from riceball_proxy import hookspecs
from riceball_proxy.plugins import make_plugin_manager
from riceball_proxy.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKS = sorted(name for name in make_plugin_manager(Settings(), entry_points=False).hook.__dict__
               if name.startswith("riceball_"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def sections(text: str) -> dict[str, str]:
    """``## heading`` -> the text until the next such heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_hook_is_declared_in_hookspecs():
    declared = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                      if name.startswith("riceball_"))
    assert HOOKS == declared


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_titled_with_its_signature(hook):
    signature = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    documented = sections((DOCS / "plugins.md").read_text())
    assert signature in documented, f"docs/plugins.md has no section '## {signature}'"
    assert python_blocks(documented[signature]), f"the section on {hook} has no example"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_example_runs(hook):
    signature = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    for block in python_blocks(sections((DOCS / "plugins.md").read_text())[signature]):
        namespace: dict = {}
        exec(compile(block, f"docs/plugins.md ({hook})", "exec"), namespace)
        implementation = namespace[hook]
        assert hasattr(implementation, "riceball_impl"), f"the {hook} example is not marked @hookimpl"
        pm = make_plugin_manager(Settings(), entry_points=False)
        pm.register(type("Example", (), {hook: staticmethod(implementation)})(), name="example")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_s_reference_is_its_docstring(hook):
    """The hookspecs' docstrings are the one text: scripts/hook-reference writes them into the docs."""
    signature = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    prose = sections((DOCS / "plugins.md").read_text())[signature].split("```python")[0].strip()
    assert prose == hookspecs.reference(hook), "run scripts/hook-reference"


def test_documented_plugin_code_imports_only_the_supported_api():
    """Examples for plugin authors import from ``riceball_proxy.plugin`` (and tests from
    ``riceball_proxy.testing``): nothing that may change without notice."""
    import riceball_proxy.plugin as supported

    for page in ("plugins.md", "writing-a-provider.md"):
        for block in python_blocks((DOCS / page).read_text()):
            for module in re.findall(r"^\s*(?:from|import) (riceball_proxy[\w.]*)", block, flags=re.M):
                assert module in ("riceball_proxy.plugin", "riceball_proxy.testing"), f"{page} imports {module}"
    assert all(hasattr(supported, name) for name in supported.__all__)
    assert (Path(supported.__file__).parent / "py.typed").exists()


def test_every_hook_has_a_test():
    tests = "\n".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    missing = [hook for hook in HOOKS if f"def test_hook_{hook}(" not in tests]
    assert missing == []


async def test_the_python_example_in_the_api_guide_works(configured):
    (example, *_) = python_blocks((DOCS / "api.md").read_text())
    example = example.replace("http://127.0.0.1:8000/api/v1/assistants/ASSISTANT_ID/v1",
                              configured.gateway.base_url(configured.assistant.id))
    example = example.replace("sk-YOUR-KEY", configured.key)
    example = example.replace("client = OpenAI(", "client = OpenAI(max_retries=0, ")
    printed = []
    namespace = {"print": lambda *args, **kwargs: printed.append("".join(map(str, args)))}
    await asyncio.to_thread(exec, compile(example, "docs/api.md", "exec"), namespace)
    namespace["client"].close()
    assert printed[0] == "Hello from the fake upstream"
    assert "".join(printed[1:]).strip().endswith("tokens")


def test_every_image_the_docs_show_exists():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} shows a missing image: {target}"


async def test_the_worked_provider_example_serves_requests(aiohttp_server, start_gateway, settings):
    """docs/writing-a-provider.md's adapter against a fake Acme upstream speaking the format it describes."""
    import orjson
    from aiohttp import web

    from riceball_proxy.plugins import make_plugin_manager

    received = []

    async def generate(request):
        body = await request.json()
        received.append((request.headers.get("X-Acme-Key"), body))
        if not body.get("stream"):
            return web.json_response({"text": "Acme says hi", "words_in": 4, "words_out": 3})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in ({"piece": "Acme"}, {"piece": " says"}, {"piece": " hi"},
                      {"done": True, "words_in": 4, "words_out": 3}):
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        return response

    upstream = web.Application()
    upstream.router.add_post("/generate", generate)
    server = await aiohttp_server(upstream)

    namespace: dict = {}
    exec(compile(python_blocks((DOCS / "writing-a-provider.md").read_text())[0], "docs/writing-a-provider.md",
                 "exec"), namespace)
    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(type("Acme", (), {"riceball_provider_types": staticmethod(namespace["riceball_provider_types"])})(),
                name="acme")
    gateway = await start_gateway(settings, plugin_manager=pm)
    provider = await gateway.provider(str(server.make_url("")), type="acme", api_key="acme-secret")
    assistant = await gateway.assistant(provider, model="acme-1")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        completion = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "Acme says hi" and completion.usage.total_tokens == 7
        stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Acme says hi"
    assert chunks[-1].usage.total_tokens == 7
    assert received[0] == ("acme-secret", {"prompt": "user: hi", "max_words": 100})
