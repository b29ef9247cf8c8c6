"""With `workers: 2` the admin console speaks for the whole process group: every SHOW adds up all workers and
every command (PAUSE, KILL_CLIENT, RELOAD, SHUTDOWN...) acts on all of them, whichever worker it lands on."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_for_tcp
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

CONFIG = {"workers": 2, "routing": {"read_write_split": False}, "admin": {"users": ["app"]}}
N_CLIENTS = 10


def _admin(proxy: ProxyProcess) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(proxy.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None)


def _dicts(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> list[dict[str, Any]]:
    cur = conn.execute(sql)
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _clients_on_both_workers(proxy: ProxyProcess, adm: psycopg.Connection[tuple[Any, ...]],
                             n: int = N_CLIENTS) -> list[psycopg.Connection[tuple[Any, ...]]]:
    """Connect until both workers hold at least one client of `app` (the kernel spreads them)."""
    conns: list[psycopg.Connection[tuple[Any, ...]]] = []
    for _ in range(60):
        conns.append(psycopg.connect(proxy.dsn(application_name=f"c{len(conns)}"), autocommit=True))
        if len(conns) >= n:
            workers = {c["worker"] for c in _dicts(adm, "SHOW CLIENTS") if c["database"] == "app"}
            if workers == {0, 1}:
                return conns
    raise AssertionError("the clients all landed on one worker")


def test_every_show_adds_up_all_workers(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(CONFIG)
    with _admin(proxy) as adm:
        conns = _clients_on_both_workers(proxy, adm)
        try:
            n = len(conns)
            for c in conns:  # three autocommit statements each
                for _ in range(3):
                    c.execute("SELECT 1")
            for _attempt in range(4):  # whichever worker each admin session lands on, the same totals
                with _admin(proxy) as a:
                    stats = {s["database"]: s for s in _dicts(a, "SHOW STATS")}["app"]
                    assert stats["total_query_count"] >= 3 * n, stats
                    assert stats["total_xact_count"] >= 3 * n
                    assert stats["total_client_login_count"] == n
                    totals = {r["name"]: r["value"] for r in _dicts(a, "SHOW TOTALS")}
                    assert totals["total_query_count"] >= stats["total_query_count"]
                    st_totals = {r["database"]: r for r in _dicts(a, "SHOW STATS_TOTALS")}["app"]
                    assert st_totals["query_count"] == stats["total_query_count"]
                    assert {r["database"] for r in _dicts(a, "SHOW STATS_AVERAGES")} >= {"app"}
                    servers = _dicts(a, "SHOW SERVERS")
                    assert {s["worker"] for s in servers if s["database"] == "app"} == {0, 1}
                    dbs = {d["name"]: d for d in _dicts(a, "SHOW DATABASES")}
                    assert dbs["app"]["current_client_connections"] == n
                    assert dbs["app"]["current_connections"] == sum(1 for s in servers if s["database"] == "app")
                    users = {u["name"]: u for u in _dicts(a, "SHOW USERS")}
                    assert users["app"]["current_client_connections"] == n + 2  # and the two admin sessions
                    lists = {r["list"]: r["items"] for r in _dicts(a, "SHOW LISTS")}
                    assert lists["used_clients"] == n + 2 and lists["users"] == 4
                    assert lists["used_servers"] >= len(servers)
                    mem = {m["name"]: m for m in _dicts(a, "SHOW MEM")}
                    assert mem["client"]["used"] == n + 2
                    fds = _dicts(a, "SHOW FDS")
                    assert {f["worker"] for f in fds if f["task"] == "client"} == {0, 1}
                    assert {f["worker"] for f in fds if f["task"] == "pooler"} == {0, 1}
                    sockets = _dicts(a, "SHOW SOCKETS")
                    assert sum(1 for s in sockets if s["type"] == "C") == n + 2
                    pools = {(p["database"], p["user"]): p for p in _dicts(a, "SHOW POOLS")}
                    assert pools[("app", "app")]["cl_active"] == n
                    node_stats = {r["node"]: r for r in _dicts(a, "SHOW NODE_STATS")}
                    assert int(node_stats["*"]["total_query_count"]) >= 3 * n
                    assert int(node_stats["*"]["total_client_connections"]) >= n + 2
                    nodes = _dicts(a, "SHOW NODES")
                    assert len(nodes) == len(cluster.node_config())
        finally:
            for c in conns:
                c.close()


def test_commands_act_on_every_worker(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(CONFIG)
    with _admin(proxy) as adm:
        conns = _clients_on_both_workers(proxy, adm, n=2)
        try:
            # KILL_CLIENT of a client on either worker (the admin session is on only one of them)
            clients = [c for c in _dicts(adm, "SHOW CLIENTS") if c["database"] == "app"]
            by_worker = {c["worker"]: c for c in clients}
            for w in (0, 1):
                victim = by_worker[w]
                adm.execute(f"KILL_CLIENT {victim['id']}")
                conn = conns[int(victim["application_name"][1:])]
                with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
                    conn.execute("SELECT 1")
            with pytest.raises(psycopg.Error, match="client not found"):
                adm.execute("KILL_CLIENT 999999")
        finally:
            for c in conns:
                c.close()

        # KILL db closes its clients on both workers; the db stays paused everywhere until RESUME
        conns = _clients_on_both_workers(proxy, adm, n=2)
        adm.execute("KILL app")
        for c in conns:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
            c.close()
        for _attempt in range(3):
            with _admin(proxy) as a:
                assert {d["name"]: d for d in _dicts(a, "SHOW DATABASES")}["app"]["paused"] == 1
        adm.execute("RESUME app")
        with pytest.raises(psycopg.Error, match="no client with client_id or database"):
            adm.execute("KILL no_such_thing")

        # PAUSE holds the clients of both workers; SHOW POOLS counts them all waiting; RESUME lets them go
        adm.execute("PAUSE app")
        for _attempt in range(3):
            with _admin(proxy) as a:
                assert {d["name"]: d for d in _dicts(a, "SHOW DATABASES")}["app"]["paused"] == 1
                assert {r["key"]: r["value"] for r in _dicts(a, "SHOW STATE")}["paused"] == "no"
        done: list[int] = []
        lock = threading.Lock()

        def query(i: int) -> None:
            with psycopg.connect(proxy.dsn(application_name=f"w{i}"), autocommit=True) as c:
                c.execute("SELECT 1")
            with lock:
                done.append(i)

        threads = [threading.Thread(target=query, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()

        def waiting() -> dict[str, Any]:
            return {(p["database"]): p for p in _dicts(adm, "SHOW POOLS")}.get("app") or {}

        _wait(lambda: waiting().get("cl_waiting") == 8)
        workers = {c["worker"] for c in _dicts(adm, "SHOW CLIENTS") if c["state"] == "waiting"}
        assert workers == {0, 1}, "the waiting clients should be spread over both workers"
        time.sleep(0.3)
        assert not done
        adm.execute("RESUME app")
        for t in threads:
            t.join(10)
        assert sorted(done) == list(range(8))

        # DISABLE refuses new clients on every worker; ENABLE undoes it
        adm.execute("DISABLE app")
        for _ in range(6):
            with pytest.raises(psycopg.OperationalError, match="disabled"):
                psycopg.connect(proxy.dsn(), connect_timeout=5)
        adm.execute("ENABLE app")
        for _ in range(6):
            with psycopg.connect(proxy.dsn(), autocommit=True) as c:
                assert c.execute("SELECT 1").fetchone() == (1,)

        # RELOAD reloads every worker, each logging who asked
        adm.execute("RELOAD")
        _wait(lambda: proxy.output().count("reload: reloaded") >= 2)
        assert "(via another worker) reload: reloaded" in proxy.output()

        # SHUTDOWN stops every worker and the supervisor does not restart them
        adm.execute("SHUTDOWN")
    assert proxy.wait(15) == 0
    assert "; restarting it" not in proxy.output()
    assert proxy.output().count("shut down (SHUTDOWN); not restarting it") == 2


def test_pgbouncer_exporter_sees_every_worker(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Debian's prometheus-pgbouncer-exporter against a 2-worker proxy: its counters are the sums of every
    worker's, as the proxy's own /metrics has them (one series per worker)."""
    exporter_bin = "/usr/bin/prometheus-pgbouncer-exporter"
    assert os.access(exporter_bin, os.X_OK), "install it with `make sysdeps` (scripts/sysdeps.sh)"
    proxy = proxy_factory(CONFIG)
    assert proxy.admin_port is not None and wait_for_tcp(proxy.host, proxy.admin_port, timeout=15)
    with _admin(proxy) as adm:
        conns = _clients_on_both_workers(proxy, adm)
    try:
        for c in conns:
            c.execute("SELECT 1")

        def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))
                    out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value  # summed over workers
            return out

        port = free_port()
        env = dict(os.environ, PGPASSWORD="apppass", PGSSLMODE="disable")
        exporter = subprocess.Popen(
            [exporter_bin, "--host", "127.0.0.1", "--port", str(port), "--pgbouncer-host", "127.0.0.1",
             "--pgbouncer-port", str(proxy.port), "--pgbouncer-user", "app"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_tcp("127.0.0.1", port, timeout=15), "the exporter did not start"
            exp = scrape(f"http://127.0.0.1:{port}/metrics")
            own = scrape(proxy.admin_url + "/metrics")
        finally:
            exporter.terminate()
            out = exporter.communicate(timeout=10)[0].decode(errors="replace")
        assert "Traceback" not in out, out
        db = (("database", "app"),)
        n = len(conns)
        assert exp[("pgbouncer_requests_total", db)] >= n
        assert exp[("pgbouncer_requests_total", db)] == own[("heliosproxy_database_queries_total", db)]
        assert exp[("pgbouncer_received_bytes_total", db)] == own[("heliosproxy_database_received_bytes_total", db)]
        assert exp[("pgbouncer_active_clients", (("database", "app"), ("user", "app")))] == n
        assert exp[("pgbouncer_used_clients", ())] >= n + 1
    finally:
        for c in conns:
            c.close()


def test_http_actions_reach_every_worker(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """POST /api/databases/{db}/pause|resume and /api/reload (served by worker 0) act on every worker."""
    proxy = proxy_factory({**CONFIG, "admin": {"users": ["app"], "token": "t0ken"}})
    auth = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
    assert proxy.admin_port is not None and wait_for_tcp(proxy.host, proxy.admin_port, timeout=15)

    def post(path: str) -> int:
        req = urllib.request.Request(proxy.admin_url + path, method="POST", data=b"", headers=auth)
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)

    assert post("/api/databases/app/pause") == 200
    done: list[int] = []
    lock = threading.Lock()

    def query(i: int) -> None:
        with psycopg.connect(proxy.dsn(application_name=f"h{i}"), autocommit=True) as c:
            c.execute("SELECT 1")
        with lock:
            done.append(i)

    threads: list[threading.Thread] = []
    with _admin(proxy) as adm:
        # Clients until both workers have one waiting (the kernel spreads connections; 8 may land on one).
        while len(threads) < 8 or (
            {c["worker"] for c in _dicts(adm, "SHOW CLIENTS") if c["state"] == "waiting"} != {0, 1}
            and len(threads) < 40
        ):
            threads.append(threading.Thread(target=query, args=(len(threads),), daemon=True))
            threads[-1].start()
            n = len(threads)
            _wait(lambda n=n: ({p["database"]: p for p in _dicts(adm, "SHOW POOLS")}.get("app") or {}).get(
                "cl_waiting") == n)
        n = len(threads)
        assert {c["worker"] for c in _dicts(adm, "SHOW CLIENTS") if c["state"] == "waiting"} == {0, 1}
        # the proxy's own /metrics agrees: one series per worker, summing to SHOW POOLS' cl_waiting
        with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        waiting = [s for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "heliosproxy_pool_clients" and s.labels.get("state") == "waiting"
                   and s.labels.get("database") == "app"]
        assert sum(s.value for s in waiting) == n and {s.labels["worker"] for s in waiting} == {"0", "1"}
    assert not done
    assert post("/api/databases/app/resume") == 200
    for t in threads:
        t.join(10)
    assert sorted(done) == list(range(n))

    assert post("/api/reload") == 200
    _wait(lambda: proxy.output().count("reload: reloaded") >= 2)
    assert "(via another worker) reload: reloaded" in proxy.output()


def test_json_log_lines_keep_their_worker_after_a_reload(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """A RELOAD that changes `log:` sets logging up again: each worker's lines still carry `worker`."""
    proxy = proxy_factory({**CONFIG, "log": {"format": "json"}})
    with _admin(proxy) as adm:
        proxy.rewrite_config({**proxy.config, "log": {"format": "json", "level": "debug"}})
        adm.execute("RELOAD")
        _wait(lambda: sum(1 for ln in proxy.output().splitlines() if '"outcome": "ok"' in ln) >= 2)
        conns = _clients_on_both_workers(proxy, adm, n=2)
        for c in conns:
            c.close()
    mark = max(i for i, ln in enumerate(proxy.output().splitlines()) if '"outcome": "ok"' in ln)
    after = [json.loads(ln) for ln in proxy.output().splitlines()[mark + 1:] if ln.startswith("{")]
    assert after and all("worker" in r for r in after), [r for r in after if "worker" not in r][:3]
    assert {r["worker"] for r in after if r["event"] == "client_connected"} == {0, 1}


def test_extended_protocol_on_the_console_sees_every_worker(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Drivers that prepare (psycopg prepare=True here, asyncpg always) get the merged answer too."""
    proxy = proxy_factory(CONFIG)
    with _admin(proxy) as adm:
        conns = _clients_on_both_workers(proxy, adm)
        try:
            for _attempt in range(4):  # whichever worker the console session lands on
                with _admin(proxy) as a:
                    cur = a.execute("SHOW CLIENTS", prepare=True)
                    assert cur.description is not None
                    names = [d.name for d in cur.description]
                    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                    assert {r["worker"] for r in rows if r["database"] == "app"} == {0, 1}
                    assert sum(1 for r in rows if r["database"] == "app") == len(conns)
                    cur = a.execute("SHOW STATS", prepare=True)
                    assert cur.description is not None
                    names = [d.name for d in cur.description]
                    stats = {r[names.index("database")]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
                    assert stats["app"]["total_client_login_count"] == len(conns)
        finally:
            for c in conns:
                c.close()
