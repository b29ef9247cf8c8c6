"""Helpers shared by tests, scripts/demo.py and bench/: free ports, PgCluster, ProxyProcess."""

from __future__ import annotations

import socket
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` on `host` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def first_free_port(start: int, host: str = "127.0.0.1", tries: int = 100) -> int:
    """`start` if it is free, else the next free port after it."""
    for port in range(start, start + tries):
        if port_is_free(port, host):
            return port
    raise RuntimeError(f"no free port in {start}..{start + tries - 1} on {host}")


def wait_for_tcp(host: str, port: int, timeout: float) -> bool:
    """Poll until a TCP connect to host:port succeeds; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
