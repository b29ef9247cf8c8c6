"""HeliosProxy: a PostgreSQL wire-protocol proxy with pooling, routing, failover, WASM plugins."""

from __future__ import annotations

__version__ = "0.1.0"
