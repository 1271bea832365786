"""Claude Code itself (``@anthropic-ai/claude-code`` from npm, ``scripts/install-agents``) through an
assistant's Messages API, run non-interactively and offline: its fake model asks for its Bash tool, then
answers once the tool's output comes back. Once through an OpenAI-compatible provider (translated), once
through an Anthropic one (native)."""
import asyncio
import json
import os
from pathlib import Path

import pytest

from riceball_proxy.testing.fake_openai import refusal_of
from tests.support import installed_agent

pytestmark = pytest.mark.agents

PROMPT = "Write the word riceball into proof.txt with your Bash tool, then tell me you are done."
COMMAND = "echo riceball > proof.txt"
FINAL = "Done: proof.txt holds the word."
SYSTEM_PROMPT = "You are the RiceBall test assistant."


@pytest.fixture
def claude_code():
    return installed_agent(".bin/claude", "Claude Code")


async def run_claude(claude: Path, gateway, assistant, tmp_path: Path) -> tuple[str, str]:
    """``claude -p`` against ``assistant``'s base URL with a new key, in a new folder, offline: a private
    HOME, no telemetry, no update checks, no proxy between it and the loopback gateway. Fails unless it
    ran its Bash tool and finished; returns the key it used and what it printed."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    key = await gateway.key()
    code, out, err = await _claude(claude, gateway.url(f"/api/v1/assistants/{assistant.id}"), key, workdir)
    assert code == 0, f"claude failed: {out[-2000:]} {err[-2000:]}"
    proof = workdir / "proof.txt"
    assert proof.exists() and proof.read_text().strip() == "riceball" and FINAL in out
    return key, out


async def _claude(claude: Path, base_url: str, key: str, workdir: Path) -> tuple[int, str, str]:
    home = workdir.parent / "home"
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": key,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "DISABLE_ERROR_REPORTING": "1", "IS_SANDBOX": "1", "NO_PROXY": "127.0.0.1,localhost"}
    process = await asyncio.create_subprocess_exec(
        str(claude), "-p", PROMPT, "--dangerously-skip-permissions", "--allowedTools", "Bash", cwd=workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 240)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"claude did not finish: {out.decode()[-2000:]} {err.decode()[-2000:]}") from None
    return process.returncode, out.decode(), err.decode()


async def test_claude_code_runs_a_tool_through_an_openai_compatible_assistant(claude_code, start_gateway, settings,
                                                                            fake_openai, tmp_path):
    def model(body):
        last = body["messages"][-1]
        if last["role"] == "tool":
            return FINAL, []
        if any(tool["function"]["name"] == "Bash" for tool in body.get("tools") or ()):
            return "", [("Bash", json.dumps({"command": COMMAND, "description": "Write the proof"}))]
        return "OK", []

    fake_openai.responder = model
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), system_prompt=SYSTEM_PROMPT)
    key, _ = await run_claude(claude_code, gateway, assistant, tmp_path)
    assert [r for r in fake_openai.requests if r["body"]["messages"][-1]["role"] == "tool"]  # the result came back
    for sent in fake_openai.requests:
        assert sent["body"]["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert key not in json.dumps(sent)
    answered = [sent for sent in fake_openai.requests if refusal_of(sent["body"]) is None]  # one row a call
    rows = await gateway.usage_rows(len(answered))
    assert {row["api"] for row in rows} == {"messages"} and all(row["status"] == 200 for row in rows)


async def test_claude_code_runs_a_tool_through_an_anthropic_assistant(claude_code, aiohttp_server, start_gateway,
                                                                     settings, tmp_path):
    from riceball_proxy.testing.fake_anthropic import FakeAnthropic

    def model(body):
        last = body["messages"][-1]
        content = last["content"] if isinstance(last["content"], list) else []
        if any(block.get("type") == "tool_result" for block in content):
            return FINAL, []
        if any(tool.get("name") == "Bash" for tool in body.get("tools") or ()):
            return "", [("toolu_01Proof", "Bash", {"command": COMMAND, "description": "Write the proof"})]
        return "OK", []

    fake = FakeAnthropic()
    fake.responder = model
    server = await aiohttp_server(fake.app())
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    provider = await gateway.provider(str(server.make_url("/v1")), type="anthropic", api_key="sk-ant-upstream")
    assistant = await gateway.assistant(provider, model="claude-sonnet-4-5", system_prompt=SYSTEM_PROMPT)
    key, _ = await run_claude(claude_code, gateway, assistant, tmp_path)
    for sent in fake.requests:
        if sent["body"] is None:
            continue
        assert sent["body"]["system"][0] == {"type": "text", "text": SYSTEM_PROMPT}
        assert sent["body"]["model"] == "claude-sonnet-4-5" and sent["headers"]["x-api-key"] == "sk-ant-upstream"
        assert key not in json.dumps(sent)
    assert any(block.get("type") == "tool_result" for sent in fake.requests if sent["body"]
               for block in sent["body"]["messages"][-1]["content"] if isinstance(block, dict))
