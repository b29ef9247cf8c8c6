"""PgBouncer compatibility of the admin console: Debian's prometheus-pgbouncer-exporter and a psql session
written from PgBouncer's documentation run unchanged against the proxy (database `pgbouncer`)."""

from __future__ import annotations

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

EXPORTER = "/usr/bin/prometheus-pgbouncer-exporter"
ADMIN = {"admin": {"users": ["app"]}, "health": {"interval": "300ms"}}
INT4, INT8, NUMERIC, TEXT = 23, 20, 1700, 25


def _admin(proxy: ProxyProcess, dbname: str = "pgbouncer") -> psycopg.Connection[tuple[Any, ...]]:
    # prepare_threshold=None: PgBouncer's console speaks the simple protocol only; no server-side prepares
    return psycopg.connect(proxy.dsn(dbname=dbname), autocommit=True, prepare_threshold=None)


def _dicts(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> list[dict[str, Any]]:
    cur = conn.execute(sql)
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _types(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> dict[str, int]:
    cur = conn.execute(sql)
    assert cur.description is not None
    cur.fetchall()
    return {d.name: d.type_code for d in cur.description}


def _columns(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> list[str]:
    cur = conn.execute(sql)
    assert cur.description is not None
    cur.fetchall()
    return [d.name for d in cur.description]


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_pgbouncer_columns_and_types(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Every documented column, in PgBouncer 1.25's order, with its type; numbers are numbers."""
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("SELECT 1")
        with _admin(proxy) as adm:
            assert _columns(adm, "SHOW STATS")[:23] == [
                "database", "total_server_assignment_count", "total_xact_count", "total_query_count",
                "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                "total_client_parse_count", "total_server_parse_count", "total_bind_count",
                "avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
                "avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count",
                "avg_server_parse_count", "avg_bind_count"]
            assert "total_requests" in _columns(adm, "SHOW STATS")  # what exporter 1.7 reads
            types = _types(adm, "SHOW STATS")
            assert types["database"] == TEXT and types["total_query_count"] == NUMERIC
            assert _columns(adm, "SHOW STATS_TOTALS") == [
                "database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
                "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                "server_parse_count", "bind_count"]
            assert _columns(adm, "SHOW STATS_AVERAGES")[-3:] == [
                "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"]
            assert _columns(adm, "SHOW TOTALS") == ["name", "value"]
            assert _columns(adm, "SHOW POOLS")[:17] == [
                "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
                "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"]
            assert _types(adm, "SHOW POOLS")["cl_active"] == INT4
            socket_cols = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr",
                           "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
                           "link", "remote_pid", "tls", "application_name", "prepared_statements", "id"]
            for show in ("SHOW CLIENTS", "SHOW SERVERS", "SHOW SOCKETS", "SHOW ACTIVE_SOCKETS"):
                assert _columns(adm, show)[:21] == socket_cols, show
            assert _types(adm, "SHOW CLIENTS")["port"] == INT4
            assert _columns(adm, "SHOW DATABASES")[:17] == [
                "name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                "current_connections", "max_client_connections", "current_client_connections", "paused",
                "disabled"]
            assert "reserve_pool" in _columns(adm, "SHOW DATABASES")
            assert _columns(adm, "SHOW USERS") == [
                "name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                "current_connections", "max_user_client_connections", "current_client_connections"]
            lists = {r["list"]: r["items"] for r in _dicts(adm, "SHOW LISTS")}
            assert list(lists) == ["databases", "users", "peers", "pools", "peer_pools", "free_clients",
                                   "used_clients", "login_clients", "free_servers", "used_servers", "dns_names",
                                   "dns_zones", "dns_queries", "dns_pending"]
            assert lists["used_clients"] == 2 and lists["users"] == 4 and lists["databases"] >= 1
            assert _columns(adm, "SHOW MEM") == ["name", "size", "used", "free", "memtotal"]
            assert _columns(adm, "SHOW FDS") == ["fd", "task", "user", "database", "addr", "port", "cancel",
                                                  "link", "client_encoding", "std_strings", "datestyle", "timezone",
                                                  "password", "scram_client_key", "scram_server_key"]
            fds_types = _types(adm, "SHOW FDS")
            assert (fds_types["fd"], fds_types["cancel"], fds_types["scram_client_key"]) == (INT4, INT8, 17)
            users_types = _types(adm, "SHOW USERS")  # PgBouncer prints pool sizes as text, counts as int4
            assert (users_types["pool_size"], users_types["max_user_connections"]) == (TEXT, INT4)
            assert _columns(adm, "SHOW CONFIG") == ["key", "value", "default", "changeable"]
            assert _columns(adm, "SHOW STATE") == ["key", "value"]
            assert adm.execute("SHOW VERSION").fetchone()[0].startswith("HeliosProxy")  # type: ignore[index]
            # `heliosproxy` and `pgbouncer` are the same console
            with _admin(proxy, "heliosproxy") as adm2:
                assert _columns(adm2, "SHOW POOLS") == _columns(adm, "SHOW POOLS")


def test_counters_per_database_and_cl_waiting_under_pause(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with _admin(proxy) as adm, psycopg.connect(proxy.dsn(), autocommit=True) as app:
        before = {s["database"]: s for s in _dicts(adm, "SHOW STATS")}.get("app")
        assert before is not None and before["total_client_login_count"] == 1
        app.execute("SELECT 1")
        with app.transaction():
            app.execute("SELECT 2")
            app.execute("SELECT pg_sleep(0.2)")
        st = {s["database"]: s for s in _dicts(adm, "SHOW STATS")}["app"]
        # 1 autocommit statement + BEGIN, 2 statements, COMMIT: 5 queries in 2 transactions
        assert st["total_query_count"] - before["total_query_count"] == 5
        assert st["total_xact_count"] - before["total_xact_count"] == 2
        assert st["total_xact_time"] - before["total_xact_time"] >= 200_000
        assert st["total_query_time"] - before["total_query_time"] >= 200_000
        assert st["total_server_assignment_count"] >= 2
        assert st["total_received"] > before["total_received"] and st["total_sent"] > before["total_sent"]
        totals = {r["name"]: r["value"] for r in _dicts(adm, "SHOW TOTALS")}
        assert totals["total_query_count"] == st["total_query_count"]

        # PAUSE: a new statement waits; SHOW POOLS, SHOW CLIENTS and /metrics agree that it waits.
        adm.execute("PAUSE app")
        done = threading.Event()

        def paused_query() -> None:
            with psycopg.connect(proxy.dsn(application_name="waiter"), autocommit=True) as c:
                c.execute("SELECT 7")
            done.set()

        t = threading.Thread(target=paused_query, daemon=True)
        t.start()

        def waiting() -> list[dict[str, Any]]:
            return [p for p in _dicts(adm, "SHOW POOLS") if p["database"] == "app" and p["cl_waiting"] == 1]

        _wait(lambda: bool(waiting()))
        time.sleep(1.1)
        pool = waiting()[0]
        assert pool["maxwait"] >= 1 and pool["cl_active"] == 1, pool
        clients = [c for c in _dicts(adm, "SHOW CLIENTS") if c["application_name"] == "waiter"]
        assert clients[0]["state"] == "waiting" and clients[0]["wait"] >= 1
        metrics = _scrape(proxy.admin_url + "/metrics")
        assert metrics[("heliosproxy_pool_clients", (("database", "app"), ("state", "waiting"), ("user", "app")))] == 1
        assert metrics[("heliosproxy_client_connections", (("state", "waiting"),))] == 1
        assert {d["name"]: d for d in _dicts(adm, "SHOW DATABASES")}["app"]["paused"] == 1
        assert not done.is_set()
        adm.execute("RESUME app")
        assert done.wait(5)
        st2 = {s["database"]: s for s in _dicts(adm, "SHOW STATS")}["app"]
        assert st2["total_wait_time"] - st["total_wait_time"] >= 1_000_000


def test_prometheus_pgbouncer_exporter_scrapes_the_proxy(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Debian's prometheus-pgbouncer-exporter 1.7, unchanged, against the proxy's console."""
    assert os.access(EXPORTER, os.X_OK), "install it with `make sysdeps` (scripts/sysdeps.sh)"
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        for i in range(5):
            app.execute("SELECT %s::int", (i,))
        port = free_port()
        env = dict(os.environ, PGPASSWORD="apppass", PGSSLMODE="disable")
        exporter = subprocess.Popen(
            [EXPORTER, "--host", "127.0.0.1", "--port", str(port), "--pgbouncer-host", "127.0.0.1",
             "--pgbouncer-port", str(proxy.port), "--pgbouncer-user", "app"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_tcp("127.0.0.1", port, timeout=15), "the exporter did not start"
            exp = _scrape(f"http://127.0.0.1:{port}/metrics")
            own = _scrape(proxy.admin_url + "/metrics")
        finally:
            exporter.terminate()
            out = exporter.communicate(timeout=10)[0].decode(errors="replace")
        assert "Traceback" not in out, out
        db = (("database", "app"),)
        dbu = (("database", "app"), ("user", "app"))
        assert exp[("pgbouncer_requests_total", db)] >= 5
        assert exp[("pgbouncer_requests_total", db)] == own[("heliosproxy_database_queries_total", db)]
        assert exp[("pgbouncer_received_bytes_total", db)] == own[("heliosproxy_database_received_bytes_total", db)]
        assert exp[("pgbouncer_sent_bytes_total", db)] == own[("heliosproxy_database_sent_bytes_total", db)]
        assert exp[("pgbouncer_query_microseconds_total", db)] == pytest.approx(
            own[("heliosproxy_database_query_time_seconds_total", db)] * 1e6, abs=1)
        assert exp[("pgbouncer_active_clients", dbu)] == 1
        active = (("database", "app"), ("state", "active"), ("user", "app"))
        assert exp[("pgbouncer_active_clients", dbu)] == own[("heliosproxy_pool_clients", active)]
        assert exp[("pgbouncer_waiting_clients", dbu)] == 0
        assert exp[("pgbouncer_pool_size", db)] == 20 and exp[("pgbouncer_reserve_pool", db)] == 0
        assert exp[("pgbouncer_used_clients", ())] >= 2 and exp[("pgbouncer_databases", ())] >= 1
        assert exp[("pgbouncer_users", ())] == 4


PSQL_SESSION = """\\set ON_ERROR_STOP 1
SHOW HELP;
SHOW STATS;
SHOW STATS_TOTALS;
SHOW STATS_AVERAGES;
SHOW TOTALS;
SHOW SERVERS;
SHOW CLIENTS;
SHOW POOLS;
SHOW PEER_POOLS;
SHOW LISTS;
SHOW USERS;
SHOW DATABASES;
SHOW PEERS;
SHOW FDS;
SHOW SOCKETS;
SHOW ACTIVE_SOCKETS;
SHOW CONFIG;
SHOW MEM;
SHOW DNS_HOSTS;
SHOW DNS_ZONES;
SHOW VERSION;
SHOW STATE;
PAUSE app;
SHOW STATE;
RESUME app;
PAUSE;
SHOW STATE;
RESUME;
DISABLE app;
ENABLE app;
RECONNECT app;
WAIT_CLOSE app;
RECONNECT;
WAIT_CLOSE;
KILL app;
RESUME app;
SUSPEND;
SHOW STATE;
RESUME;
RELOAD;
"""


def test_psql_session_from_pgbouncer_docs(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Every command of PgBouncer's usage.md, as a psql script, against `pgbouncer`: all succeed."""
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("SELECT 1")
    script = proxy.tmpdir / "session.sql"
    script.write_text(PSQL_SESSION)
    out = subprocess.run(["psql", "-X", "-f", str(script), proxy.dsn(dbname="pgbouncer")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert out.stderr == "", out.stderr
    for tag in ("PAUSE", "RESUME", "DISABLE", "ENABLE", "RECONNECT", "WAIT_CLOSE", "KILL", "SUSPEND", "RELOAD"):
        assert tag in out.stdout, tag
    assert "suspended | yes" in out.stdout and "paused    | yes" in out.stdout
    # and the proxy serves clients afterwards
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        assert app.execute("SELECT 2").fetchone() == (2,)


def test_process_controls(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, routing={"read_write_split": False})
    with _admin(proxy) as adm:
        # KILL_CLIENT id: that client is closed with PgBouncer's message
        victim = psycopg.connect(proxy.dsn(application_name="victim"), autocommit=True)
        cid = next(c["id"] for c in _dicts(adm, "SHOW CLIENTS") if c["application_name"] == "victim")
        adm.execute(f"KILL_CLIENT {cid}")
        with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
            victim.execute("SELECT 1")
        victim.close()
        with pytest.raises(psycopg.Error, match="client not found"):
            adm.execute("KILL_CLIENT 12345")

        # PAUSE waits until the server connection in use is released
        busy = psycopg.connect(proxy.dsn())
        busy.execute("SELECT 1")  # BEGIN ... open transaction holds a server connection
        answered = threading.Event()

        def pause() -> None:
            with _admin(proxy) as a2:
                a2.execute("PAUSE app")
            answered.set()

        t = threading.Thread(target=pause, daemon=True)
        t.start()
        assert not answered.wait(0.8), "PAUSE returned while a server connection was in use"
        busy.commit()
        assert answered.wait(5)
        adm.execute("RESUME app")
        with pytest.raises(psycopg.Error, match="pooler is not paused/suspended"):
            adm.execute("RESUME")
        with pytest.raises(psycopg.Error, match="database app is not paused"):
            adm.execute("RESUME app")
        adm.execute("PAUSE")
        with pytest.raises(psycopg.Error, match="already suspended/paused"):
            adm.execute("PAUSE")
        adm.execute("RESUME")

        # RECONNECT: the server connection is replaced once released; WAIT_CLOSE returns once it is gone
        busy.execute("SELECT 1")
        pid1 = busy.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        adm.execute("RECONNECT app")
        servers = [s for s in _dicts(adm, "SHOW SERVERS") if s["remote_pid"] == pid1]
        assert servers and servers[0]["close_needed"] == 1
        closed = threading.Event()

        def wait_close() -> None:
            with _admin(proxy) as a2:
                a2.execute("WAIT_CLOSE app")
            closed.set()

        t = threading.Thread(target=wait_close, daemon=True)
        t.start()
        assert not closed.wait(0.8)
        busy.commit()
        assert closed.wait(5)
        busy.execute("SELECT 1")
        assert busy.execute("SELECT pg_backend_pid()").fetchone()[0] != pid1  # type: ignore[index]
        busy.commit()

        # KILL db: its clients are closed, new statements wait until RESUME
        adm.execute("KILL app")
        with pytest.raises(psycopg.OperationalError):
            busy.execute("SELECT 1")
        busy.close()
        assert {d["name"]: d for d in _dicts(adm, "SHOW DATABASES")}["app"]["paused"] == 1
        adm.execute("RESUME app")
        with psycopg.connect(proxy.dsn(), autocommit=True) as app:
            assert app.execute("SELECT 3").fetchone() == (3,)


def test_shutdown_wait_for_clients(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    app = psycopg.connect(proxy.dsn(), autocommit=True)
    with _admin(proxy) as adm:
        adm.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    time.sleep(0.5)
    assert proxy.proc is not None and proxy.proc.poll() is None, "exited while a client was connected"
    assert app.execute("SELECT 5").fetchone() == (5,)  # the connected client goes on
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=3)  # no new clients
    app.close()
    assert proxy.wait(15) == 0


def test_extended_protocol_clients_on_the_console(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """psycopg's server-side prepares (after 5 runs) and asyncpg's named statements work on the console."""
    import asyncio

    import asyncpg

    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(dbname="pgbouncer"), autocommit=True) as adm:
        for _ in range(8):  # prepared on the "server" from the 6th run on
            rows = _dicts(adm, "SHOW LISTS")
            assert {r["list"]: r["items"] for r in rows}["used_clients"] == 1
        cur = adm.execute("SHOW POOLS", prepare=True)
        assert cur.description is not None and cur.description[2].name == "cl_active"
        with pytest.raises(psycopg.errors.SyntaxError):
            adm.execute("SHOW MOON", prepare=True)
        assert adm.execute("SHOW VERSION", prepare=True).fetchone() is not None

    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("SELECT 1")

    async def go() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user="app", password="apppass",
                                     database="pgbouncer", ssl=False)
        try:
            return list(await conn.fetch("SHOW LISTS")), list(await conn.fetch("SHOW STATS"))
        finally:
            await conn.close()

    rows, stats = asyncio.run(go())
    assert {r["list"]: r["items"] for r in rows}["users"] == 4
    app_stats = {r["database"]: r for r in stats}["app"]
    assert app_stats["total_query_count"] == 1 and app_stats["total_received"] > 10  # numeric, binary



def test_shutdown_wait_for_servers(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    app = psycopg.connect(proxy.dsn())
    app.execute("SELECT 1")  # an open transaction holds its server connection
    with _admin(proxy) as adm:
        adm.execute("SHUTDOWN WAIT_FOR_SERVERS")
    time.sleep(0.5)
    assert proxy.proc is not None and proxy.proc.poll() is None, "exited while a server was in use"
    assert app.execute("SELECT 2").fetchone() == (2,)  # the transaction goes on to its end
    app.commit()
    assert proxy.wait(15) == 0
    with pytest.raises(psycopg.OperationalError):
        app.execute("SELECT 3")
    app.close()


def test_show_config_values_as_written(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """SHOW CONFIG: key/value/default/changeable, values as written in the file, defaults in the same syntax."""
    long_check = "SELECT 1 /* " + "x" * 100 + " */"
    proxy = proxy_factory(ADMIN, pool={"acquire_timeout": "15s", "server_idle_timeout": "90s",
                                       "server_check_query": long_check},
                          max_message_size="64MiB", max_client_buffer="2MiB", client_login_timeout=7,
                          admin={"users": ["app"], "token": "sekrit-token"})
    with _admin(proxy) as adm:
        assert _types(adm, "SHOW CONFIG") == {"key": TEXT, "value": TEXT, "default": TEXT, "changeable": TEXT}
        rows = {r["key"]: r for r in _dicts(adm, "SHOW CONFIG")}
    assert rows["pool.acquire_timeout"]["value"] == "15s"
    assert rows["pool.acquire_timeout"]["default"] == "5s"
    assert rows["pool.idle_timeout"]["value"] == "90s"  # written under its PgBouncer name
    assert rows["max_message_size"]["value"] == "64MiB" and rows["max_message_size"]["default"] == "64MiB"
    assert rows["max_client_buffer"]["value"] == "2MiB" and rows["max_client_buffer"]["default"] == "1MiB"
    assert rows["client_login_timeout"]["value"] == "7" and rows["client_login_timeout"]["default"] == "5s"
    assert rows["pool.max_lifetime"]["value"] == "1h"  # not written: the default, in the same syntax
    assert rows["plugins.limits.memory"]["value"] == "64MiB"
    check = rows["pool.server_check_query"]["value"]
    assert check.startswith("SELECT 1 /* xxx") and check.endswith("...") and len(check) == 60
    assert rows["admin.token"]["value"] == "********"
    assert rows["listen"]["changeable"] == "no" and rows["pool.size"]["changeable"] == "yes"


# PgBouncer 1.25's RowDescription of each SHOW (src/admin.c, src/stats.c): column names and their type letters
# (s, T: text; i: int4; q: int8; N: numeric; b: bytea). The proxy's own columns may follow.
_PGB_125: dict[str, tuple[str, list[str]]] = {
    "POOLS": ("ssiiiiiiiiiiiiiss", ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                                    "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                                    "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                                    "pool_mode", "load_balance_hosts"]),
    "CLIENTS": ("ssssssisiTTiiississii", ["type", "user", "database", "replication", "state", "addr", "port",
                                          "local_addr", "local_port", "connect_time", "request_time", "wait",
                                          "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
                                          "application_name", "prepared_statements", "id"]),
    "STATS": ("s" + "N" * 22, []),
    "STATS_TOTALS": ("s" + "N" * 11, []),
    "STATS_AVERAGES": ("s" + "N" * 11, []),
    "TOTALS": ("sN", ["name", "value"]),
    "DATABASES": ("ssissiiiissiiiiii", ["name", "host", "port", "database", "force_user", "pool_size",
                                        "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode",
                                        "load_balance_hosts", "max_connections", "current_connections",
                                        "max_client_connections", "current_client_connections", "paused",
                                        "disabled"]),
    "USERS": ("ssssiiii", []),
    "LISTS": ("si", ["list", "items"]),
    "MEM": ("siiii", ["name", "size", "used", "free", "memtotal"]),
    "FDS": ("issssiqisssssbb", []),
    "STATE": ("ss", ["key", "value"]),
    "CONFIG": ("ssss", ["key", "value", "default", "changeable"]),
    "VERSION": ("s", ["version"]),
    "PEERS": ("isii", ["peer_id", "host", "port", "pool_size"]),
    "PEER_POOLS": ("iiiii", []),
    "DNS_HOSTS": ("sqs", ["hostname", "ttl", "addrs"]),
    "DNS_ZONES": ("sqi", ["zonename", "serial", "count"]),
}
_LETTER = {"s": TEXT, "T": TEXT, "i": INT4, "q": INT8, "N": NUMERIC, "b": 17}


def test_every_show_has_pgbouncer_125_types(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app, _admin(proxy) as adm:
        app.execute("SELECT 1")
        for show, (letters, names) in [*_PGB_125.items(), ("SERVERS", _PGB_125["CLIENTS"]),
                                       ("SOCKETS", _PGB_125["CLIENTS"])]:
            cur = adm.execute(f"SHOW {show}")
            assert cur.description is not None
            rows = cur.fetchall()
            got = [(d.name, d.type_code) for d in cur.description][: len(letters)]
            assert [t for _, t in got] == [_LETTER[c] for c in letters], show
            if names:
                assert [n for n, _ in got] == names, show
            for row in rows:  # numbers arrive as numbers (psycopg converts by type)
                for (name, oid), value in zip(got, row, strict=False):
                    if value is not None and oid in (INT4, INT8, NUMERIC):
                        assert not isinstance(value, str), (show, name, value)


def test_suspend_holds_every_statement_and_disable_refuses_logins(cluster: PgCluster,
                                                                  proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with _admin(proxy) as adm, psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("SELECT 1")
        adm.execute("SUSPEND")
        assert {r["key"]: r["value"] for r in _dicts(adm, "SHOW STATE")}["suspended"] == "yes"
        with pytest.raises(psycopg.Error, match="already suspended/paused"):
            adm.execute("PAUSE")
        done = threading.Event()

        def go() -> None:
            app.execute("SELECT 2")
            done.set()

        threading.Thread(target=go, daemon=True).start()
        assert not done.wait(0.8), "a statement ran while suspended"
        adm.execute("RESUME")
        assert done.wait(5)

        adm.execute("DISABLE app")
        assert {d["name"]: d for d in _dicts(adm, "SHOW DATABASES")}["app"]["disabled"] == 1
        with pytest.raises(psycopg.OperationalError, match='database "app" is disabled'):
            psycopg.connect(proxy.dsn(), connect_timeout=5)
        assert app.execute("SELECT 3").fetchone() == (3,)  # connected clients go on, as in PgBouncer
        with pytest.raises(psycopg.Error, match="cannot disable admin db"):
            adm.execute("DISABLE pgbouncer")
        adm.execute("ENABLE app")
        with psycopg.connect(proxy.dsn(), autocommit=True) as again:
            assert again.execute("SELECT 4").fetchone() == (4,)
