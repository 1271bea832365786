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
