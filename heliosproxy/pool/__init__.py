"""Backend connection pools, one per (node, database, user)."""
