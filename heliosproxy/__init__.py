"""HeliosProxy: a PostgreSQL wire-protocol proxy with pooling, routing, failover, WASM plugins."""

from __future__ import annotations

from heliosproxy import _compiled

__version__ = "0.1.0"
# Compiled hot modules (setup.py, mypyc) unless HELIOS_PURE=1 or the sources changed since the build.
PURE_REASON = _compiled.choose()
