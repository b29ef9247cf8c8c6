"""SQL understanding for routing: classification (pglast lives only in this package) and hints."""

from __future__ import annotations

from heliosproxy.sql.classify import (
    Classifier,
    ClassifierStats,
    Effect,
    SignalCall,
    StatementInfo,
    TxControl,
    classify_uncached,
)
from heliosproxy.sql.hints import HELIOS_SETTINGS, Hints, parse_helios_set, parse_hints

__all__ = [
    "HELIOS_SETTINGS",
    "Classifier",
    "ClassifierStats",
    "Effect",
    "Hints",
    "SignalCall",
    "StatementInfo",
    "TxControl",
    "classify_uncached",
    "parse_helios_set",
    "parse_hints",
]
