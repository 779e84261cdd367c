"""Load the TOML configuration: built-in defaults, overridden key by key by the user's file."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zonerelay.config.model import Config


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key."""


def default_toml() -> str:
    return resources.files("zonerelay.config").joinpath("default.toml").read_text("utf-8")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge tables; scalars and arrays in ``override`` replace those in ``base``."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read defaults plus ``path`` (optional) plus ``overrides`` and validate the result."""
    data = tomllib.loads(default_toml())
    if path is not None:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        # Every user-defined interface or zone starts from the defaults of the built-in one,
        # so that `[smtp.msa] port = 587` is enough to declare a second interface.
        for section, template in (("smtp", "feeder"), ("zones", "default")):
            for name, table in (user.get(section) or {}).items():
                if name not in data[section] and isinstance(table, dict):
                    data[section][name] = dict(data[section][template])
        data = merge(data, user)
    if overrides:
        data = merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{_format_errors(exc)}") from exc
