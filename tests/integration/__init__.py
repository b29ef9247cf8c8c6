"""Integration tests: real PostgreSQL primary and standbys, the proxy run as a subprocess."""
