"""Jinja2 templates, packaged with the core from the repository's top-level ``templates/``."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

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


#: Fields whose label is not their name in words.
_LABELS = {"provider_id": "Provider", "top_p": "Top p", "rpm": "Requests per minute", "tpm": "Tokens per minute",
           "max_parallel": "Calls at once", "budget_usd": "Budget in USD", "budget_tokens": "Budget in tokens",
           "price_input": "Price of prompt tokens", "price_output": "Price of answer tokens",
           "price_cached_input": "Price of cache reads", "price_cache_write": "Price of cache writes",
           "api_key": "API key", "base_url": "Base URL", "extra_params": "Extra parameters"}


def field_label(name: str) -> str:
    """A form field's name as the error summary of a form shows it: ``fallback_model_2`` is "Fallback 3: model"."""
    match = re.fullmatch(r"fallback_(\w+)_(\d+)", name)
    if match:
        return f"Fallback {int(match[2]) + 1}: {match[1]}"
    return _LABELS.get(name) or name.replace("_", " ").capitalize()
