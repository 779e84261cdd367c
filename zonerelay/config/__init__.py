"""Configuration: TOML defaults (default.toml) overridden by the user's file, validated with pydantic."""

from zonerelay.config.loader import ConfigError, load_config
from zonerelay.config.model import Config

__all__ = ["Config", "ConfigError", "load_config"]
