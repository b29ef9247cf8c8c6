"""Unit tests: no servers, fast."""
