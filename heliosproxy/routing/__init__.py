"""Routing: where a statement runs (primary, a standby, a named node, a branch)."""
