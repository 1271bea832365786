"""Jinja2 templates, packaged with the core from the repository's top-level ``templates/``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from riceball_proxy.admin.forms import field_label
from riceball_proxy.masking import mask_params, mask_url


def template_dir() -> Path:
    """Where the installed templates are (inside the package, or the checkout for an editable install)."""
    return Path(str(resources.files("riceball_proxy.templates")))


def setup_templates(app: web.Application) -> None:
    """Give ``app`` an autoescaping Jinja2 environment over the packaged templates, with the filters that
    mask secrets inside values (``mask_url``, ``mask_params``: ``riceball_proxy.masking``)."""
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(template_dir()),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["mask_url"] = mask_url
    environment.filters["mask_params"] = mask_params
    environment.globals["field_label"] = field_label
