"""Multi-process mode: workers share the port, cancel requests reach the right worker, signals reach all."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import errors

from tests.helpers.proxy import ProxyFactory


def _cancel_after(conn: psycopg.Connection, delay: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), conn.cancel()))
    t.start()
    return t


def test_two_workers_serve_cancel_and_drain(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"workers": 2, "routing": {"read_write_split": False}, "admin": {"users": ["app"]}})
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(12)]
    try:
        for c in conns:
            assert c.execute("select 1").fetchone() == (1,)
        out = proxy.output()
        assert "[w0]" in out and "[w1]" in out, "both workers should have accepted clients"
        # Cancel requests open new connections that land on either worker; every one must work.
        for c in conns[:6]:
            t = _cancel_after(c, 0.3)
            started = time.monotonic()
            with pytest.raises(errors.QueryCanceled):
                c.execute("select pg_sleep(30)")
            assert time.monotonic() - started < 2.5
            t.join()
            assert c.execute("select 2").fetchone() == (2,)
        # /metrics (served by worker 0) carries every worker's samples, labelled by worker.
        with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        accepted = {s.labels["worker"]: s.value for s in fams["heliosproxy_client_connections_accepted"].samples
                    if s.name.endswith("_total")}
        assert set(accepted) == {"0", "1"}
        assert sum(accepted.values()) >= 12
        # The admin console shows every worker's clients and queries, whichever worker it lands on.
        with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
            rows = admin.execute("SHOW CLIENTS").fetchall()
            cols = [d.name for d in admin.execute("SHOW CLIENTS").description or []]
            workers = {r[cols.index("worker")] for r in rows}
            assert workers == {0, 1}
            assert len(rows) >= 13  # the 12 clients and the admin itself
            queries = admin.execute("SHOW QUERIES").fetchall()
            assert any("pg_sleep" in str(q[1]) and int(q[2]) >= 6 for q in queries)
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while proxy.output().count("SIGHUP reload") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.output().count("SIGHUP reload") == 2, "SIGHUP must reach every worker"
    finally:
        for c in conns:
            c.close()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=15) == 0


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_supervisor_is_killed(proxy_factory: ProxyFactory) -> None:
    """SIGKILL of the supervisor leaves no orphaned worker serving the port (PR_SET_PDEATHSIG)."""
    proxy = proxy_factory({"workers": 2})
    assert proxy.proc is not None
    pid = proxy.proc.pid
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    workers = [int(x) for x in out.split()]
    assert len(workers) == 2, out
    os.kill(pid, signal.SIGKILL)
    proxy.proc.wait(10)
    deadline = time.monotonic() + 15
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [w for w in workers if _running(w)]
        time.sleep(0.1)
    assert alive == [], f"workers still running after the supervisor died: {alive}"
