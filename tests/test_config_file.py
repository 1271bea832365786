"""Configuration as code: ``riceball apply``, ``riceball export`` and RICEBALL_CONFIG_FILE, on the test
database, with the gateway serving what was applied."""
import asyncio
import json
import re
import subprocess
import types
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from riceball_proxy import crypto
from riceball_proxy.db import api_keys, assistants, init_connection, providers
from tests.support import environment, free_port, riceball_command, run_sync, wait_for_http
from tests.test_cli import run, run_json

DOCS = Path(__file__).parent.parent / "docs"


def documented_example() -> str:
    """The complete example of docs/configuration.md."""
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("### The format"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def apply_env(cli_env, monkeypatch, tmp_path):
    """The CLI's environment with the Anthropic plugin loaded and the example's secrets available."""
    monkeypatch.setenv("RICEBALL_PLUGINS", "anthropic")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-upstream")
    secret_file = tmp_path / "anthropic.key"
    secret_file.write_text("sk-ant-upstream\n")
    return types.SimpleNamespace(database_url=cli_env.database_url, secret_key=cli_env.secret_key,
                                 anthropic_key_file=secret_file)


def write(tmp_path, text: str, name: str = "riceball.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def _read(url, work):
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        return await work(conn)
    finally:
        await conn.close()


def read(url, work):
    return run_sync(_read, url, work)


def counts(url):
    async def work(conn):
        return {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                for table in ("providers", "assistants", "api_keys")}
    return read(url, work)


def test_the_documented_example_applies_and_reapplies_unchanged(apply_env, capsys, monkeypatch, tmp_path):
    text = documented_example().replace("/run/secrets/anthropic", str(apply_env.anthropic_key_file))
    path = write(tmp_path, text)
    dry = run_json(capsys, monkeypatch, "apply", "-f", path, "--dry-run")
    assert dry["dry_run"] is True and len(dry["created"]) == 6
    assert all("key" not in entry for entry in dry["created"])  # a key not kept has no secret to show
    assert counts(apply_env.database_url) == {"providers": 0, "assistants": 0, "api_keys": 0}

    applied = run_json(capsys, monkeypatch, "apply", "-f", path)
    assert [(e["kind"], e["name"]) for e in applied["created"]] == [
        ("provider", "openai"), ("provider", "anthropic"), ("assistant", "support"), ("assistant", "translator"),
        ("key", "website"), ("key", "batch-jobs")]
    assert applied["updated"] == applied["deleted"] == applied["unchanged"] == []
    secrets = {e["name"]: e["key"] for e in applied["created"] if e["kind"] == "key"}
    assert all(secret.startswith("sk-") for secret in secrets.values())

    async def stored(conn):
        box = crypto.SecretBox([apply_env.secret_key])
        openai = await providers.get_by_name(conn, "openai")
        anthropic = await providers.get_by_name(conn, "anthropic")
        support = await assistants.get_by_name(conn, "support")
        website = await api_keys.in_force_named(conn, "website")
        hashes = {row["name"]: row["key_hash"] for row in await conn.fetch("SELECT name, key_hash FROM api_keys")}
        return (box.decrypt(openai.api_key_encrypted), box.decrypt(anthropic.api_key_encrypted), anthropic.id,
                support, website, hashes)

    openai_key, anthropic_key, anthropic_id, support, website, hashes = read(apply_env.database_url, stored)
    assert (openai_key, anthropic_key) == ("sk-openai-upstream", "sk-ant-upstream")
    assert support.system_prompt.startswith("You are the support assistant of ACME.\n")
    assert dict(support.parameters) == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 800, "presence_penalty": 0,
                                        "frequency_penalty": 0.5, "seed": 42, "stop": ["END"],
                                        "reasoning_effort": "low"}
    assert support.locked == {"temperature", "max_tokens"}
    assert (support.limits.rpm, support.limits.budget_usd, support.price_cached_input) == (600, 100, Decimal("0.075"))
    assert (support.price_cache_write, support.auto_cache) == (Decimal("0.15"), False)
    assert [(t.provider_id, t.model, t.priority, dict(t.params), t.prices) for t in support.fallbacks] == [
        (anthropic_id, "claude-3-5-haiku-latest", 1, {"max_tokens": 600},
         (Decimal("0.8"), Decimal(4), Decimal("0.08"), Decimal(1)))]
    assert website.assistant_ids == (support.id,) and website.limits.max_parallel == 5
    assert {name: crypto.hash_api_key(secret) for name, secret in secrets.items()} == hashes

    again = run_json(capsys, monkeypatch, "apply", "-f", path)
    assert again["created"] == again["updated"] == again["deleted"] == [] and len(again["unchanged"]) == 6
    status, out, _ = run(capsys, monkeypatch, "apply", "-f", path)
    assert status == 0 and out.strip() == "nothing to change (6 unchanged)"
    assert not any(secret in out for secret in secrets.values())

    # The export applies with no change, and holds no secret.
    status, exported, err = run(capsys, monkeypatch, "export")
    assert status == 0 and "ANTHROPIC_API_KEY, OPENAI_API_KEY" in err
    assert "sk-openai-upstream" not in exported and "sk-ant-upstream" not in exported
    assert "api_key: ${OPENAI_API_KEY}" in exported and "api_key: ${ANTHROPIC_API_KEY}" in exported
    assert not any(secret in exported for secret in secrets.values())
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-upstream")
    round_trip = run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, exported, "exported.yaml"))
    assert round_trip["created"] == round_trip["updated"] == round_trip["deleted"] == []
    assert len(round_trip["unchanged"]) == 6
    as_json = run_json(capsys, monkeypatch, "export")  # the same, as JSON (exact amounts as text)
    support_json = next(a for a in as_json["assistants"] if a["name"] == "support")
    assert support_json["prices"] == {"input": "0.15", "output": "0.6", "cached_input": "0.075",
                                      "cache_write": "0.15"}
    assert support_json["fallbacks"][0]["prices"] == {"input": "0.8", "output": "4", "cached_input": "0.08",
                                                      "cache_write": "1"}
    assert next(a for a in as_json["assistants"] if a["name"] == "translator")["auto_cache"] is True


def test_an_update_changes_only_what_differs_and_says_what(apply_env, capsys, monkeypatch, tmp_path):
    first = """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${OPENAI_API_KEY}"}
assistants:
  - {name: a, provider: up, model: m, temperature: 0.7, system_prompt: Be brief.}
  - {name: b, provider: up, model: m}
keys:
  - {name: k, assistants: [a], limits: {rpm: 30}}
"""
    run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, first))
    before = read(apply_env.database_url, lambda conn: conn.fetch("SELECT name, updated_at FROM assistants"))

    second = first.replace("temperature: 0.7", "temperature: 0.2").replace("rpm: 30", "rpm: 40") \
        .replace("assistants: [a]", "assistants: [a, b]")
    path = write(tmp_path, second)
    status, out, _ = run(capsys, monkeypatch, "apply", "-f", path, "--dry-run")
    assert status == 0 and out.splitlines() == [
        "dry run: nothing was written",
        "~ assistant a: temperature 0.7 -> 0.2",
        "~ key k: assistant_ids [a] -> [a, b]; limits.rpm 30 -> 40",
        "2 unchanged",
    ]
    applied = run_json(capsys, monkeypatch, "apply", "-f", path)
    assert [(e["name"], e["changes"]) for e in applied["updated"]] == [
        ("a", ["temperature"]), ("k", ["assistant_ids", "limits.rpm"])]
    assert {e["name"] for e in applied["unchanged"]} == {"up", "b"}
    after = dict(read(apply_env.database_url, lambda conn: conn.fetch("SELECT name, updated_at FROM assistants")))
    assert after["b"] == dict(before)["b"] and after["a"] > dict(before)["a"]  # b was not written

    monkeypatch.setenv("OPENAI_API_KEY", "sk-rotated")
    rotated = run_json(capsys, monkeypatch, "apply", "-f", path)
    assert [(e["name"], e["changes"]) for e in rotated["updated"]] == [("up", ["api_key"])]
    assert "sk-rotated" not in json.dumps(rotated)


def test_an_anthropic_base_url_without_its_version_is_warned_of(apply_env, capsys, monkeypatch, tmp_path):
    said = ("https://api.anthropic.com does not end in a version path: calls will go to "
            "https://api.anthropic.com/messages; Anthropic's base URL is https://api.anthropic.com/v1")
    status, _, err = run(capsys, monkeypatch, "provider", "add", "--name", "claude", "--type", "anthropic",
                         "--base-url", "https://api.anthropic.com")
    assert status == 0 and err == f"riceball: warning: --base-url: {said}\n"
    status, _, err = run(capsys, monkeypatch, "provider", "update", "claude", "--base-url", "http://127.0.0.1:9")
    assert status == 0 and "http://127.0.0.1:9 does not end in a version path" in err
    status, _, err = run(capsys, monkeypatch, "provider", "test", "claude")  # said before the call fails
    assert status == 2 and err.startswith("riceball: warning: --base-url: http://127.0.0.1:9 does not end in")
    status, _, err = run(capsys, monkeypatch, "provider", "update", "claude", "--base-url", "https://api.anthropic.com/v1")
    assert status == 0 and err == ""
    text = 'providers:\n  - {name: other, type: anthropic, base_url: "https://api.anthropic.com"}\n'
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    assert status == 0 and f"riceball: warning: providers[0].base_url: {said}" in err


def test_a_dry_run_shows_values_as_the_file_writes_them(apply_env, capsys, monkeypatch, tmp_path):
    text = """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}
assistants:
  - {name: a, provider: up, model: m, prices: {input: 0.15, output: 0.6}, stop: [END], extra_params: {top_k: 40}}
"""
    run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    changed = text.replace("input: 0.15", "input: 0.2").replace("[END]", "[END, STOP]").replace("40}", "41}")
    status, out, err = run(capsys, monkeypatch, "apply", "--dry-run", "-f", write(tmp_path, changed))
    assert status == 0, err
    assert out.splitlines()[1] == ("~ assistant a: stop [END] -> [END, STOP]; extra_params {top_k: 40} -> {top_k: 41}; "
                                   "prices {input: 0.15, output: 0.6} -> {input: 0.2, output: 0.6}")


def test_problems_name_their_place_and_nothing_is_written(apply_env, capsys, monkeypatch, tmp_path):
    bad = """
providers:
  - {name: up, type: openai, base_url: "ftp://x", colour: blue}
assistants:
  - {name: a, provider: up, model: m}
  - {name: b, provider: up, model: m, temperature: 3, locked: [top_p], limits: {budget_period: year}}
  - {name: a, provider: up}
  - {name: c, provider: nowhere, model: m}
keys:
  - {name: k, assistants: [a, zed]}
"""
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, bad))
    assert status == 2
    assert err.splitlines()[1:] == [
        "  providers[0].base_url: must be an http:// or https:// URL",
        "  providers[0].colour: is not a known field",
        "  assistants[1].temperature: must be between 0 and 2",
        "  assistants[1].top_p: a locked parameter needs a value",
        "  assistants[1].limits.budget_period: must be 'day', 'week', 'month' or 'total'",
        "  assistants[2].model: is required",
        "  assistants[3].provider: no provider named 'nowhere'",
        "  keys[0].assistants[1]: no assistant named 'zed'",
    ]
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, "assistants: [\n"))
    assert status == 2 and "line 2" in err and "not valid YAML" in err

    # Problems only the database shows, all of them in one report: the first objects were written when
    # the last failed; none stays.
    late = """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}
  - {name: other, type: nonesuch, base_url: "http://127.0.0.1:9/v1"}
assistants:
  - {name: a, provider: up, model: m}
  - {name: b, provider: up, model: unknown-model, limits: {budget_usd: 5}}
  - {name: c, provider: gone, model: m}
keys:
  - {name: k, assistants: [a, z]}
"""
    status, out, err = run(capsys, monkeypatch, "--json", "apply", "-f", write(tmp_path, late))
    assert status == 2 and json.loads(out)["problems"] == [
        "providers[1].type: no installed plugin offers 'nonesuch' (installed: anthropic, openai, openai-responses)",
        "assistants[1].limits.budget_usd: no price is known for 'unknown-model' on 'up': a USD budget needs one "
        "for every target; give the assistant prices (for its model) or that fallback its own, choose fallbacks "
        "of known price, or use a budget in tokens",
        "assistants[2].provider: no provider named 'gone'",
        "keys[0].assistants[1]: no assistant named 'z'",
    ]
    late = late.replace("nonesuch", "openai").replace("provider: gone", "provider: other") \
        .replace("[a, z]", "[a]")
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, late))
    assert status == 2 and "assistants[1].limits.budget_usd: no price is known for 'unknown-model'" in err
    assert counts(apply_env.database_url) == {"providers": 0, "assistants": 0, "api_keys": 0}

    # A key's USD budget needs an assistant it may call to have a price (a and c have none).
    late = late.replace("limits: {budget_usd: 5}", "prices: {input: 1, output: 2}") \
        .replace("{name: k, assistants: [a]}", "{name: k, assistants: [a, c], limits: {budget_usd: 5}}")
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, late))
    assert status == 2 and "keys[0].limits.budget_usd: no assistant this key may call has a known price" in err
    assert counts(apply_env.database_url) == {"providers": 0, "assistants": 0, "api_keys": 0}
    late = late.replace("assistants: [a, c]", "assistants: [a, b]")  # b has its own price
    assert run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, late))["created"]


def test_secrets_come_from_the_environment_or_a_file(apply_env, capsys, monkeypatch, tmp_path):
    text = """
providers:
  - {name: a, type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${UNSET_VARIABLE}"}
  - {name: b, type: openai, base_url: "http://127.0.0.1:9/v1", api_key_file: "%s"}
  - {name: c, type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "sk-written-in-the-file"}
""" % (tmp_path / "missing.key")
    monkeypatch.delenv("UNSET_VARIABLE", raising=False)
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    assert status == 2 and "providers[0].api_key: the environment variable UNSET_VARIABLE is not set" in err
    assert "providers[1].api_key_file: cannot be read (No such file or directory)" in err

    monkeypatch.setenv("UNSET_VARIABLE", "sk-from-env")
    (tmp_path / "missing.key").write_text("  sk-from-file\n")
    status, out, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    assert status == 0, err
    assert "warning: providers[2].api_key: the key itself is written in the file" in err

    async def keys(conn):
        box = crypto.SecretBox([apply_env.secret_key])
        return {p.name: box.decrypt(p.api_key_encrypted) for p in await providers.list_all(conn)}

    assert read(apply_env.database_url, keys) == {"a": "sk-from-env", "b": "sk-from-file",
                                                  "c": "sk-written-in-the-file"}
    status, exported, _ = run(capsys, monkeypatch, "export")
    assert "sk-" not in exported and "${C_API_KEY}" in exported


def test_prune_deletes_what_the_file_does_not_name_once_confirmed(apply_env, capsys, monkeypatch, tmp_path):
    full = """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}
  - {name: old, type: openai, base_url: "http://127.0.0.1:9/v1"}
assistants:
  - {name: a, provider: up, model: m}
  - {name: gone, provider: old, model: m}
keys:
  - {name: k}
  - {name: leaving}
"""
    created = run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, full))
    leaving = next(e["key"] for e in created["created"] if e["name"] == "leaving")
    smaller = write(tmp_path, """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}
assistants:
  - {name: a, provider: up, model: m}
keys:
  - {name: k}
""", "smaller.yaml")
    assert run_json(capsys, monkeypatch, "apply", "-f", smaller)["deleted"] == []  # no --prune: kept
    status, _, err = run(capsys, monkeypatch, "apply", "-f", smaller, "--prune")  # no terminal to ask on
    assert status == 2 and "--prune would delete provider 'old', assistant 'gone', key 'leaving'" in err
    assert counts(apply_env.database_url) == {"providers": 2, "assistants": 2, "api_keys": 2}

    status, out, _ = run(capsys, monkeypatch, "apply", "-f", smaller, "--prune", "--yes")
    assert status == 0 and "- key leaving (revoked)" in out and "- provider old" in out
    assert counts(apply_env.database_url) == {"providers": 1, "assistants": 1, "api_keys": 2}
    revoked = read(apply_env.database_url,
                   lambda conn: conn.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_hash = $1",
                                              crypto.hash_api_key(leaving)))
    assert revoked is True
    assert run_json(capsys, monkeypatch, "apply", "-f", smaller, "--prune")["deleted"] == []  # --json asks nothing


def test_a_pruned_provider_cannot_stay_referenced(apply_env, capsys, monkeypatch, tmp_path):
    run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}
"""))
    status, out, _ = run(capsys, monkeypatch, "--json", "apply", "-f", write(tmp_path, """
assistants:
  - {name: a, provider: up, model: m}
"""), "--prune")
    assert status == 2 and json.loads(out)["problems"] == [
        "assistants[0].provider: no provider named 'up' in the file"]


async def test_what_apply_writes_is_served(configured, apply_env, capsys, monkeypatch, tmp_path):
    """An assistant and a key declared in a file reach a running gateway, and so do changes to them."""
    gateway, upstream = configured.gateway, configured.upstream
    text = f"""
providers:
  - {{name: fake, type: openai, base_url: "{upstream.base_url}", api_key: "${{OPENAI_API_KEY}}"}}
assistants:
  - {{name: declared, provider: fake, model: gpt-4o, system_prompt: First prompt., temperature: 0.1,
      locked: [temperature]}}
keys:
  - {{name: declared-key, assistants: [declared]}}
"""
    monkeypatch.setenv("RICEBALL_PLUGINS", "none")
    path = write(tmp_path, text)
    created = await asyncio.to_thread(run_json, capsys, monkeypatch, "apply", "-f", path)
    assistant_id = next(e["id"] for e in created["created"] if e["kind"] == "assistant")
    secret = next(e["key"] for e in created["created"] if e["kind"] == "key")
    client = gateway.client(assistant_id, secret)
    await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], temperature=2)
    assert upstream.last["messages"][0] == {"role": "system", "content": "First prompt."}
    assert upstream.last["temperature"] == 0.1
    assert upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-openai-upstream"

    write(tmp_path, text.replace("First prompt.", "Second prompt."))
    await asyncio.to_thread(run_json, capsys, monkeypatch, "apply", "-f", path)
    for _ in range(100):  # the change notification reaches the gateway's cache
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
        if upstream.last["messages"][0]["content"] == "Second prompt.":
            break
        await asyncio.sleep(0.01)
    assert upstream.last["messages"][0] == {"role": "system", "content": "Second prompt."}
    await client.close()


def test_the_file_is_applied_at_start_up_by_instances_starting_together(apply_env, tmp_path):
    path = write(tmp_path, """
providers:
  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${UPSTREAM_KEY}"}
assistants:
  - {name: a, provider: up, model: m, temperature: 0.5}
keys:
  - {name: not-yet}
""")
    env = environment(RICEBALL_DATABASE_URL=apply_env.database_url, RICEBALL_SECRET_KEY=apply_env.secret_key,
                      RICEBALL_DATA_DIR=str(tmp_path / "var"), RICEBALL_CONFIG_FILE=path, UPSTREAM_KEY="sk-up")
    ports = [free_port(), free_port()]
    processes = [subprocess.Popen([*riceball_command(), "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for port in ports]
    try:
        for port, process in zip(ports, processes):
            assert wait_for_http(f"http://127.0.0.1:{port}/readyz", process) == 200
    finally:
        for process in processes:
            process.terminate()
        logs = [process.communicate(timeout=30)[1] for process in processes]
    assert counts(apply_env.database_url) == {"providers": 1, "assistants": 1, "api_keys": 0}
    assert sorted(re.search(r"applied \S+: (.*)", log).group(1) for log in logs) == [
        "0 created, 0 updated, 0 deleted, 2 unchanged", "2 created, 0 updated, 0 deleted, 0 unchanged"]
    assert all("keys[0]: no key named 'not-yet' exists; create it with riceball apply" in log for log in logs)

    # A file that cannot be applied stops the start, and says why.
    broken = environment(**{**env, "RICEBALL_PLUGINS": "none", "UPSTREAM_KEY": ""})
    result = subprocess.run([*riceball_command(), "serve", "--port", str(free_port())], env=broken, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "providers[0].api_key: the environment variable UPSTREAM_KEY is not set" in result.stderr


def test_exported_key_variables_are_valid_and_never_shared(apply_env, capsys, monkeypatch, tmp_path):
    names = ["open-ai", "open_ai", "1st", "日本"]
    text = "providers:\n" + "".join(
        f'  - {{name: "{name}", type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${{KEY_{n}}}"}}\n'
        for n, name in enumerate(names))
    for n in range(len(names)):
        monkeypatch.setenv(f"KEY_{n}", f"sk-upstream-{n}")
    run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    status, exported, err = run(capsys, monkeypatch, "export")
    variables = re.findall(r"api_key: \$\{(\w+)\}", exported)
    assert sorted(variables) == ["OPEN_AI_2_API_KEY", "OPEN_AI_API_KEY", "PROVIDER_1ST_API_KEY", "PROVIDER_API_KEY"]
    # Each variable set to its provider's key: the export re-applies with no change.
    by_name = dict(re.findall(r'- name: (.+)\n  type: openai\n  base_url: .+\n  api_key: \$\{(\w+)\}', exported))
    assert len(by_name) == 4
    for name, variable in by_name.items():
        monkeypatch.setenv(variable, f"sk-upstream-{names.index(name.strip(chr(39)).strip(chr(34)))}")
    again = run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, exported, "exported.yaml"))
    assert again["updated"] == again["created"] == [] and len(again["unchanged"]) == 4


# --- hostile files --------------------------------------------------------------------------------------


def test_standard_input_past_the_bound_is_refused_whole_not_cut(apply_env, capsys, monkeypatch, tmp_path):
    from riceball_proxy.declared.schema import MAX_FILE_BYTES

    head = 'providers:\n  - {name: up, type: openai, base_url: "http://127.0.0.1:9/v1"}\n'
    padding = "# " + "x" * 78 + "\n"
    text = head + padding * ((MAX_FILE_BYTES - len(head)) // len(padding) + 1) + "keys:\n  - {name: after-the-cut}\n"
    assert len(text.encode()) > MAX_FILE_BYTES
    status, _, err = run(capsys, monkeypatch, "apply", "-f", "-", "--prune", "--yes", stdin=text)
    assert status == 2 and "-: larger than 10 MiB" in err
    assert counts(apply_env.database_url) == {"providers": 0, "assistants": 0, "api_keys": 0}
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))  # as a path of that size
    assert status == 2 and "larger than 10 MiB" in err


LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
assistants:
  - {name: x, provider: p, model: m, extra_params: {laughs: *h}}
"""


@pytest.mark.parametrize("text, problem", [
    (LAUGHS, "line 1, column 1: not valid YAML (aliases expand the document to more than 1,000,000 values)"),
    ("assistants:\n  - {name: x, provider: p, model: m, extra_params: {deep: " + "[" * 20_000 + "]" * 20_000 + "}}\n",
     "not valid YAML (nested more than 64 levels deep)"),
    ('providers:\n  - {name: "p\\0", type: openai, base_url: "http://127.0.0.1:9/v1"}\n',
     "line 2, column 12: not valid YAML (a NUL character (\\0) cannot be stored)"),
    ("providers:\n  - {name: p1, name: p2, type: openai, base_url: 'http://127.0.0.1:9/v1'}\n",
     "line 2, column 16: not valid YAML (the key 'name' appears twice in one mapping)"),
    ("providers: []\nproviders: []\n", "line 2, column 1: not valid YAML (the key 'providers' appears twice"),
])
def test_a_hostile_file_is_refused_with_one_line_that_says_where(apply_env, capsys, monkeypatch, tmp_path, text,
                                                                  problem):
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 2 and problem in lines[1] and "Traceback" not in err
    assert counts(apply_env.database_url) == {"providers": 0, "assistants": 0, "api_keys": 0}


def test_secrets_in_urls_and_parameters_are_masked_in_listings_and_exported_as_references(
        apply_env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PROXY_URL", "https://gateway-user:hunter2@llm.internal.example/v1?key=k3y-s3cret&region=eu")
    monkeypatch.setenv("EXTRA_TOKEN", "tok-s3cret")
    text = """
providers:
  - {name: up, type: openai, base_url: "${PROXY_URL}"}
assistants:
  - {name: a, provider: up, model: m, extra_params: {api_key: "${EXTRA_TOKEN}", top_k: 40}}
"""
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, text))
    assert status == 0, err
    listed = run_json(capsys, monkeypatch, "provider", "list")["providers"][0]
    assert listed["base_url"] == "https://gateway-user:***@llm.internal.example/v1?key=***&region=eu"
    status, table_text, _ = run(capsys, monkeypatch, "provider", "list")
    assistant_id = run_json(capsys, monkeypatch, "assistant", "list")["assistants"][0]["id"]
    shown = run_json(capsys, monkeypatch, "assistant", "show", assistant_id)
    assert shown["extra_params"] == {"api_key": "***", "top_k": 40}
    status, exported, err = run(capsys, monkeypatch, "export")
    for secret in ("hunter2", "k3y-s3cret", "tok-s3cret"):
        assert secret not in table_text + json.dumps(shown) + exported
    assert "base_url: ${UP_BASE_URL}" in exported and "api_key: ${A_API_KEY}" in exported
    assert "UP_BASE_URL" in err and "A_API_KEY" in err
    # The exported file applies back, unchanged, with those variables set.
    monkeypatch.setenv("UP_BASE_URL", "https://gateway-user:hunter2@llm.internal.example/v1?key=k3y-s3cret&region=eu")
    monkeypatch.setenv("A_API_KEY", "tok-s3cret")
    assert run_json(capsys, monkeypatch, "apply", "-f", write(tmp_path, exported, "exported.yaml"))["unchanged"]
    status, out, _ = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, exported, "exported.yaml"))
    assert "nothing to change" in out
    monkeypatch.delenv("UP_BASE_URL")
    status, _, err = run(capsys, monkeypatch, "apply", "-f", write(tmp_path, exported, "exported.yaml"))
    assert status == 2 and "providers[0].base_url: the environment variable UP_BASE_URL is not set" in err
