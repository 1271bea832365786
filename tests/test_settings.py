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
    ],
)
def test_a_bad_value_names_its_variable(name, value, says):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(says)
    assert "\n" not in str(raised.value)
