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
    """Looking for an interpreter prints nothing about the ones this machine lacks, and an installed
    tree's install prints nothing at all."""
    result = subprocess.run(["make", "-s", "install"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_make_test_checks_the_code_before_it_tests_it():
    commands = dry_run("test").splitlines()
    tests = next(n for n, command in enumerate(commands) if "-m pytest" in command)
    assert next(n for n, command in enumerate(commands) if "ruff check" in command) < tests
    assert next(n for n, command in enumerate(commands) if command.endswith("/mypy")) < tests


def test_make_dist_builds_a_wheel_of_the_gateway_and_of_each_plugin(tmp_path):
    result = subprocess.run(["make", "-s", "dist", f"DIST={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    names = sorted(path.name.split("-")[0] for path in tmp_path.glob("*.whl"))
    assert names == ["riceball_anthropic", "riceball_echo", "riceball_gemini", "riceball_proxy"]
    assert f"The wheels are in {tmp_path}/" in result.stdout
