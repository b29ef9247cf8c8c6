"""Result cache (issue 15 part 1): answers of read-only statements replayed byte for byte, dropped by writes."""

from heliosproxy.cache.gens import GLOBAL_SLOT, Generations, shared_generations, table_slot
from heliosproxy.cache.store import CacheStats, Entry, ResultCache

__all__ = [
    "GLOBAL_SLOT",
    "CacheStats",
    "Entry",
    "Generations",
    "ResultCache",
    "shared_generations",
    "table_slot",
]
