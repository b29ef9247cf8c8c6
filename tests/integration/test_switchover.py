"""Planned SWITCHOVER (issue 16 §3) under load: clients see a pause, not an error; the old primary is fenced."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

HEALTH = {"interval": "500ms", "timeout": "500ms", "failures_before_down": 3, "successes_before_up": 2}
TOKEN = "switch-token"


def _nodes(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    req = urllib.request.Request(proxy.admin_url + "/api/nodes")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return {n["name"]: n for n in json.load(r)}


def _metric(proxy: ProxyProcess, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _post(proxy: ProxyProcess, path: str, token: str | None = TOKEN, body: bytes = b"") -> tuple[int, Any]:
    req = urllib.request.Request(proxy.admin_url + path, method="POST", data=body)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Load:
    """psycopg writers in explicit transactions, autocommit readers and asyncpg writers in transactions;
    every acknowledged commit and every error is recorded."""

    def __init__(self, dsn: str, psycopg_writers: int, readers: int, asyncpg_writers: int):
        self.dsn = dsn
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.reads = 0
        self.threads = [threading.Thread(target=self._writer, args=(f"p{i}",), daemon=True)
                        for i in range(psycopg_writers)]
        self.threads += [threading.Thread(target=self._reader, daemon=True) for _ in range(readers)]
        self.threads.append(threading.Thread(target=self._asyncpg, args=(asyncpg_writers,), daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _err(self, who: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{time.monotonic():.2f} {who}: {getattr(exc, 'sqlstate', None)} {exc!r}")

    def _writer(self, name: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO ledger(worker, seq) VALUES (%s, %s)", (name, i))
                        conn.execute("SELECT count(*) FROM ledger WHERE worker = %s", (name,)).fetchone()
                        conn.execute("UPDATE totals SET n = n + 1 WHERE id = 1")
                    with self.lock:
                        self.acked.append((name, i))
                except psycopg.Error as exc:
                    self._err(name, exc)
                    if conn.closed:
                        return

    def _reader(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    conn.execute("SELECT count(*) FROM ledger").fetchone()
                    with self.lock:
                        self.reads += 1
                except psycopg.Error as exc:
                    self._err("reader", exc)
                    if conn.closed:
                        return

    def _asyncpg(self, n: int) -> None:
        async def one(name: str) -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    try:
                        async with conn.transaction():
                            await conn.execute("INSERT INTO ledger(worker, seq) VALUES ($1, $2)", name, i)
                            await conn.fetchval("SELECT count(*) FROM ledger WHERE worker = $1", name)
                        with self.lock:
                            self.acked.append((name, i))
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                        self._err(name, exc)
                        if conn.is_closed():
                            return
            finally:
                await conn.close()

        async def main() -> None:
            await asyncio.gather(*(one(f"a{i}") for i in range(n)))

        asyncio.run(main())


def _acked_present(pg: PgCluster, node: Any, acked: list[tuple[str, int]]) -> list[tuple[str, int]]:
    rows = pg.sql(node, "SELECT worker || ':' || seq FROM ledger", db="app").split("\n")
    have = {r for r in rows if r}
    return [a for a in acked if f"{a[0]}:{a[1]}" not in have]


def test_switchover_under_load_gives_clients_a_pause_not_an_error(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "admin": {"users": ["app"], "token": TOKEN},
                           "pool": {"size": 20}}, cluster=pg)
    dsn = proxy.dsn()
    old, new = pg.primary, pg.standbys[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, worker text, seq int, UNIQUE (worker, seq))")
        conn.execute("CREATE TABLE totals (id int PRIMARY KEY, n bigint)")
        conn.execute("INSERT INTO totals VALUES (1, 0)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")

    # Refusals answer exactly and change nothing.
    status, body = _post(proxy, "/api/switchover", token=None)
    assert status == 401, body
    status, body = _post(proxy, "/api/switchover", body=b'{"to": "nosuch"}')
    assert status == 404 and "nosuch" in body["error"], body
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        try:
            admin.execute("SWITCHOVER TO primary")
            raise AssertionError("a switchover to the primary itself was accepted")
        except psycopg.Error as exc:
            assert exc.sqlstate == "55000", exc

    load = Load(dsn, psycopg_writers=10, readers=2, asyncpg_writers=4)
    load.start()
    _wait(lambda: len(load.acked) > 100 and load.reads > 20, 20, "load flowing")

    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        t0 = time.monotonic()
        cur = admin.execute("SWITCHOVER TO standby1")
        took = time.monotonic() - t0
        assert cur.description is not None
        cols = [d.name for d in cur.description]
        row = cur.fetchone()
    assert cols == ["old_primary", "new_primary", "pause_ms", "replayed"]
    assert row is not None
    assert row[0] == "primary" and row[1] == "standby1", row
    pause_ms = int(row[2])
    acked_at_switch = len(load.acked)
    _wait(lambda: len(load.acked) > acked_at_switch + 100, 20, "writes flowing after the switchover")
    load.finish()
    print(f"\nSWITCHOVER under load: pause {pause_ms} ms (command took {took:.2f}s), "
          f"{len(load.acked)} commits acknowledged, {load.reads} reads, {len(load.errors)} errors")

    assert load.errors == [], "\n".join(load.errors[:20]) + "\n" + proxy.output()[-3000:]
    assert pause_ms < 2000
    assert 0 < (_metric(proxy, "heliosproxy_switchover_pause_seconds") or 0) < 2.0
    assert _metric(proxy, "heliosproxy_switchovers_total", result="ok") == 1.0

    # The standby was promoted; the old primary (still a running primary) is fenced: disabled, never used.
    assert pg.sql(new, "SELECT pg_is_in_recovery()") == "f"
    nodes = _nodes(proxy)
    assert nodes["standby1"]["write_target"] is True
    assert nodes["primary"]["disabled"] is True and nodes["primary"]["write_target"] is False
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(5):
            assert conn.execute("SELECT inet_server_port()").fetchone() == (new.port,)
            assert conn.execute("INSERT INTO ledger(worker, seq) VALUES ('check', %s) RETURNING inet_server_port()",
                                (i,)).fetchone() == (new.port,)

    # 0 acknowledged commits lost: every one is on the new primary.
    missing = _acked_present(pg, new, load.acked)
    assert missing == [], f"{len(missing)} acknowledged commits missing on the new primary: {missing[:10]}"
    # Nothing was written to the old primary after the switchover.
    old_count = int(pg.sql(old, "SELECT count(*) FROM ledger", db="app"))
    new_count = int(pg.sql(new, "SELECT count(*) FROM ledger", db="app"))
    assert old_count < new_count

    # A second switchover has no standby left to go to: refused exactly.
    status, body = _post(proxy, "/api/switchover")
    assert status == 409 and "standby" in body["error"], body


def test_switchover_replays_a_transaction_still_open_after_the_drain(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """failover.switchover_drain ends with a transaction still open: with failover.replay it moves to the new
    primary (the result row counts it), without an error; an autocommit client notices nothing either."""
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "admin": {"users": ["app"], "token": TOKEN},
                           "failover": {"replay": True, "switchover_drain": "300ms"}}, cluster=pg)
    dsn = proxy.dsn()
    new = pg.standbys[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kv VALUES (1, 10)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")

    open_tx = psycopg.connect(dsn, autocommit=True)
    open_tx.execute("BEGIN")
    assert open_tx.execute("SELECT v FROM kv WHERE k = 1").fetchone() == (10,)
    open_tx.execute("UPDATE kv SET v = v + 1 WHERE k = 1")
    idle = psycopg.connect(dsn, autocommit=True)
    assert idle.execute("SELECT 1").fetchone() == (1,)

    _status, body = _post(proxy, "/api/switchover", body=b'{"to": "standby1"}')
    assert body.get("new_primary") == "standby1", body
    print(f"\nSWITCHOVER with an open transaction: {body}")
    assert body["replayed"] == 1 and body["pause_ms"] < 2000, body

    # The open transaction goes on on the new primary and commits there once.
    assert open_tx.execute("SELECT v, inet_server_port() FROM kv WHERE k = 1").fetchone() == (11, new.port)
    open_tx.execute("COMMIT")
    assert pg.sql(new, "SELECT v FROM kv WHERE k = 1", db="app") == "11"
    assert idle.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    open_tx.close()
    idle.close()
