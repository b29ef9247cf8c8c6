"""Result cache through a running proxy: byte-identical hits, exact invalidation (proxy and WAL), hints, rules, TTL."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from tests.helpers.extmsg import bind, execute, parse
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, msg

pytestmark = pytest.mark.timeout(120)

Conn = psycopg.Connection[tuple[Any, ...]]


def _cache(rules: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"enabled": True, "rules": rules if rules is not None else [{"tables": ["ct_items"]}]}
    cfg.update(extra)
    return {"cache": cfg, "admin": {"users": ["app"]}}


@pytest.fixture(scope="module")
def items(cluster: PgCluster) -> PgCluster:
    with psycopg.connect(cluster.dsn(cluster.primary, dbname="app"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ct_items, ct_other, ct_big")
        conn.execute("CREATE TABLE ct_items (id int PRIMARY KEY, name text, price numeric, data bytea,"
                     " at timestamptz, f float8)")
        conn.execute("INSERT INTO ct_items SELECT g, 'item ' || g, g * 1.5, decode(md5(g::text), 'hex'),"
                     " '2024-01-02 03:04:05+00'::timestamptz + g * interval '1 hour', g / 3.0"
                     " FROM generate_series(1, 50) g")
        conn.execute("CREATE TABLE ct_other (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO ct_other SELECT g, g FROM generate_series(1, 10) g")
        conn.execute("CREATE TABLE ct_big (id int, pad text)")
        conn.execute("INSERT INTO ct_big SELECT g, repeat('x', 1000) FROM generate_series(1, 300) g")
    cluster.wait_replay()
    return cluster


def _connect(proxy: ProxyProcess, **kw: Any) -> Conn:
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10, **kw)


def cache_stats(proxy: ProxyProcess) -> dict[str, Any]:
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        cur = admin.execute("SHOW CACHE")
        names = [d.name for d in cur.description or ()]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def _n(stats: dict[str, Any], key: str) -> int:
    return int(stats[key])


def _raw(proxy_or_node: tuple[str, int], user: str = "app", password: str = "apppass") -> RawPg:
    raw = RawPg(*proxy_or_node, timeout=30.0)  # a loaded machine may take seconds
    raw.login(user, password, "app")
    return raw


# ---------------------------------------------------------------------------------- byte identity


def test_simple_query_hit_is_byte_identical_to_the_server(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache())
    sql = "SELECT id, name, price, data, at, f FROM ct_items ORDER BY id"
    p = items.primary
    with _raw(("127.0.0.1", p.port)) as direct, _raw((proxy.host, proxy.port)) as via:
        server = direct.query(sql)
        first = via.query(sql)  # a miss: the server's answer, relayed (and stored)
        second = via.query(sql)  # a hit
    assert [k for k, _ in server][:2] == ["T", "D"] and server[-1][0] == "Z"
    assert first == server
    assert second == server
    stats = cache_stats(proxy)
    assert _n(stats, "hits") == 1 and _n(stats, "misses") == 1 and _n(stats, "stores") == 1
    assert _n(stats, "entries") == 1 and _n(stats, "bytes") > len(b"".join(b for _, b in server))


def _extended(raw: RawPg, sql: str, params: tuple[str, ...], result_format: int, name: str = "") -> list[
        tuple[str, bytes]]:
    b = bind(name, params)
    b = b[:-2] + struct.pack("!HH", 1, result_format)  # one result format code for every column
    b = msg(b"B", b[5:])
    raw.send(parse(name, sql) + b + msg(b"D", b"P\x00") + execute() + msg(b"S"))
    return raw.read_until_ready()


@pytest.mark.parametrize("fmt", [0, 1], ids=["text", "binary"])
def test_extended_protocol_hit_is_byte_identical(items: PgCluster, proxy_factory: ProxyFactory, fmt: int) -> None:
    proxy = proxy_factory(_cache())
    sql = "SELECT id, name, price, data, at, f FROM ct_items WHERE id <= $1 ORDER BY id"
    p = items.primary
    with _raw(("127.0.0.1", p.port)) as direct, _raw((proxy.host, proxy.port)) as via:
        server = _extended(direct, sql, ("20",), fmt)
        first = _extended(via, sql, ("20",), fmt)
        second = _extended(via, sql, ("20",), fmt)
        other = _extended(via, sql, ("3",), fmt)  # other parameters: another key
    assert [k for k, _ in server][:3] == ["1", "2", "T"]
    assert first == server and second == server
    assert len([k for k, _ in other if k == "D"]) == 3
    stats = cache_stats(proxy)
    assert _n(stats, "hits") == 1 and _n(stats, "misses") == 2


def test_psycopg_binary_and_asyncpg_get_the_servers_rows(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache())
    sql = "SELECT id, name, price, data, at, f FROM ct_items WHERE id > %s ORDER BY id"
    with psycopg.connect(items.dsn(items.primary, dbname="app"), autocommit=True) as direct:
        want = direct.cursor(binary=True).execute(sql, (5,)).fetchall()
    with _connect(proxy) as conn:
        got = [conn.cursor(binary=True).execute(sql, (5,)).fetchall() for _ in range(3)]
        text = [conn.execute(sql, (5,)).fetchall() for _ in range(2)]
    assert got == [want] * 3
    assert text == [want] * 2
    s1 = cache_stats(proxy)
    assert _n(s1, "hits") == 3  # binary: 2 hits; text (another result format, another key): 1

    async def with_asyncpg() -> list[list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=100)
        try:
            q = "SELECT id, name, price, data, at, f FROM ct_items WHERE id > $1 ORDER BY id"
            return [[tuple(r) for r in await conn.fetch(q, 5)] for _ in range(3)]
        finally:
            await conn.close()

    rows = asyncio.run(with_asyncpg())
    assert rows == [want] * 3
    s2 = cache_stats(proxy)
    assert _n(s2, "hits") - _n(s1, "hits") >= 2


def test_settings_and_role_are_in_the_key(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    items.sql(items.primary, "DROP SCHEMA IF EXISTS ct_a CASCADE; DROP SCHEMA IF EXISTS ct_b CASCADE;"
              " CREATE SCHEMA ct_a AUTHORIZATION app; CREATE SCHEMA ct_b AUTHORIZATION app;"
              " CREATE TABLE ct_a.ct_sp AS SELECT 'in a'::text AS v;"
              " CREATE TABLE ct_b.ct_sp AS SELECT 'in b'::text AS v;"
              " ALTER TABLE ct_a.ct_sp OWNER TO app; ALTER TABLE ct_b.ct_sp OWNER TO app;"
              " DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ct_role') THEN"
              " CREATE ROLE ct_role; END IF; END$$; GRANT ct_role TO app;", db="app")
    items.wait_replay()
    proxy = proxy_factory(_cache(rules=[{"tables": ["ct_items", "ct_sp"]}]))
    at = "SELECT at, at::text FROM ct_items WHERE id = 1"
    with _connect(proxy) as utc, _connect(proxy) as tokyo:
        utc.execute("SET TimeZone = 'UTC'")
        tokyo.execute("SET TimeZone = 'Asia/Tokyo'")
        u = [utc.execute(at).fetchone() for _ in range(2)]
        t = [tokyo.execute(at).fetchone() for _ in range(2)]
        assert u[0] == u[1] and t[0] == t[1]
        assert u[0] is not None and t[0] is not None
        assert u[0][1].endswith("+00") and t[0][1].endswith("+09")
        text = "SELECT at::text FROM ct_items WHERE id = 1"
        iso = [utc.execute(text).fetchone() for _ in range(2)]
        utc.execute("SET DateStyle = 'SQL, DMY'")
        row = utc.execute(text).fetchone()
        assert iso[0] == iso[1] and row is not None and "/" in row[0]  # not the ISO answer cached before
        utc.execute("SET DateStyle = 'ISO, MDY'")
        sp = "SELECT v FROM ct_sp"
        utc.execute("SET search_path = ct_a")
        tokyo.execute("SET search_path = ct_b")
        for _ in range(2):
            assert utc.execute(sp).fetchone() == ("in a",)
            assert tokyo.execute(sp).fetchone() == ("in b",)
        who = "/*helios:cache=30s*/ SELECT current_user"
        for _ in range(2):
            assert utc.execute(who).fetchone() == ("app",)
        tokyo.execute("SET ROLE ct_role")
        for _ in range(2):
            assert tokyo.execute(who).fetchone() == ("ct_role",)
    stats = cache_stats(proxy)
    assert _n(stats, "hits") == 7, repr(stats)  # the second run of each (session, statement)


# ---------------------------------------------------------------------------------- invalidation


@pytest.mark.parametrize("workers", [1, 2])
def test_write_then_read_through_the_proxy_is_never_stale(
    items: PgCluster, proxy_factory: ProxyFactory, workers: int
) -> None:
    proxy = proxy_factory(_cache(rules=[{"tables": ["ct_other"]}]), workers=workers)
    stale = 0
    with _connect(proxy) as writer:
        readers = [_connect(proxy) for _ in range(4)]
        opened = readers
        if workers > 1:  # make sure readers sit on the other worker too (its id is in the proxy's PIDs)
            worker_of = lambda c: (c.info.backend_pid >> 24) & 0x3F  # noqa: E731
            deadline = time.monotonic() + 30
            while {worker_of(r) for r in readers} != {0, 1} or worker_of(writer) not in (0, 1):
                assert time.monotonic() < deadline, "all connections landed on one worker"
                readers.append(_connect(proxy))
            opened = list(readers)
            readers = [r for r in readers if worker_of(r) != worker_of(writer)][:2] + [
                r for r in readers if worker_of(r) == worker_of(writer)][:2]
        try:
            for i in range(200):
                value = 1000 + i
                writer.execute("UPDATE ct_other SET v = %s WHERE id = 1", (value,))
                r = readers[i % len(readers)]
                row = r.execute("SELECT v FROM ct_other WHERE id = 1").fetchone()
                if row is None or row[0] != value:
                    stale += 1
                r.execute("SELECT v FROM ct_other WHERE id = 1")  # a hit, if the read above was stored
        finally:
            for r in opened:
                r.close()
    assert stale == 0
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        cur = admin.execute("SHOW CACHE")
        names = [d.name for d in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert len(rows) == workers  # multi-worker: one row per worker, with a worker column
    assert sum(_n(r, "hits") for r in rows) >= 150
    assert sum(_n(r, "invalidations") for r in rows) >= 150
    if workers > 1:
        assert sorted(int(r["worker"]) for r in rows) == [0, 1]
        assert all(_n(r, "hits") > 0 for r in rows)


def test_write_in_a_transaction_drops_again_at_commit(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache(rules=[{"tables": ["ct_other"]}]))
    with _connect(proxy) as writer, _connect(proxy) as reader:
        q = "SELECT v FROM ct_other WHERE id = 2"
        writer.execute("UPDATE ct_other SET v = 2 WHERE id = 2")
        assert reader.execute(q).fetchone() == (2,)
        with writer.transaction():
            writer.execute("UPDATE ct_other SET v = 20 WHERE id = 2")
            assert reader.execute(q).fetchone() == (2,)  # not committed yet: re-read and stored again
            assert reader.execute(q).fetchone() == (2,)
        assert reader.execute(q).fetchone() == (20,)  # the COMMIT dropped it


def test_no_caching_inside_transactions_or_with_time_functions(
    items: PgCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(_cache())
    with _connect(proxy) as conn:
        with conn.transaction():
            for _ in range(3):
                conn.execute("SELECT count(*) FROM ct_items").fetchone()
        for sql in ("SELECT now(), count(*) FROM ct_items", "SELECT count(*) FROM ct_items WHERE at < now()",
                    "SELECT current_timestamp, id FROM ct_items WHERE id = 1",
                    "SELECT random(), id FROM ct_items WHERE id = 1",
                    "/*helios:cache=30s*/ SELECT clock_timestamp()"):
            first = conn.execute(sql).fetchall()
            second = conn.execute(sql).fetchall()
            if "now()" in sql and "count" in sql and "<" not in sql:
                assert first[0][0] != second[0][0]  # a new now() each time: answered by the server
    stats = cache_stats(proxy)
    assert _n(stats, "hits") == 0 and _n(stats, "stores") == 0


def test_hints_rules_and_ttl(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache(rules=[{"tables": ["public.ct_items"], "ttl": "1s"}], default_ttl="60s"))
    # (not prepared after 5 runs: a prepared statement's Bind/Execute is another request, another key)
    with _connect(proxy, prepare_threshold=None) as conn:
        def hits_after(sql: str, times: int = 2) -> int:
            before = _n(cache_stats(proxy), "hits")
            for _ in range(times):
                conn.execute(sql).fetchall()
            return _n(cache_stats(proxy), "hits") - before

        assert hits_after("SELECT v FROM ct_other WHERE id = 3") == 0  # no rule, no hint
        assert hits_after("/*helios:cache=30s*/ SELECT v FROM ct_other WHERE id = 3") == 1
        assert hits_after("SELECT id FROM public.ct_items WHERE id = 7") == 1  # the rule (as written)
        assert hits_after("SELECT id FROM ct_items WHERE id = 7") == 0  # unqualified: not what the rule names
        assert hits_after("/*helios:cache=skip*/ SELECT id FROM public.ct_items WHERE id = 7") == 0
        assert hits_after("SELECT id FROM public.ct_items JOIN ct_other USING (id) WHERE id = 1") == 0
        # The rule's 1 s TTL: the entry expires.
        sql = "SELECT name FROM public.ct_items WHERE id = 8"
        assert hits_after(sql) == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if hits_after(sql, 1) == 0:
                break
        else:
            pytest.fail("the 1s rule TTL never expired the entry")
        assert _n(cache_stats(proxy), "expired") >= 1


def test_eviction_and_max_result(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache(rules=[{"tables": ["ct_big"]}], max_memory="64KiB", max_result="40KiB"))
    with _connect(proxy) as conn:
        for i in range(1, 20):  # ~30 KB answers: at most two fit in 64 KiB
            conn.execute("SELECT * FROM ct_big WHERE id BETWEEN %s AND %s", (i * 10, i * 10 + 29)).fetchall()
        conn.execute("SELECT * FROM ct_big").fetchall()  # ~300 KB: over max_result
        conn.execute("SELECT * FROM ct_big").fetchall()
    stats = cache_stats(proxy)
    assert _n(stats, "evictions") >= 10
    assert _n(stats, "bytes") <= 64 * 1024
    assert _n(stats, "too_large") >= 2 and _n(stats, "hits") == 0


def test_cache_clear_and_metrics(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_cache(rules=[{"tables": ["ct_items", "ct_other"]}]))
    qs = ["SELECT id FROM ct_items WHERE id = 9", "SELECT v FROM ct_other WHERE id = 9"]
    with _connect(proxy) as conn:
        def run() -> None:
            for q in qs:
                conn.execute(q).fetchall()

        run()
        run()
        assert _n(cache_stats(proxy), "hits") == 2
        with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
            admin.execute("CACHE CLEAR ct_items")
        run()
        assert _n(cache_stats(proxy), "hits") == 3  # ct_other's entry survived
        with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
            admin.execute("CACHE CLEAR")
        run()
        assert _n(cache_stats(proxy), "hits") == 3
    import urllib.request

    body = urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5).read().decode()
    assert "heliosproxy_cache_hits_total 3.0" in body
    for name in ("cache_misses_total", "cache_evictions_total", "cache_invalidations_total", "cache_bytes"):
        assert "heliosproxy_" + name in body


def test_off_by_default(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"users": ["app"]}})
    with _connect(proxy) as conn:
        for _ in range(3):
            conn.execute("/*helios:cache=30s*/ SELECT count(*) FROM ct_items").fetchall()
    stats = cache_stats(proxy)
    assert stats["enabled"] == "off" and _n(stats, "hits") == 0


# ---------------------------------------------------------------------------------- invalidation: wal


def _poll(fn: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if fn():
            return time.monotonic() - start
        time.sleep(0.005)
    pytest.fail(f"condition not met within {timeout}s")


def test_wal_invalidation_sees_direct_writes(cluster_factory: Callable[..., PgCluster],
                                             proxy_factory: ProxyFactory) -> None:
    pg = cluster_factory(standbys=0, settings={"wal_level": "logical", "synchronous_commit": "on"})
    pw = "rep-" + uuid.uuid4().hex[:8]
    pg.sql(pg.primary, f"CREATE ROLE cache_rep LOGIN REPLICATION PASSWORD '{pw}'")
    direct_dsn = pg.dsn(pg.primary, dbname="app")
    with psycopg.connect(direct_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE wt (id int PRIMARY KEY, v int)")
        c.execute("INSERT INTO wt VALUES (1, 0)")
    proxy = proxy_factory(_cache(rules=[{"tables": ["wt"]}], invalidation="wal",
                                 wal_user={"name": "cache_rep", "password": pw}, wal_database="app"),
                          cluster=pg)
    _poll(lambda: cache_stats(proxy)["wal_state"] == "streaming", 15)
    delays: list[float] = []
    # (never prepared: psycopg would switch to a prepared statement after 5 runs, another request and key)
    with _connect(proxy, prepare_threshold=None) as conn, psycopg.connect(direct_dsn, autocommit=True) as direct:
        q = "SELECT v FROM wt WHERE id = 1"
        for i in range(1, 21):
            assert conn.execute(q).fetchone() == (i - 1,)
            before = _n(cache_stats(proxy), "hits")
            assert conn.execute(q).fetchone() == (i - 1,)
            assert _n(cache_stats(proxy), "hits") == before + 1  # cached before the direct write
            direct.execute("UPDATE wt SET v = %s WHERE id = 1", (i,))
            delays.append(_poll(lambda i=i: conn.execute(q).fetchone() == (i,), 5.0))  # type: ignore[misc]
    delays.sort()
    print(f"\nWAL invalidation delay over {len(delays)} direct writes: median {delays[len(delays) // 2] * 1000:.1f} ms,"
          f" max {delays[-1] * 1000:.1f} ms")
    assert delays[-1] < 1.0  # (a few ms measured; generous for a loaded machine)
    assert int(cache_stats(proxy)["wal_commits"]) >= 20


def test_session_pooling(items: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Session mode: simple queries and Bind/Execute of prepared statements are answered from the cache; a Parse
    always reaches the server (it keeps the statement)."""
    proxy = proxy_factory({**_cache(), "pool": {"mode": "session"}})
    q = "SELECT id, name FROM ct_items WHERE id < 4 ORDER BY id"
    with _connect(proxy) as conn:
        rows = [conn.execute(q).fetchall() for _ in range(3)]  # no parameters: psycopg sends a simple Query
    assert rows[0] == rows[1] == rows[2] == [(1, "item 1"), (2, "item 2"), (3, "item 3")]
    assert _n(cache_stats(proxy), "hits") == 2

    async def with_asyncpg() -> list[list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(proxy.dsn())
        try:
            stmt = await conn.prepare("SELECT id, name FROM ct_items WHERE id < $1 ORDER BY id")
            return [[tuple(r) for r in await stmt.fetch(4)] for _ in range(3)]
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == [rows[0]] * 3
    assert _n(cache_stats(proxy), "hits") >= 4
