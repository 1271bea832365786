"""The Makefile's targets, as a dry run: what they would run."""
import subprocess

from tests.support import ROOT


def dry_run(target: str) -> str:
    return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_make_bench_leaves_the_tracked_docs_alone_unless_asked():
    assert "--write var/performance.md" in dry_run("bench") and "docs/performance.md" not in dry_run("bench")
    assert "BENCH_OUTPUT=docs/performance.md" in dry_run("bench-docs")


def test_the_interpreter_probe_and_the_install_say_only_what_matters():
    makefile = (ROOT / "Makefile").read_text()
    assert "sys.version_info < (3, 11))' 2>/dev/null" in makefile  # missing interpreters say nothing
    assert makefile.count("pip install -qq --disable-pip-version-check") == 2
