"""Jinja2 templates of the gateway, installed as ``riceball_proxy.templates``."""
