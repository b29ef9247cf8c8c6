"""Configuration: the frozen model (schema) and the YAML loader that builds it (load)."""

from __future__ import annotations

from heliosproxy.config.load import load_config, parse_config, parse_duration, parse_size
from heliosproxy.config.schema import Config

__all__ = ["Config", "load_config", "parse_config", "parse_duration", "parse_size"]
