"""Baseline for the hot path: CPU per transaction of a bare uvloop byte forwarder (no parsing) under pgbench -S."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class _Backend(asyncio.Protocol):
    def __init__(self, client: _Client):
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    backend_port = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.backend: _Backend | None = None
        self.queued: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, backend = await asyncio.get_running_loop().create_connection(
            lambda: _Backend(self), "127.0.0.1", self.backend_port
        )
        self.backend = backend
        assert backend.transport is not None
        for data in self.queued:
            backend.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.write(data)
        else:
            self.queued.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.close()


def serve(listen_port: int, backend_port: int) -> None:
    import uvloop

    _Client.backend_port = backend_port

    async def main() -> None:
        await asyncio.get_running_loop().create_server(_Client, "127.0.0.1", listen_port)
        await asyncio.sleep(3600)

    uvloop.run(main())


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, int(fields[11]) / tck


def measure(clients: int, seconds: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.helpers import free_port
    from tests.helpers.pgcluster import PgCluster

    with PgCluster(standbys=0) as cluster:
        port = free_port()
        fwd = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(cluster.primary.port)])
        try:
            time.sleep(1.0)
            env = dict(os.environ, PGPASSWORD="apppass")
            base = ["-h", "127.0.0.1", "-p", str(port), "-U", "app"]
            subprocess.run(["pgbench", *base, "-i", "-s", "1", "app"], capture_output=True, env=env, check=True)
            t0, u0 = _cpu(fwd.pid)
            out = subprocess.run(
                ["pgbench", *base, "-n", "-S", "-M", "simple", "-c", str(clients), "-j", "2",
                 "-T", str(seconds), "app"],
                capture_output=True, text=True, env=env, check=True,
            ).stdout
            t1, u1 = _cpu(fwd.pid)
            m = re.search(r"actually processed: (\d+)", out)
            tps = re.search(r"tps = ([\d.]+)", out)
            assert m and tps
            n = int(m.group(1))
            print(f"bare forwarder: {float(tps.group(1)):.0f} TPS, CPU {1e6 * (t1 - t0) / n:.1f} us/tx "
                  f"(user {1e6 * (u1 - u0) / n:.1f})")
        finally:
            fwd.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", nargs=2, type=int, metavar=("LISTEN", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=8)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], a.serve[1])
    else:
        measure(a.clients, a.seconds)
