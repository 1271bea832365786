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
        ("RICEBALL_LISTEN_DATABASE_URL", "postgresql://db/x", "RICEBALL_LISTEN_DATABASE_URL needs RICEBALL_DATABASE_URL"),
        ("RICEBALL_TRUSTED_PROXIES", "10.0.0.1, nginx", "RICEBALL_TRUSTED_PROXIES takes addresses and networks"),
        ("RICEBALL_CONFIG_PRUNE", "yes", "RICEBALL_CONFIG_PRUNE must be on or off"),
        ("RICEBALL_CACHE_TTL", "0", "RICEBALL_CACHE_TTL must be between"),
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


def test_a_pooled_database_is_told_by_its_listen_url():
    direct = Settings.from_env({"RICEBALL_DATABASE_URL": "postgresql://db/x"})
    assert (direct.database_pooled, direct.listen_database_url) == (False, None)
    pooled = Settings.from_env({"RICEBALL_DATABASE_URL": "postgresql://u:hunter2@pgbouncer/x",
                                "RICEBALL_LISTEN_DATABASE_URL": "postgresql://u:hunter2@db/x"})
    assert (pooled.database_pooled, pooled.listen_database_url) == (True, "postgresql://u:hunter2@db/x")
    assert "hunter2" not in repr(pooled)
    alone = Settings.from_env({"RICEBALL_DATABASE_URL": "postgresql://pgbouncer/x",
                               "RICEBALL_LISTEN_DATABASE_URL": "none", "RICEBALL_CACHE_TTL": "0.5"})
    assert (alone.database_pooled, alone.listen_database_url, alone.cache_ttl) == (True, None, 0.5)


def test_trusted_proxies_are_networks():
    import ipaddress

    settings = Settings.from_env({"RICEBALL_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,fd00::/8"})
    assert settings.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("fd00::/8"))
