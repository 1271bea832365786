"""A non-editable install (a built wheel) carries the templates and migrations."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT

SOURCES = ["riceball_proxy", "templates", "setup.cfg", "setup.py", "pyproject.toml", "README.md"]


def test_a_built_wheel_carries_templates_and_migrations(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("riceball_proxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"riceball_proxy/templates/base.html", "riceball_proxy/templates/index.html",
            "riceball_proxy/db/migrations/0001_init.sql"} <= names
    assert not any(name.startswith(("tests/", "templates/")) for name in names)
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "riceball_proxy").rglob("*.py")}
    assert modules <= names, f"left out of the wheel: {sorted(modules - names)}"  # every package listed

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    probe = (
        "import riceball_proxy, riceball_proxy.templating as t, riceball_proxy.db.migrate as m;"
        "print(riceball_proxy.__file__); print(t.template_dir()); print(len(m.available_migrations()))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                            capture_output=True, text=True, check=True, timeout=60)
    module_file, templates, migrations = result.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert templates == str(target / "riceball_proxy" / "templates")
    assert (target / "riceball_proxy" / "templates" / "index.html").is_file()
    assert int(migrations) >= 1


def _imports() -> dict[str, set[str]]:
    """Each module of riceball_proxy and the modules of riceball_proxy it imports at run time, in its
    body or in a function (imports for type checkers only left out)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "riceball_proxy"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("riceball_proxy"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
    return graph


def test_no_module_imports_another_that_imports_it_back():
    graph = _imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("an import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_a_command_line_noun_imports_no_other_noun():
    shared = {"riceball_proxy.cli", "riceball_proxy.cli.output", "riceball_proxy.cli.options",
              "riceball_proxy.cli.lookup"}
    for name, targets in _imports().items():
        if name.startswith("riceball_proxy.cli.") and name not in shared | {"riceball_proxy.cli.main"}:
            assert {t for t in targets if t.startswith("riceball_proxy.cli")} <= shared, name
