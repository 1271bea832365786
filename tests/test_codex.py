"""Codex itself (``@openai/codex`` from npm, ``scripts/install-agents``) through an assistant's Responses
API, run with ``codex exec`` and offline: its fake model asks for a shell command, then answers once the
command's output comes back. Once through an OpenAI-compatible provider, once through an Anthropic one
(both bridged)."""
import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.support import installed_agent

pytestmark = pytest.mark.agents

PROMPT = "Write the word riceball into proof.txt with a shell command, then tell me you are done."
COMMAND = "echo riceball > proof.txt"
FINAL = "Done: proof.txt holds the word."
SYSTEM_PROMPT = "You are the RiceBall test assistant."
SHELL_TOOLS = ("exec_command", "shell", "local_shell", "shell_command")


@pytest.fixture
def codex():
    return installed_agent(".bin/codex", "Codex")


def shell_call(tool_names) -> tuple[str, dict]:
    """The shell tool Codex offers, and the arguments that run ``COMMAND`` with it."""
    for name in SHELL_TOOLS:
        if name in tool_names:
            if name == "exec_command":
                return name, {"cmd": COMMAND}
            if name == "shell_command":
                return name, {"command": COMMAND}
            return name, {"command": ["bash", "-lc", COMMAND]}
    raise AssertionError(f"Codex offered no shell tool: {sorted(tool_names)}")


async def run_codex(codex: Path, base_url: str, key: str, tmp_path: Path, *, websocket: bool = False) -> str:
    """``codex exec`` in a new folder against ``base_url``, offline (its plugins, analytics, feedback and
    update checks off, a private CODEX_HOME). Fails unless the command ran and Codex finished."""
    home, workdir = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    (home / "config.toml").write_text(f"""
model = "riceball-assistant"
model_provider = "riceball"
check_for_update_on_startup = false

[model_providers.riceball]
name = "RiceBall"
base_url = "{base_url}"
wire_api = "responses"
env_key = "RICEBALL_API_KEY"
supports_websockets = {"true" if websocket else "false"}

[features]
plugins = false
remote_plugin = false

[analytics]
enabled = false

[feedback]
enabled = false
""")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home), "RICEBALL_API_KEY": key,
           "NO_PROXY": "127.0.0.1,localhost"}
    process = await asyncio.create_subprocess_exec(
        str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "--dangerously-bypass-approvals-and-sandbox",
        PROMPT, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 240)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"codex did not finish: {out.decode()[-2000:]} {err.decode()[-3000:]}") from None
    out, err = out.decode(), err.decode()
    assert process.returncode == 0, f"codex failed: {out[-2000:]} {err[-3000:]}"
    proof = workdir / "proof.txt"
    assert proof.exists() and proof.read_text().strip() == "riceball" and FINAL in out + err
    return out + err


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
async def test_codex_runs_a_command_through_an_openai_compatible_assistant(codex, start_gateway, settings,
                                                                           fake_openai, tmp_path, websocket):
    def model(body):
        if body["messages"][-1]["role"] == "tool":
            return FINAL, []
        name, arguments = shell_call({tool["function"]["name"] for tool in body.get("tools") or ()})
        return "", [(name, json.dumps(arguments))]

    fake_openai.responder = model
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), system_prompt=SYSTEM_PROMPT)
    key = await gateway.key()
    await run_codex(codex, gateway.base_url(assistant.id), key, tmp_path, websocket=websocket)
    assert [sent for sent in fake_openai.requests if sent["body"]["messages"][-1]["role"] == "tool"]
    for sent in fake_openai.requests:
        assert sent["body"]["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert key not in json.dumps(sent)
    rows = await gateway.usage_rows(2)
    assert {row["api"] for row in rows} == {"responses"}
    # Over a WebSocket, each call is numbered on its socket's request id (one socket, its calls in turn).
    assert all(row["request_id"].rsplit("-", 1)[-1].isdigit() for row in rows) is websocket
    if websocket:
        assert len({row["request_id"].rsplit("-", 1)[0] for row in rows}) == 1


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
async def test_codex_runs_a_command_through_an_anthropic_assistant(codex, aiohttp_server, start_gateway, settings,
                                                                  tmp_path, websocket):
    from riceball_proxy.testing.fake_anthropic import FakeAnthropic

    def model(body):
        last = body["messages"][-1]["content"]
        if isinstance(last, list) and any(block.get("type") == "tool_result" for block in last):
            return FINAL, []
        name, arguments = shell_call({tool["name"] for tool in body.get("tools") or ()})
        return "", [("toolu_01Shell", name, arguments)]

    fake = FakeAnthropic()
    fake.responder = model
    server = await aiohttp_server(fake.app())
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    provider = await gateway.provider(str(server.make_url("/v1")), type="anthropic", api_key="sk-ant-upstream")
    assistant = await gateway.assistant(provider, model="claude-sonnet-4-5", system_prompt=SYSTEM_PROMPT)
    key = await gateway.key()
    await run_codex(codex, gateway.base_url(assistant.id), key, tmp_path, websocket=websocket)
    for sent in fake.requests:
        if sent["body"] is not None:
            assert sent["body"]["system"].startswith(SYSTEM_PROMPT) and key not in json.dumps(sent)
