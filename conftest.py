"""The suite's fixtures: the gateway's pytest plugin (``riceball_proxy.testing``, loaded by its entry
point), the repository's own helpers (tests/support.py), and two of the plugin's fixtures set for this
repository: its test plugins (``tests/plugins``) are installable, and two of them load by default."""
from pathlib import Path

import pytest

pytest_plugins = ["tests.support"]

TEST_PLUGINS = Path(__file__).parent / "tests" / "plugins"


@pytest.fixture
def settings(settings):
    return settings.replace(plugins=frozenset({"recorder", "shout"}))


@pytest.fixture
def install_plugin(install_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))
    return install_plugin
