"""The SQL admin console (psql/psycopg on database `heliosproxy`) and the HTTP admin API, against a real cluster."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

ADMIN = {"admin": {"users": ["app"]}, "health": {"interval": "300ms"}}
TOKEN = "t0ken-for-tests"


def _admin(proxy: ProxyProcess) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True)


def _rows(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(sql)
    assert cur.description is not None
    return [d.name for d in cur.description], cur.fetchall()


def _dicts(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> list[dict[str, Any]]:
    cols, rows = _rows(conn, sql)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _http(proxy: ProxyProcess, path: str, method: str = "GET", token: str | None = None,
          body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(proxy.admin_url + path, method=method, data=body)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
            status = r.status
            ctype = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def _authed(proxy: ProxyProcess, path: str, method: str = "GET") -> tuple[int, Any]:
    return _http(proxy, path, method, token=TOKEN)


def _raw(proxy: ProxyProcess, data: bytes) -> bytes:
    assert proxy.admin_port is not None
    with socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_show_commands(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(application_name="worker-1"), autocommit=True) as app:
        app.execute("SELECT 42")
        app.execute("CREATE TEMP TABLE IF NOT EXISTS t(x int)")  # pins the client to its backend
        with _admin(proxy) as adm:
            _wait(lambda: all(n["state"] == "up" for n in _dicts(adm, "SHOW NODES")))
            nodes = {n["name"]: n for n in _dicts(adm, "SHOW NODES")}
            assert set(nodes) == {"primary", "standby1", "standby2"}
            assert nodes["primary"]["role"] == "primary" and nodes["primary"]["write_target"] == "t"
            assert nodes["standby1"]["role"] == "standby" and nodes["standby1"]["lag_bytes"] is not None
            assert nodes["primary"]["port"] == str(cluster.primary.port)

            pools = _dicts(adm, "SHOW POOLS")
            cols, _ = _rows(adm, "SHOW POOLS")
            assert cols[:17] == ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                                 "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                                 "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                                 "pool_mode", "load_balance_hosts"]
            # sv_active: the pinned client, plus (first login of a run) the background pg_proc lookup
            assert any(p["database"] == "app" and p["user"] == "app" and p["pool_mode"] == "transaction"
                       and p["sv_active"] >= 1 for p in pools), pools

            clients = _dicts(adm, "SHOW CLIENTS")
            mine = [c for c in clients if c["application_name"] == "worker-1"]
            assert len(mine) == 1 and mine[0]["type"] == "C" and mine[0]["database"] == "app"
            assert mine[0]["pinned"] == "t" and mine[0]["state"] == "active" and isinstance(mine[0]["id"], int)
            assert any(c["database"] == "heliosproxy" for c in clients)

            servers = _dicts(adm, "SHOW SERVERS")
            assert any(s["link"] == mine[0]["client_id"] and s["state"] == "active"
                       and s["ptr"] == mine[0]["link"] for s in servers), servers

            stats = {s["database"]: s for s in _dicts(adm, "SHOW STATS")}
            assert stats["app"]["total_query_count"] >= 2 and stats["app"]["total_xact_count"] >= 2
            assert stats["app"]["total_received"] > 0 and stats["app"]["total_sent"] > 0
            node_stats = _dicts(adm, "SHOW NODE_STATS")
            assert node_stats[0]["node"] == "*" and int(node_stats[0]["total_query_count"]) >= 2

            queries = _dicts(adm, "SHOW QUERIES")
            assert list(queries[0]) == ["fingerprint", "query", "calls", "total_ms", "mean_ms", "errors"]
            assert any("SELECT" in q["query"] and int(q["calls"]) >= 1 for q in queries)

            assert _rows(adm, "SHOW VERSION")[1][0][0].startswith("HeliosProxy ")
            assert _rows(adm, "SHOW PLUGINS")[0][:3] == ["name", "version", "state"]
            cfg = {r["key"]: r for r in _dicts(adm, "show config;")}
            assert cfg["pool.size"]["value"] == "20" and cfg["pool.size"]["default"] == "20"
            assert cfg["health.interval"]["value"] == "300ms"  # as written in the file
            assert cfg["listen"]["changeable"] == "no"
            assert "apppass" not in json.dumps(list(cfg.values()))
            assert "SHOW NODES" in [r[0] for r in _rows(adm, "SHOW HELP")[1]]


def test_errors_and_access(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with _admin(proxy) as adm:
        with pytest.raises(psycopg.errors.SyntaxError, match='unknown admin command "FROB"'):
            adm.execute("FROB the knob")
        with pytest.raises(psycopg.errors.SyntaxError, match='unknown SHOW item "MOON"'):
            adm.execute("SHOW MOON")
        # DISABLE takes a database (PgBouncer's) or a node name; an unknown name is a database.
        adm.execute("DISABLE nope")
        assert {d["name"]: d for d in _dicts(adm, "SHOW DATABASES")}["nope"]["disabled"] == 1
        with pytest.raises(psycopg.OperationalError, match='database "nope" is disabled'):
            psycopg.connect(proxy.dsn(dbname="nope"))
        adm.execute("ENABLE nope")
        with pytest.raises(psycopg.errors.UndefinedObject, match="no client"):
            adm.execute("KILL c1234")
        assert adm.execute("SHOW VERSION").fetchone() is not None  # the session goes on
    with pytest.raises(psycopg.OperationalError, match='user "md5user" is not an admin'):
        psycopg.connect(proxy.dsn(user="md5user", password="md5pass", dbname="heliosproxy"))
    # psql works too
    out = subprocess.run(["psql", proxy.dsn(dbname="heliosproxy"), "-AtXc", "SHOW VERSION"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("HeliosProxy"), out.stderr


def test_disable_enable_pause_resume_kill(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    s1, s2 = cluster.standbys
    with _admin(proxy) as adm, psycopg.connect(proxy.dsn(), autocommit=True) as app:
        _wait(lambda: all(n["state"] == "up" for n in _dicts(adm, "SHOW NODES")))

        def read_ports(n: int = 8) -> set[int]:
            return {app.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(n)}  # type: ignore[index]

        assert read_ports() == {s1.port, s2.port}
        adm.execute("DISABLE standby1")
        assert read_ports() == {s2.port}
        assert {n["name"]: n for n in _dicts(adm, "SHOW NODES")}["standby1"]["disabled"] == "t"
        adm.execute("ENABLE standby1")
        assert read_ports() == {s1.port, s2.port}

        # PAUSE holds new statements; RESUME releases them.
        adm.execute("PAUSE app")
        done = threading.Event()
        result: list[Any] = []

        def paused_query() -> None:
            with psycopg.connect(proxy.dsn(), autocommit=True) as c:
                result.append(c.execute("SELECT 7").fetchone())
            done.set()

        t = threading.Thread(target=paused_query, daemon=True)
        t.start()
        assert not done.wait(1.0), "a statement ran while the database was paused"
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            adm.execute("RESUME otherdb")
        adm.execute("RESUME app")
        assert done.wait(5.0) and result == [(7,)]
        adm.execute("PAUSE")
        adm.execute("RESUME")

        # KILL by client_id: that client gets 57P01, others go on.
        victim = psycopg.connect(proxy.dsn(application_name="victim"), autocommit=True)
        victim.execute("SELECT 1")
        cid = next(c["client_id"] for c in _dicts(adm, "SHOW CLIENTS") if c["application_name"] == "victim")
        adm.execute(f"KILL {cid}")
        with pytest.raises(psycopg.OperationalError) as ei:
            victim.execute("SELECT 1")
        assert ei.value.sqlstate == "57P01" or "administrator command" in str(ei.value)
        victim.close()
        assert app.execute("SELECT 1").fetchone() == (1,)
        assert all(c["client_id"] != cid for c in _dicts(adm, "SHOW CLIENTS"))


def test_reload_and_shutdown_from_console(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with _admin(proxy) as adm:
        new = dict(proxy.config)
        new["pool"] = {"size": 7}
        proxy.rewrite_config(new)
        adm.execute("RELOAD")
        assert {r["key"]: r["value"] for r in _dicts(adm, "SHOW CONFIG")}["pool.size"] == "7"
        bad = dict(proxy.config)
        bad["pool"] = {"size": "lots"}
        proxy.rewrite_config(bad)
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("RELOAD")
        assert ei.value.sqlstate == "F0000"
        assert "heliosproxy.yaml:" in str(ei.value) and "pool.size" in str(ei.value)
        assert {r["key"]: r["value"] for r in _dicts(adm, "SHOW CONFIG")}["pool.size"] == "7"
        adm.execute("SHUTDOWN")
    assert proxy.wait(15) == 0


def test_http_endpoints(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({**ADMIN, "admin": {"users": ["app"], "token": TOKEN}})
    with psycopg.connect(proxy.dsn(application_name="http-test"), autocommit=True) as app:
        app.execute("SELECT 1")
        _wait(lambda: _authed(proxy, "/health")[0] == 200)
        assert _authed(proxy, "/health") == (200, {"status": "ok"})
        assert _authed(proxy, "/ready") == (200, {"status": "ready"})
        assert _authed(proxy, "/live") == (200, {"status": "live"})
        status, nodes = _authed(proxy, "/api/nodes")
        assert status == 200 and [n["name"] for n in nodes] == ["primary", "standby1", "standby2"]
        assert nodes[0]["write_target"] is True and nodes[1]["role"] == "standby"
        status, pools = _authed(proxy, "/api/pools")
        assert status == 200 and any(p["database"] == "app" for p in pools)
        status, clients = _authed(proxy, "/api/clients")
        assert status == 200 and any(c["application_name"] == "http-test" for c in clients)
        assert _authed(proxy, "/api/plugins") == (200, [])
        status, queries = _authed(proxy, "/api/queries")
        assert status == 200 and any(q["calls"] >= 1 for q in queries)
        status, text = _authed(proxy, "/metrics")
        assert status == 200 and "heliosproxy_queries_total" in text

        status, node = _authed(proxy, "/api/nodes/standby2/disable", "POST")
        assert status == 200 and node["disabled"] is True and node["usable"] is False
        ports = {app.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(6)}  # type: ignore[index]
        assert ports == {cluster.standbys[0].port}
        assert _authed(proxy, "/api/nodes/standby2/enable", "POST")[1]["disabled"] is False

        assert _authed(proxy, "/api/reload", "POST") == (200, {"ok": True, "message": f"reloaded {proxy.config_path}"})
        bad = dict(proxy.config)
        bad["frobnicate"] = True
        proxy.rewrite_config(bad)
        status, err = _authed(proxy, "/api/reload", "POST")
        assert status == 422 and err["ok"] is False and "frobnicate" in err["error"]
        assert "heliosproxy.yaml:" in err["error"]

        # Bad requests: 4xx with a JSON error, and the server keeps serving.
        assert _authed(proxy, "/nope")[0] == 404 and "error" in _authed(proxy, "/nope")[1]
        assert _authed(proxy, "/api/nodes/ghost/disable", "POST")[0] == 404
        assert _authed(proxy, "/api/nodes/standby1/explode", "POST")[0] == 404
        assert _authed(proxy, "/api/reload")[0] == 405
        assert _authed(proxy, "/api/nodes", "DELETE")[0] == 405
        assert _raw(proxy, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(proxy, b"GET /live HTTP/9.9\r\n\r\n").startswith(b"HTTP/1.1 505")
        assert _raw(proxy, b"GET /live HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
        assert _raw(proxy, b"POST /api/reload HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").startswith(b"HTTP/1.1 413")
        assert _raw(proxy, b"POST /api/reload HTTP/1.1\r\nContent-Length: x\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(proxy, b"GET /li").startswith(b"HTTP/1.1 400")  # cut short
        assert _raw(proxy, b"") == b""  # connect and close: nothing to answer
        keep = _raw(proxy, b"GET /live HTTP/1.1\r\n\r\nGET /live HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert keep.count(b"HTTP/1.1 200") == 2
        assert _authed(proxy, "/live")[0] == 200
        assert app.execute("SELECT 2").fetchone() == (2,)


def test_http_bearer_token(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"token": "s3cret"}})
    for path in ("/api/nodes", "/api/pools", "/api/overview", "/api/stats"):
        status, body = _http(proxy, path)
        assert status == 401 and body["error"] == "missing or wrong bearer token"
        assert _http(proxy, path, token="wrong")[0] == 401
        assert _http(proxy, path, token="s3cret")[0] == 200
    # Orchestrator probes never need the token, and say nothing but a status.
    _wait(lambda: _http(proxy, "/health")[0] == 200)
    assert _http(proxy, "/live") == (200, {"status": "live"})
    assert _http(proxy, "/ready") == (200, {"status": "ready"})
    assert _http(proxy, "/health") == (200, {"status": "ok"})
    # /metrics is open unless admin.metrics_auth: true.
    assert _http(proxy, "/metrics")[0] == 200
    assert _http(proxy, "/api/reload", "POST")[0] == 401
    assert _http(proxy, "/api/reload", "POST", token="wrong")[0] == 401
    assert _http(proxy, "/api/reload", "POST", token="s3cret")[0] == 200
    assert _http(proxy, "/api/nodes/standby1/disable", "POST")[0] == 401

    locked = proxy_factory({"admin": {"token": "s3cret", "metrics_auth": True}, "workers": 2})
    assert _http(locked, "/metrics")[0] == 401
    assert _http(locked, "/metrics", token="wrong")[0] == 401
    deadline = time.monotonic() + 10  # worker 1 may still be starting its link when worker 0 listens
    while True:
        status, text = _http(locked, "/metrics", token="s3cret")
        if 'worker="1"' in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200 and "heliosproxy_queries_total" in text
    assert 'worker="0"' in text and 'worker="1"' in text  # every worker's samples, as without the token
    assert _http(locked, "/live")[0] == 200


def test_http_no_token_means_no_actions(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    for path in ("/api/reload", "/api/nodes/standby1/disable"):
        status, body = _http(proxy, path, "POST")
        assert status == 403 and "admin.token" in body["error"] and "Bearer" in body["error"]
        assert _http(proxy, path, "POST", token="anything")[0] == 403
    nodes = _http(proxy, "/api/nodes")[1]
    assert all(n["disabled"] is False for n in nodes)  # nothing was done
    assert _http(proxy, "/api/nodes")[0] == 200  # reads stay open without a token
    assert _http(proxy, "/metrics")[0] == 200


def _req(proxy: ProxyProcess, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Status of one raw request (exact headers, including Host)."""
    head = f"{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    out = _raw(proxy, head.encode() + b"\r\n" + body)
    return int(out.split(b" ", 2)[1])


def test_http_dns_rebinding_and_csrf(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"token": "s3cret", "allowed_hosts": ["proxy.internal"]}})
    port = proxy.admin_port
    auth = {"Authorization": "Bearer s3cret"}
    # Host: the listen address, loopback names, allowed_hosts; a rebound name is refused.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "proxy.internal", f"PROXY.internal:{port}"):
        assert _req(proxy, "GET", "/api/nodes", {"Host": host, **auth}) == 200, host
    for host in (f"evil.example:{port}", "attacker.test", f"10.1.2.3:{port}"):
        assert _req(proxy, "GET", "/api/nodes", {"Host": host, **auth}) == 403, host
        assert _req(proxy, "GET", "/live", {"Host": host}) == 403, host
        assert _req(proxy, "POST", "/api/reload", {"Host": host, **auth}) == 403, host
    host = {"Host": f"127.0.0.1:{port}"}
    # CSRF: a cross-site Origin, a cross-site fetch or a form content type is refused even with the token.
    assert _req(proxy, "POST", "/api/reload", {**host, **auth, "Origin": "http://evil.example"}) == 403
    assert _req(proxy, "POST", "/api/reload", {**host, **auth, "Origin": "null"}) == 403
    assert _req(proxy, "POST", "/api/reload", {**host, **auth, "Sec-Fetch-Site": "cross-site"}) == 403
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain;charset=UTF-8"):
        assert _req(proxy, "POST", "/api/reload", {**host, **auth, "Content-Type": ctype}, b"a=b") == 403, ctype
    # The same request from the dashboard's own origin works.
    same = {**host, **auth, "Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json"}
    assert _req(proxy, "POST", "/api/reload", same, b"{}") == 200
    assert _req(proxy, "POST", "/api/reload", {**host, **auth}) == 200


def test_http_wildcard_listen_accepts_ip_hosts(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    from tests.helpers import free_port

    port = free_port()
    proxy = proxy_factory({"admin": {"listen": f"0.0.0.0:{port}"}})
    assert _req(proxy, "GET", "/live", {"Host": f"127.0.0.1:{port}"}) == 200
    assert _req(proxy, "GET", "/live", {"Host": f"192.0.2.7:{port}"}) == 200
    assert _req(proxy, "GET", "/live", {"Host": f"localhost:{port}"}) == 200
    assert _req(proxy, "GET", "/live", {"Host": f"rebind.example:{port}"}) == 403
