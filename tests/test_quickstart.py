"""The README's offline quick start, run as written: a real server, the real commands, the example script."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, free_port, wait_for_http


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```", readme, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_quick_start_streams_an_answer(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("RICEBALL_")}
    port = free_port()
    env |= {"RICEBALL_DATA_DIR": str(tmp_path / "var"), "RICEBALL_PORT": str(port),
            "RICEBALL_URL": f"http://127.0.0.1:{port}"}
    venv_bin = Path(sys.executable).parent
    server = subprocess.Popen([str(venv_bin / "riceball"), "serve"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", server) == 200
        add_assistant, create_key, run_script = quickstart_commands()

        def run(command: str) -> str:
            argv = command.replace(".venv/bin/", f"{venv_bin}/").split()
            result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout

        assistant_id = re.search(r"^id:\s+(\S+)$", run(add_assistant), flags=re.M).group(1)
        key = run(create_key).splitlines()[0]
        assert key.startswith("sk-")
        output = run(run_script.replace("ASSISTANT_ID", assistant_id).replace("API_KEY", key))
        assert output == "You said: Hello, RiceBall! Stream this back to me.\n"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        server.stderr.close()


def test_the_example_script_without_arguments_prints_its_usage():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: python ")
    assert "ASSISTANT_ID API_KEY" in result.stderr and "Traceback" not in result.stderr
