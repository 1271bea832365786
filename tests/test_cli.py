"""The ``riceball`` command, run in-process against the test database."""
import io
import json
import subprocess
import sys

import asyncpg
import pytest

from riceball_proxy import crypto
from riceball_proxy.cli.main import main
from tests.support import riceball_command, run_sync


def run(capsys, monkeypatch, *argv, stdin=""):
    """Run ``riceball argv...``; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own exits
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys, monkeypatch, *argv, stdin=""):
    status, out, err = run(capsys, monkeypatch, "--json", *argv, stdin=stdin)
    assert status == 0, err
    return json.loads(out)


def test_provider_assistant_and_key_round_trip(cli_env, capsys, monkeypatch):
    provider = run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai",
                        "--base-url", "http://127.0.0.1:9/v1/", "--api-key-stdin", stdin="sk-upstream-123\n")
    assert provider["name"] == "up" and provider["base_url"] == "http://127.0.0.1:9/v1"
    assert provider["has_api_key"] is True and "sk-upstream-123" not in json.dumps(provider)
    listed = run_json(capsys, monkeypatch, "provider", "list")["providers"]
    assert [p["id"] for p in listed] == [provider["id"]]

    assistant = run_json(capsys, monkeypatch, "assistant", "add", "--name", "helper", "--provider", "up",
                         "--model", "gpt-4o", "--system-prompt", "Be brief.", "--temperature", "0.3",
                         "--max-tokens", "200", "--lock", "temperature", "--no-client-system", "--seed", "7",
                         "--stop", "END", "--stop", "STOP", "--lock", "seed")
    assert assistant["parameters"] == {"temperature": 0.3, "max_tokens": 200, "seed": 7, "stop": ["END", "STOP"]}
    assert assistant["locked"] == ["seed", "temperature"]
    assert assistant["allow_client_system"] is False and assistant["enabled"] is True
    assert assistant["base_url"].endswith(f"/api/v1/assistants/{assistant['id']}/v1")
    assert [a["id"] for a in run_json(capsys, monkeypatch, "assistant", "list")["assistants"]] == [assistant["id"]]

    created = run_json(capsys, monkeypatch, "key", "create", "--name", "laptop", "--assistant", assistant["id"],
                       "--expires-in", "30d")
    secret = created["key"]
    assert secret.startswith("sk-") and created["prefix"] == secret[:11]
    assert created["assistant_ids"] == [assistant["id"]] and created["expires_at"] is not None

    status, out, _ = run(capsys, monkeypatch, "key", "list")
    assert status == 0 and secret not in out and created["prefix"] in out
    assert " helper " in out and assistant["id"] not in out  # the scope by name
    keys = run_json(capsys, monkeypatch, "key", "list")["keys"]
    assert secret not in json.dumps(keys) and keys[0]["assistant_ids"] == [assistant["id"]]
    assert [(k["id"], k["status"]) for k in keys] == [(created["id"], "active")]

    revoked = run_json(capsys, monkeypatch, "key", "revoke", created["prefix"])
    assert revoked["status"] == "revoked"
    assert run_json(capsys, monkeypatch, "key", "list")["keys"][0]["status"] == "revoked"

    stored = run_sync(_fetchval, cli_env.database_url, "SELECT key_hash FROM api_keys WHERE id = $1::uuid",
                      created["id"])
    assert stored == crypto.hash_api_key(secret)


async def _fetchval(url, query, *args):
    """One value read from the database at ``url``, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


PASSWORD_HASH = "SELECT password_hash FROM admins"
SESSIONS = "SELECT count(*) FROM admin_sessions"
PROVIDER_KEY = "SELECT api_key_encrypted FROM providers"


def test_json_flag_is_accepted_after_the_command(cli_env, capsys, monkeypatch):
    status, out, _ = run(capsys, monkeypatch, "provider", "list", "--json")
    assert status == 0 and json.loads(out) == {"providers": []}


def test_plain_output_says_what_to_do_when_empty(cli_env, capsys, monkeypatch):
    assert run(capsys, monkeypatch, "key", "list")[1] == "no keys yet: riceball key create --name NAME\n"


def test_admin_create_hashes_the_password(cli_env, capsys, monkeypatch):
    admin = run_json(capsys, monkeypatch, "admin", "create", "--username", "root", "--password-stdin",
                     stdin="a long password\n")
    assert admin["username"] == "root"
    stored = run_sync(_fetchval, cli_env.database_url, PASSWORD_HASH)
    assert stored.startswith("$argon2id$") and crypto.verify_password(stored, "a long password")
    status, _, err = run(capsys, monkeypatch, "admin", "create", "--username", "root", "--password-stdin",
                         stdin="another password\n")
    assert (status, err) == (2, "riceball: error: an admin named 'root' exists already\n")


def test_admin_password_and_delete_end_the_admins_sessions(cli_env, capsys, monkeypatch):
    run_json(capsys, monkeypatch, "admin", "create", "--username", "root", "--password-stdin", stdin="a long password\n")
    run_sync(_start_session, cli_env.database_url)
    changed = run_json(capsys, monkeypatch, "admin", "password", "--username", "root", "--password-stdin",
                       stdin="another password\n")
    assert changed["username"] == "root"
    assert crypto.verify_password(run_sync(_fetchval, cli_env.database_url, PASSWORD_HASH), "another password")
    assert run_sync(_fetchval, cli_env.database_url, SESSIONS) == 0
    run_sync(_start_session, cli_env.database_url)
    assert run_json(capsys, monkeypatch, "admin", "delete", "--username", "root")["deleted"] is True
    assert run_sync(_fetchval, cli_env.database_url, SESSIONS) == 0
    status, _, err = run(capsys, monkeypatch, "admin", "delete", "--username", "root")
    assert (status, err) == (2, "riceball: error: no admin named 'root'\n")


async def _start_session(url):
    import datetime

    from riceball_proxy.db import admin_sessions, admins

    conn = await asyncpg.connect(url)
    try:
        admin = await admins.get_by_username(conn, "root")
        await admin_sessions.start(conn, "session-id", admin.id, datetime.timedelta(hours=1))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "argv, stdin, says",
    [
        (["provider", "add", "--name", "x", "--type", "nope", "--base-url", "http://h"], "",
         "--type: no installed plugin offers 'nope' (installed: openai"),
        (["provider", "add", "--name", "x", "--type", "openai", "--base-url", "ftp://h"], "", "--base-url: must be an http:// or https:// URL"),
        (["provider", "add", "--name", "x", "--type", "openai", "--base-url", "http://h", "--api-key-stdin"], "",
         "no API key on standard input"),
        (["assistant", "add", "--name", "a", "--provider", "missing", "--model", "m"], "",
         "no provider with name or id 'missing'; there are"),
        (["assistant", "add", "--name", "a", "--provider", "p", "--model", "m", "--lock", "colour"], "",
         "--lock: must be 'temperature', 'top_p'"),
        (["key", "create", "--name", "k", "--assistant", "nobody"], "",
         "no assistant with id or name 'nobody'; there are none yet"),
        (["key", "create", "--name", "k", "--assistant", "00000000-0000-0000-0000-000000000001"], "",
         "no assistant with id or name '00000000-0000-0000-0000-000000000001'"),
        (["key", "create", "--name", "k", "--expires-in", "soon"], "", "is not a duration"),
        (["key", "revoke", "sk-unknown"], "", "no key with id, prefix or name 'sk-unknown'"),
        (["admin", "create", "--username", "u", "--password-stdin"], "short\n", "at least 8 characters"),
        (["serve", "--port", "0"], "", "must be at least 1"),
        (["frobnicate"], "", "invalid choice"),
        (["key", "create", "--name", "k", "--rpm", "-5"], "", "--rpm: must be between 1 and"),
        (["key", "create", "--name", "k", "--budget-usd", "lots"], "", "is not an amount of USD"),
        (["key", "create", "--name", "k", "--budget-usd", "0"], "", "--budget-usd: must be an amount of USD above 0"),
        (["key", "create", "--name", "k", "--budget-period", "year"], "", "invalid choice: 'year'"),
        (["assistant", "update", "00000000-0000-0000-0000-000000000001", "--tpm", "1.5"], "", "is not a whole number"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(cli_env, capsys, monkeypatch, argv, stdin, says):
    status, out, err = run(capsys, monkeypatch, *argv, stdin=stdin)
    assert status == 2
    assert says in err
    assert "Traceback" not in err and out == ""


def test_a_bad_argument_is_one_line_not_the_usage(cli_env, capsys, monkeypatch):
    status, out, err = run(capsys, monkeypatch, "assistant", "add", "--name", "a")
    assert status == 2 and out == ""
    assert err == ("riceball assistant add: error: the following arguments are required: --provider, --model "
                   "(see riceball assistant add --help)\n")
    status, _, err = run(capsys, monkeypatch, "assistant", "add", "--name", "a", "--temperature", "warm")
    assert status == 2 and err.count("\n") == 1 and "argument --temperature: 'warm' is not a number" in err


def test_every_problem_of_an_assistant_is_named_by_its_option(cli_env, capsys, monkeypatch):
    # The words are the spec's: a form shows "Must be between 0 and 2." beside its field, a file
    # "assistants[0].temperature: must be between 0 and 2".
    argv = ["assistant", "add", "--name", "a", "--provider", "p", "--model", "m", "--temperature", "3",
            "--top-p", "2", "--lock", "seed", "--price-output", "1", "--deadline", "0", "--stop", "a", "--stop", "",
            "--frequency-penalty", "-3"]
    status, out, err = run(capsys, monkeypatch, *argv)
    assert status == 2 and out == ""
    assert err == ("riceball: error: 7 problems:\n"
                   "  --temperature: must be between 0 and 2\n"
                   "  --top-p: must be between 0 and 1\n"
                   "  --frequency-penalty: must be between -2 and 2\n"
                   "  --stop: must not be empty\n"
                   "  --seed: a locked parameter needs a value\n"
                   "  --price-input: set an input price beside the output price, or neither\n"
                   "  --deadline: must be between 0.1 and 3600\n")
    status, out, _ = run(capsys, monkeypatch, "--json", *argv)
    assert status == 2 and json.loads(out)["problems"][0] == "--temperature: must be between 0 and 2"


def test_a_bad_environment_variable_exits_2(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("RICEBALL_PORT", "eighty")
    status, _, err = run(capsys, monkeypatch, "provider", "list")
    assert (status, err) == (2, "riceball: error: RICEBALL_PORT must be a whole number, got 'eighty'\n")


def test_an_unreachable_database_exits_1(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("RICEBALL_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    status, _, err = run(capsys, monkeypatch, "provider", "list")
    assert status == 1 and err.startswith("riceball: error: database unavailable:")


def test_plugins_command_lists_plugins_and_hooks(cli_env, capsys, monkeypatch):
    plugins = run_json(capsys, monkeypatch, "plugins")["plugins"]
    builtin = next(p for p in plugins if p["name"] == "riceball_proxy.builtin.openai_compat")
    assert builtin["hooks"] == ["riceball_provider_types"] and builtin["builtin"] is True


def test_the_console_script_is_installed(cli_env):
    result = subprocess.run([*riceball_command(), "--json", "provider", "list"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"providers": []}


def test_migrate_reports_the_applied_migrations(cli_env, capsys, monkeypatch):
    from riceball_proxy.db.migrate import available_migrations

    migrations = run_json(capsys, monkeypatch, "migrate")["migrations"]
    assert [(m["version"], m["name"]) for m in migrations] == [(m.version, m.name) for m in available_migrations()]


def test_plugins_command_lists_an_installed_plugin(cli_env, capsys, monkeypatch, install_plugin):
    install_plugin("shout", "shout", "riceball-shout", "0.3.0")
    plugins = {p["name"]: p for p in run_json(capsys, monkeypatch, "plugins")["plugins"]}
    assert plugins["shout"] == {"name": "shout", "builtin": False, "distribution": "riceball-shout",
                                "version": "0.3.0", "hooks": ["riceball_transform_response", "riceball_transform_stream"]}
    status, out, _ = run(capsys, monkeypatch, "plugins")
    assert status == 0 and "shout" in out and "0.3.0" in out


def test_show_and_delete_assistants_and_providers_and_show_keys(cli_env, capsys, monkeypatch):
    run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai",
             "--base-url", "http://127.0.0.1:9/v1")
    assistant = run_json(capsys, monkeypatch, "assistant", "add", "--name", "helper", "--provider", "up",
                         "--model", "gpt-4o", "--system-prompt", "Be brief.", "--temperature", "0.3")
    shown = run_json(capsys, monkeypatch, "assistant", "show", assistant["id"])
    assert (shown["name"], shown["provider"], shown["system_prompt"], shown["parameters"]) == (
        "helper", "up", "Be brief.", {"temperature": 0.3})
    status, out, _ = run(capsys, monkeypatch, "assistant", "show", assistant["id"])
    assert status == 0 and "Be brief." in out and assistant["id"] in out

    created = run_json(capsys, monkeypatch, "key", "create", "--name", "ci", "--assistant", assistant["id"])
    key = run_json(capsys, monkeypatch, "key", "show", created["prefix"])
    assert (key["id"], key["status"], key["assistant_ids"]) == (created["id"], "active", [assistant["id"]])
    status, out, _ = run(capsys, monkeypatch, "key", "show", created["id"])
    assert status == 0 and "helper" in out and created["key"] not in out

    status, _, err = run(capsys, monkeypatch, "provider", "delete", "up")
    assert (status, err) == (2, "riceball: error: provider 'up': assistants use this provider: helper (primary); "
                                "change or delete them first\n")
    assert run_json(capsys, monkeypatch, "assistant", "delete", assistant["id"])["deleted"] is True
    status, _, err = run(capsys, monkeypatch, "assistant", "show", assistant["id"])
    assert (status, err) == (2, f"riceball: error: no assistant with id or name '{assistant['id']}'; "
                                "there are none yet\n")
    assert run_json(capsys, monkeypatch, "provider", "delete", "up")["deleted"] is True
    status, _, err = run(capsys, monkeypatch, "provider", "delete", "up")
    assert (status, err) == (2, "riceball: error: no provider with name or id 'up'; there are none yet\n")
    status, _, err = run(capsys, monkeypatch, "key", "show", "sk-nothing")
    assert (status, err) == (2, "riceball: error: no key with id, prefix or name 'sk-nothing'; there are: ci\n")


async def test_provider_test_lists_the_upstreams_models_or_says_why_not(cli_env, fake_openai):
    import asyncio
    import os

    def riceball(*argv):
        return subprocess.run([*riceball_command(), *argv], env=dict(os.environ), capture_output=True, text=True,
                              timeout=60)

    added = await asyncio.to_thread(riceball, "--json", "provider", "add", "--name", "fake", "--type", "openai",
                                    "--base-url", fake_openai.base_url)
    assert added.returncode == 0, added.stderr
    tested = await asyncio.to_thread(riceball, "--json", "provider", "test", "fake")
    assert tested.returncode == 0, tested.stderr
    assert json.loads(tested.stdout)["models"] == ["gpt-4o", "gpt-4o-mini"]
    fake_openai.error = (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
    refused = await asyncio.to_thread(riceball, "provider", "test", "fake")
    assert refused.returncode == 2
    assert refused.stderr == "riceball: error: provider 'fake': 401: Incorrect API key provided\n"


def test_update_changes_only_what_is_given_and_names_are_unique(cli_env, capsys, monkeypatch):
    first = run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai",
                     "--base-url", "http://127.0.0.1:9/v1", "--api-key-stdin", stdin="sk-one\n")
    run_json(capsys, monkeypatch, "provider", "add", "--name", "other", "--type", "openai",
             "--base-url", "http://127.0.0.1:9/v1")
    status, out, err = run(capsys, monkeypatch, "--json", "provider", "add", "--name", "up", "--type", "openai",
                           "--base-url", "http://127.0.0.1:9/v1")
    assert status == 2 and err == "riceball: error: --name: a provider named 'up' exists already\n"
    assert json.loads(out)["id"] == first["id"]

    updated = run_json(capsys, monkeypatch, "provider", "update", "up", "--read-timeout", "60",
                       "--max-connections", "5")
    assert (updated["read_timeout"], updated["max_connections"], updated["base_url"], updated["has_api_key"]) == (
        60.0, 5, "http://127.0.0.1:9/v1", True)  # the rest, the key included, as it was
    assert run_json(capsys, monkeypatch, "provider", "update", str(first["id"]), "--clear-api-key")[
        "has_api_key"] is False
    status, _, err = run(capsys, monkeypatch, "provider", "update", "up", "--name", "other")
    assert (status, err) == (2, "riceball: error: --name: a provider named 'other' exists already\n")

    assistant = run_json(capsys, monkeypatch, "assistant", "add", "--name", "demo", "--provider", "up",
                         "--model", "m1", "--system-prompt", "Be brief.", "--temperature", "0.3",
                         "--lock", "temperature")
    status, out, err = run(capsys, monkeypatch, "--json", "assistant", "add", "--name", "demo",
                           "--provider", "up", "--model", "m2")
    assert status == 2 and err == "riceball: error: --name: an assistant named 'demo' exists already\n"
    assert json.loads(out)["id"] == assistant["id"]

    changed = run_json(capsys, monkeypatch, "assistant", "update", assistant["id"], "--model", "m2",
                       "--max-tokens", "100", "--disabled", "--provider", "other")
    assert (changed["model"], changed["provider"], changed["enabled"]) == ("m2", "other", False)
    assert changed["parameters"] == {"temperature": 0.3, "max_tokens": 100} and changed["locked"] == ["temperature"]
    assert changed["system_prompt"] == "Be brief." and changed["name"] == "demo"
    again = run_json(capsys, monkeypatch, "assistant", "update", assistant["id"], "--enabled", "--lock", "max_tokens",
                     "--client-system")
    assert (again["enabled"], again["locked"], again["allow_client_system"]) == (True, ["max_tokens"], True)
    status, _, err = run(capsys, monkeypatch, "assistant", "update", assistant["id"], "--temperature", "9")
    assert status == 2 and "--temperature" in err and "between 0 and 2" in err


def test_key_names_in_force_are_unique_and_a_revoked_key_lets_go_of_its_name(cli_env, capsys, monkeypatch):
    first = run_json(capsys, monkeypatch, "key", "create", "--name", "demo")
    status, out, err = run(capsys, monkeypatch, "--json", "key", "create", "--name", "demo")
    assert status == 2 and err == ("riceball: error: --name: a key named 'demo' is in force already "
                                   "(revoke it to reuse its name)\n")
    assert json.loads(out)["id"] == first["id"] and "sk-" not in out
    run_json(capsys, monkeypatch, "key", "revoke", first["id"])
    second = run_json(capsys, monkeypatch, "key", "create", "--name", "demo")
    assert second["id"] != first["id"]


def test_limits_and_prices_on_keys_and_assistants(cli_env, capsys, monkeypatch):
    run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai", "--base-url", "http://h/v1")
    known = run_json(capsys, monkeypatch, "assistant", "add", "--name", "known", "--provider", "up",
                     "--model", "gpt-4o-mini", "--rpm", "60", "--budget-usd", "20", "--budget-period", "day")
    assert known["limits"] == {"rpm": 60, "tpm": None, "max_parallel": None, "budget_usd": "20.000000",
                               "budget_tokens": None, "budget_period": "day"}
    # A model nobody has a price for: a USD budget is refused, nothing saved, until the operator prices it.
    status, out, err = run(capsys, monkeypatch, "assistant", "add", "--name", "own", "--provider", "up",
                           "--model", "in-house-7b", "--budget-usd", "5")
    assert status == 2 and "--budget-usd: no price is known for 'in-house-7b' on 'up'" in err
    assert len(err.strip().splitlines()) == 1
    assert run_json(capsys, monkeypatch, "assistant", "list")["assistants"][-1]["name"] == "known"
    own = run_json(capsys, monkeypatch, "assistant", "add", "--name", "own", "--provider", "up", "--model",
                   "in-house-7b", "--price-input", "0.2", "--price-output", "0.6", "--budget-usd", "5")
    assert (own["price_input"], own["price_output"], own["price_cached_input"]) == ("0.200000", "0.600000", None)
    cached = run_json(capsys, monkeypatch, "assistant", "add", "--name", "cached", "--provider", "up", "--model",
                      "claude-sonnet-4-5", "--price-input", "3", "--price-output", "15", "--price-cached-input", "0.3",
                      "--price-cache-write", "3.75", "--reasoning-effort", "high", "--lock", "reasoning_effort",
                      "--auto-cache")
    assert (cached["price_cache_write"], cached["auto_cache"], cached["parameters"], cached["locked"]) == (
        "3.750000", True, {"reasoning_effort": "high"}, ["reasoning_effort"])
    cached = run_json(capsys, monkeypatch, "assistant", "update", cached["id"], "--no-auto-cache",
                      "--reasoning-effort", "low", "--price-cache-write", "none")
    assert (cached["price_cache_write"], cached["auto_cache"], cached["parameters"]) == (
        None, False, {"reasoning_effort": "low"})
    status, _, err = run(capsys, monkeypatch, "assistant", "update", cached["id"], "--reasoning-effort", "extreme")
    assert status == 2 and "invalid choice" in err
    updated = run_json(capsys, monkeypatch, "assistant", "update", own["id"], "--max-parallel", "4",
                       "--budget-usd", "none", "--price-input", "none", "--price-output", "none")
    assert updated["limits"]["max_parallel"] == 4 and updated["limits"]["budget_usd"] is None
    assert updated["price_input"] is None
    status, out, err = run(capsys, monkeypatch, "assistant", "update", own["id"], "--budget-usd", "1")
    assert status == 2 and "no price is known for" in err

    # A key scoped to the unpriced assistant alone cannot have a USD budget; a token budget is fine.
    status, out, err = run(capsys, monkeypatch, "key", "create", "--name", "k", "--assistant", own["id"],
                           "--budget-usd", "10")
    assert status == 2 and "--budget-usd: no assistant this key may call has a known price (own)" in err
    key = run_json(capsys, monkeypatch, "key", "create", "--name", "k", "--rpm", "5", "--tpm", "10000",
                   "--max-parallel", "2", "--budget-usd", "50", "--budget-tokens", "100000", "--budget-period", "week")
    assert key["limits"] == {"rpm": 5, "tpm": 10000, "max_parallel": 2, "budget_usd": "50.000000",
                             "budget_tokens": 100000, "budget_period": "week"}
    assert key["unpriced_assistants"] == ["own"]  # told: calls to it do not count against the USD budget
    changed = run_json(capsys, monkeypatch, "key", "update", key["prefix"], "--rpm", "none", "--name", "k2",
                       "--budget-period", "total")
    assert changed["name"] == "k2" and changed["limits"]["rpm"] is None
    assert changed["limits"]["tpm"] == 10000 and changed["limits"]["budget_period"] == "total"
    listed = run_json(capsys, monkeypatch, "key", "list")["keys"][0]
    assert (listed["spent_usd"], listed["spent_tokens"], listed["period"]) == ("0", 0, "total")
    status, out, err = run(capsys, monkeypatch, "key", "list")
    assert "10000 tpm, 2 at once, $50.00, 100,000 tokens" in out and "$0.00 of $50.00, 0 of 100,000 tokens (total)" in out
    status, out, err = run(capsys, monkeypatch, "key", "show", key["prefix"])
    assert "limits:" in out and "spent:" in out


def test_fallback_targets_deadline_and_attempts(cli_env, capsys, monkeypatch):
    run_json(capsys, monkeypatch, "provider", "add", "--name", "openai", "--type", "openai", "--base-url", "http://h/v1")
    backup = run_json(capsys, monkeypatch, "provider", "add", "--name", "backup", "--type", "openai",
                      "--base-url", "http://b/v1")
    added = run_json(capsys, monkeypatch, "assistant", "add", "--name", "a", "--provider", "openai", "--model",
                     "gpt-4o", "--fallback", "backup:gpt-4o-mini", "--fallback", f"{backup['id']}:other",
                     "--deadline", "20", "--max-attempts", "4")
    assert [(t["provider_id"], t["model"], t["priority"]) for t in added["fallbacks"]] == [
        (backup["id"], "gpt-4o-mini", 1), (backup["id"], "other", 2)]
    assert (added["deadline"], added["max_attempts"]) == (20.0, 4)
    status, out, _ = run(capsys, monkeypatch, "assistant", "show", added["id"])
    assert "backup:gpt-4o-mini, backup:other" in out and "20 s, at most 4 attempts" in out
    # A provider an assistant falls back to cannot be deleted.
    status, _, err = run(capsys, monkeypatch, "provider", "delete", "backup")
    assert status == 2 and "assistants use this provider: a (fallback); change or delete them first" in err
    for fallback, says in (("backup", "takes PROVIDER:MODEL"), ("nope:m", "no provider with name or id 'nope'; there are: backup, openai"),
                           ("openai:gpt-4o", "listed twice")):
        status, out, err = run(capsys, monkeypatch, "assistant", "update", added["id"], "--fallback", fallback)
        assert status == 2 and says in err and len(err.strip().splitlines()) == 1
    cleared = run_json(capsys, monkeypatch, "assistant", "update", added["id"], "--fallback", "none")
    assert cleared["fallbacks"] == [] and cleared["deadline"] == 20.0


def test_assistant_show_reads_the_shared_circuits(cli_env, capsys, monkeypatch, redis_url):
    import orjson
    import redis

    run_json(capsys, monkeypatch, "provider", "add", "--name", "openai", "--type", "openai", "--base-url", "http://h/v1")
    backup = run_json(capsys, monkeypatch, "provider", "add", "--name", "backup", "--type", "openai",
                      "--base-url", "http://b/v1")
    added = run_json(capsys, monkeypatch, "assistant", "add", "--name", "a", "--provider", "openai", "--model",
                     "gpt-4o", "--fallback", "backup:mini")
    status, out, _ = run(capsys, monkeypatch, "assistant", "show", added["id"])
    assert "kept by each gateway process" in out
    import time

    redis.Redis.from_url(redis_url).hset("riceball:circuits", f"{backup['id']}:mini",
                                         orjson.dumps([3, time.time() + 60, 5.0, "upstream overloaded", time.time()]))
    monkeypatch.setenv("RICEBALL_REDIS_URL", redis_url)
    shown = run_json(capsys, monkeypatch, "assistant", "show", added["id"])
    assert shown["health"][0] == "openai:gpt-4o closed"
    assert shown["health"][1].startswith("backup:mini open for ") and "(upstream overloaded)" in shown["health"][1]


def test_reencrypt_moves_provider_keys_to_the_new_secret_key(cli_env, capsys, monkeypatch):
    from cryptography.fernet import Fernet

    old = cli_env.secret_key
    run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai",
             "--base-url", "http://127.0.0.1:9/v1", "--api-key-stdin", stdin="sk-upstream-kept\n")
    new = Fernet.generate_key().decode()
    monkeypatch.setenv("RICEBALL_SECRET_KEY", f"{new},{old}")
    assert run_json(capsys, monkeypatch, "reencrypt") == {"reencrypted": 1}

    token = run_sync(_fetchval, cli_env.database_url, PROVIDER_KEY)
    assert crypto.SecretBox([new]).decrypt(token) == "sk-upstream-kept"  # the old key is no longer needed
    with pytest.raises(ValueError):
        crypto.SecretBox([old]).decrypt(token)

    monkeypatch.setenv("RICEBALL_SECRET_KEY", Fernet.generate_key().decode())  # opens nothing stored
    status, _, err = run(capsys, monkeypatch, "reencrypt")
    assert status == 2 and "opens the API key of up; nothing was changed" in err
    assert run_sync(_fetchval, cli_env.database_url, PROVIDER_KEY) == token


def test_names_are_taken_wherever_an_id_is(cli_env, capsys, monkeypatch):
    run_json(capsys, monkeypatch, "provider", "add", "--name", "up", "--type", "openai", "--base-url", "http://h/v1")
    demo = run_json(capsys, monkeypatch, "assistant", "add", "--name", "demo", "--provider", "up", "--model", "m")
    run_json(capsys, monkeypatch, "assistant", "add", "--name", "other", "--provider", "up", "--model", "m")
    assert run_json(capsys, monkeypatch, "assistant", "show", "demo")["id"] == demo["id"]
    assert run_json(capsys, monkeypatch, "assistant", "update", "demo", "--temperature", "0.5")["parameters"] == {
        "temperature": 0.5}
    laptop = run_json(capsys, monkeypatch, "key", "create", "--name", "laptop", "--assistant", "demo")
    assert laptop["assistant_ids"] == [demo["id"]]
    assert run_json(capsys, monkeypatch, "key", "show", "laptop")["id"] == laptop["id"]
    other = run_json(capsys, monkeypatch, "assistant", "show", "other")
    updated = run_json(capsys, monkeypatch, "key", "update", "laptop", "--assistant", "other", "--assistant", demo["id"])
    assert sorted(updated["assistant_ids"]) == sorted([demo["id"], other["id"]])
    status, _, err = run(capsys, monkeypatch, "assistant", "show", "dmeo")
    assert (status, err) == (2, "riceball: error: no assistant with id or name 'dmeo'; there are: demo, other\n")
    status, _, err = run(capsys, monkeypatch, "key", "revoke", "lapt0p")
    assert (status, err) == (2, "riceball: error: no key with id, prefix or name 'lapt0p'; there are: laptop\n")
    assert run_json(capsys, monkeypatch, "key", "revoke", "laptop")["status"] == "revoked"
    assert run_json(capsys, monkeypatch, "assistant", "delete", "demo")["deleted"] is True
