"""A non-editable install (a built wheel) carries the templates and migrations."""
import shutil
import subprocess
import sys
import zipfile

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
