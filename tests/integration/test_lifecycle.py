"""Lifecycle through a real proxy process: SIGHUP/RELOAD with good and bad files while clients run, SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
import uuid

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess


def _reloads(proxy: ProxyProcess) -> dict[str, float]:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "heliosproxy_config_reloads_total":
                out[s.labels["result"]] = s.value
    return out


class Worker(threading.Thread):
    def __init__(self, dsn: str, table: str):
        super().__init__(daemon=True)
        self.dsn, self.table = dsn, table
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    try:
                        conn.execute(f"INSERT INTO {self.table} VALUES (1)")
                        conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
                        with conn.transaction():
                            conn.execute(f"INSERT INTO {self.table} VALUES (2)")
                        self.ok += 1
                    except psycopg.Error as exc:
                        self.errors.append(str(exc))
        except psycopg.Error as exc:
            self.errors.append(f"connection: {exc}")


def test_reload_good_and_bad_while_clients_run(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 4}, "admin": {"token": "reload-token"}})
    table = "reload_" + uuid.uuid4().hex[:8]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    cluster.wait_replay()  # the workers' reads go to the standbys
    workers = [Worker(proxy.dsn(), table) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)

    good = dict(proxy.config)
    good["pool"] = {"size": 6}
    good["health"] = {"interval": "500ms"}
    proxy.rewrite_config(good)
    proxy.signal(signal.SIGHUP)
    proxy.wait_output("SIGHUP reload: reloaded")
    assert _reloads(proxy) == {"ok": 1.0, "failed": 0.0}

    bad = dict(good)
    bad["pool"] = {"size": 6, "mode": "sometimes"}
    proxy.rewrite_config(bad)
    proxy.signal(signal.SIGHUP)
    out = proxy.wait_output("SIGHUP reload:", timeout=5)
    deadline = time.monotonic() + 5
    while "pool.mode" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
        out = proxy.output()
    line = next(ln for ln in out.splitlines() if "SIGHUP reload" in ln and "pool.mode" in ln)
    assert f"{proxy.config_path}:" in line and "pool.mode:" in line
    assert _reloads(proxy) == {"ok": 1.0, "failed": 1.0}

    # Same through the HTTP API: the bad file is refused and reported, the running config stays.
    req = urllib.request.Request(proxy.admin_url + "/api/reload", method="POST",
                                 headers={"Authorization": "Bearer reload-token"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=5)
    assert ei.value.code == 422
    proxy.rewrite_config(good)
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200

    time.sleep(0.5)
    for w in workers:
        w.stop.set()
    for w in workers:
        w.join(10)
    assert all(w.errors == [] for w in workers), [w.errors for w in workers]
    assert all(w.ok > 0 for w in workers)
    assert "Traceback" not in proxy.output()
    assert proxy.running()


def test_sigterm_drains_a_transaction_in_flight_then_exits_0(
    cluster: PgCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory({"shutdown_timeout": "20s"})
    table = "drain_" + uuid.uuid4().hex[:8]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    busy = psycopg.connect(proxy.dsn(), autocommit=True)
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    idle.execute("SELECT 1")
    busy.execute("BEGIN")
    busy.execute(f"INSERT INTO {table} VALUES (1)")

    proxy.signal(signal.SIGTERM)
    proxy.wait_output("SIGTERM: draining")
    time.sleep(0.3)
    # No new clients.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=2)
    # The idle client is closed with 57P01.
    with pytest.raises(psycopg.OperationalError) as ei:
        idle.execute("SELECT 1")
    assert "administrator command" in str(ei.value)
    # The transaction in flight finishes...
    assert proxy.running()
    busy.execute(f"INSERT INTO {table} VALUES (2)")
    busy.execute("COMMIT")
    # ...then its client is closed too, and the process exits 0.
    assert proxy.wait(10) == 0
    with pytest.raises(psycopg.OperationalError):
        busy.execute("SELECT 1")
    busy.close()
    idle.close()
    assert cluster.sql(cluster.primary, f"SELECT count(*) FROM {table}", db="app") == "2"
    assert "stopped" in proxy.output()
