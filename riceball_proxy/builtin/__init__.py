"""The gateway's built-in plugins, registered from ``riceball_proxy.plugins.DEFAULT_PLUGINS``."""
