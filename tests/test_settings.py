from pathlib import Path

import pytest

from riceball_proxy.settings import DEFAULT_MAX_BODY_BYTES, Settings, SettingsError


def test_defaults():
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.data_dir == Path("var")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 20 * 1024 * 1024
    assert settings.plugins is None
    assert settings.disabled_plugins == frozenset()


def test_values_are_read():
    settings = Settings.from_env(
        {
            "RICEBALL_DATABASE_URL": "postgresql://u@db:5432/rb",
            "RICEBALL_DATA_DIR": "/srv/rb",
            "RICEBALL_HOST": "0.0.0.0",
            "RICEBALL_PORT": "9000",
            "RICEBALL_MAX_BODY_BYTES": "4096",
            "RICEBALL_PLUGINS": "anthropic, echo",
            "RICEBALL_DISABLE_PLUGINS": "riceball_proxy.builtin.openai_compat",
            "RICEBALL_LOG_LEVEL": "debug",
        }
    )
    assert settings.database_url == "postgresql://u@db:5432/rb"
    assert settings.data_dir == Path("/srv/rb")
    assert (settings.host, settings.port, settings.max_body_bytes) == ("0.0.0.0", 9000, 4096)
    assert settings.plugins == {"anthropic", "echo"}
    assert settings.disabled_plugins == {"riceball_proxy.builtin.openai_compat"}
    assert settings.log_level == "DEBUG"


def test_plugins_none_loads_no_installed_plugin():
    assert Settings.from_env({"RICEBALL_PLUGINS": "none"}).plugins == frozenset()


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("RICEBALL_PORT", "eighty", "RICEBALL_PORT must be a whole number"),
        ("RICEBALL_PORT", "70000", "RICEBALL_PORT must be between 1 and 65535"),
        ("RICEBALL_MAX_BODY_BYTES", "10", "RICEBALL_MAX_BODY_BYTES must be between"),
        ("RICEBALL_DATABASE_URL", "mysql://x", "RICEBALL_DATABASE_URL must start with postgresql://"),
        ("RICEBALL_LOG_LEVEL", "LOUD", "RICEBALL_LOG_LEVEL must be one of"),
        ("RICEBALL_REDIS_URL", "127.0.0.1:6379", "RICEBALL_REDIS_URL must start with redis://"),
        ("RICEBALL_LIMITS_FAIL", "maybe", "RICEBALL_LIMITS_FAIL must be open or closed"),
        ("RICEBALL_LIMITS_BACKEND", "etcd", "RICEBALL_LIMITS_BACKEND must be auto, memory, redis or postgres"),
        ("RICEBALL_LIMITS_BACKEND", "redis", "RICEBALL_LIMITS_BACKEND=redis needs RICEBALL_REDIS_URL"),
    ],
)
def test_a_bad_value_names_its_variable(name, value, says):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(says)
    assert "\n" not in str(raised.value)


def test_limit_counters_live_where_every_process_sees_them():
    embedded = Settings.from_env({})
    assert embedded.limits_store == "memory"  # one process, its own database
    assert embedded.replace(workers=2).limits_store == "postgres"
    external = Settings.from_env({"RICEBALL_DATABASE_URL": "postgresql://db/x"})
    assert external.limits_store == "postgres"  # another instance may share the database
    assert Settings.from_env({"RICEBALL_DATABASE_URL": "postgresql://db/x", "RICEBALL_LIMITS_BACKEND": "memory"}
                             ).limits_store == "memory"
    shared = Settings.from_env({"RICEBALL_REDIS_URL": "redis://127.0.0.1:6379/2", "RICEBALL_LIMITS_FAIL": "closed"})
    assert (shared.limits_store, shared.limits_fail) == ("redis", "closed")
    assert "6379" not in repr(shared)  # a Redis URL may hold a password
