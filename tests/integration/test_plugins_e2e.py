"""WASM plugins through the running proxy, real clients: block, rewrite, cached, route, observe, sandbox, signing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.wat_e2e.kit import (
    admin_plugins,
    build_examples,
    install_example,
    install_wat,
    plugin_config,
    plugin_log_lines,
    proxy_rss_kib,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

BLOCK_DROP = "block_ddl: DROP statements are not allowed"


@pytest.fixture(scope="module", autouse=True)
def tables(cluster: PgCluster) -> Iterator[None]:
    """plug_orders (50 rows, add_limit's table), plug_other (50 rows), plug_victim (for DROP/DELETE)."""
    build_examples()
    p = cluster.primary
    cluster.sql(p, """
        DROP TABLE IF EXISTS plug_orders, plug_other, plug_victim;
        CREATE TABLE plug_orders (id int PRIMARY KEY, note text);
        INSERT INTO plug_orders SELECT g, 'o' || g FROM generate_series(1, 50) g;
        CREATE TABLE plug_other (id int PRIMARY KEY);
        INSERT INTO plug_other SELECT g FROM generate_series(1, 50) g;
        CREATE TABLE plug_victim (id int PRIMARY KEY);
        INSERT INTO plug_victim SELECT g FROM generate_series(1, 10) g;
    """, user="app", db="app")
    cluster.wait_replay()
    yield
    cluster.sql(p, "DROP TABLE IF EXISTS plug_orders, plug_other, plug_victim", user="app", db="app")


def connect(proxy: ProxyProcess, **kw: Any) -> psycopg.Connection[Any]:
    """psycopg to the proxy, autocommit; keyword arguments are libpq connection parameters."""
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10, **kw)


async def aconnect(proxy: ProxyProcess, **kw: Any) -> asyncpg.Connection:
    return await asyncpg.connect(proxy.dsn(**kw), timeout=10)


def psql(proxy: ProxyProcess, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` through psql (simple protocol), verbose errors (they carry the SQLSTATE)."""
    return subprocess.run(
        ["psql", proxy.dsn(), "-X", "-v", "VERBOSITY=verbose", "-At", "-f", "-"],
        input=script, capture_output=True, text=True, timeout=30,
    )


def victim_count(cluster: PgCluster) -> int:
    return int(cluster.sql(cluster.primary, "SELECT count(*) FROM plug_victim", user="app", db="app").strip())


# ================================================================== block_ddl


@pytest.fixture
def block_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    install_example(tmp_path / "plugins", "block_ddl")
    return proxy_factory(plugin_config(tmp_path / "plugins"))


def test_block_ddl_psql(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    res = psql(block_proxy, "DROP TABLE plug_victim;\nSELECT 'still here';\n")
    assert f"ERROR:  42000: {BLOCK_DROP}" in res.stderr, res.stderr
    assert res.stdout.strip() == "still here", res.stdout + res.stderr
    assert victim_count(cluster) == 10


def test_block_ddl_simple_protocol(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    with connect(block_proxy) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DROP TABLE plug_victim")
        assert exc.value.sqlstate == "42000"
        assert exc.value.diag.severity == "ERROR"
        assert exc.value.diag.message_primary == BLOCK_DROP
        # the session goes on
        assert conn.execute("SELECT count(*) FROM plug_victim").fetchone() == (10,)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("TRUNCATE plug_victim")
        assert exc.value.sqlstate == "42000"
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DELETE FROM plug_victim")
        assert exc.value.sqlstate == "42000"
        assert "DELETE" in (exc.value.diag.message_primary or "")
        cur = conn.execute("DELETE FROM plug_victim WHERE id = 10")
        assert cur.rowcount == 1
        cur = conn.execute("UPDATE plug_victim SET id = id WHERE id = 1")
        assert cur.rowcount == 1
    assert victim_count(cluster) == 9
    cluster.sql(cluster.primary, "INSERT INTO plug_victim VALUES (10)", user="app", db="app")


def test_block_ddl_inside_transaction_fails_it(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    with connect(block_proxy) as conn:
        conn.execute("BEGIN")
        conn.execute("DELETE FROM plug_victim WHERE id = 1")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DROP TABLE plug_victim")
        assert exc.value.sqlstate == "42000"
        # like a server: the transaction is aborted, and COMMIT rolls it back
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT 1")
        assert exc.value.sqlstate == "25P02"
        conn.execute("COMMIT")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert victim_count(cluster) == 10


def test_block_ddl_extended_psycopg(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    with connect(block_proxy) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DROP TABLE plug_victim", prepare=True)
        assert exc.value.sqlstate == "42000"
        assert exc.value.diag.severity == "ERROR"
        assert exc.value.diag.message_primary == BLOCK_DROP
        assert conn.execute("SELECT count(*) FROM plug_victim WHERE id > %s", [0]).fetchone() == (10,)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DELETE FROM plug_victim /* %s */", [1])
        assert exc.value.sqlstate == "42000"
        cur = conn.execute("DELETE FROM plug_victim WHERE id = %s", [10])
        assert cur.rowcount == 1
        # a prepared statement reused many times: still answered correctly each time
        for i in range(3):
            assert conn.execute("SELECT %s::int + 1", [i], prepare=True).fetchone() == (i + 1,)
    assert victim_count(cluster) == 9
    cluster.sql(cluster.primary, "INSERT INTO plug_victim VALUES (10)", user="app", db="app")


def test_block_ddl_asyncpg(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    async def run() -> None:
        conn = await aconnect(block_proxy)
        try:
            with pytest.raises(asyncpg.PostgresError) as exc:
                await conn.fetch("DROP TABLE plug_victim")
            assert exc.value.sqlstate == "42000"
            assert exc.value.severity == "ERROR"
            assert str(exc.value) == BLOCK_DROP
            assert await conn.fetchval("SELECT count(*) FROM plug_victim WHERE id > $1", 0) == 10
            with pytest.raises(asyncpg.PostgresError) as exc:
                await conn.fetch("DELETE FROM plug_victim")
            assert exc.value.sqlstate == "42000"
            # asyncpg's execute() without arguments is the simple protocol
            with pytest.raises(asyncpg.PostgresError) as exc:
                await conn.execute("TRUNCATE plug_victim")
            assert exc.value.sqlstate == "42000"
            assert await conn.fetchval("SELECT count(*) FROM plug_victim") == 10
            status = await conn.execute("DELETE FROM plug_victim WHERE id = $1", 10)
            assert status == "DELETE 1"
        finally:
            await conn.close()

    asyncio.run(run())
    assert victim_count(cluster) == 9
    cluster.sql(cluster.primary, "INSERT INTO plug_victim VALUES (10)", user="app", db="app")


# ================================================================== add_limit (rewrite)


def test_add_limit_rewrites_unbounded_selects(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    install_example(tmp_path / "p", "add_limit", config={"tables": ["plug_orders"], "limit": 7})
    proxy = proxy_factory(plugin_config(tmp_path / "p"))
    with connect(proxy) as conn:
        assert len(conn.execute("SELECT * FROM plug_orders").fetchall()) == 7
        assert len(conn.execute("SELECT id FROM plug_orders ORDER BY id;").fetchall()) == 7
        assert len(conn.execute("SELECT * FROM plug_orders LIMIT 20").fetchall()) == 20
        assert len(conn.execute("SELECT * FROM plug_other").fetchall()) == 50
        # extended protocol
        rows = conn.execute("SELECT id FROM plug_orders WHERE id > %s ORDER BY id", [10]).fetchall()
        assert rows == [(i,) for i in range(11, 18)]
        rows = conn.execute("SELECT id FROM plug_orders ORDER BY id", prepare=True).fetchall()
        assert len(rows) == 7
        assert len(conn.execute("SELECT * FROM plug_other WHERE id > %s", [0]).fetchall()) == 50
    res = psql(proxy, "SELECT count(*) FROM (SELECT 1) s;\nSELECT id FROM plug_orders ORDER BY id;\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "1", "2", "3", "4", "5", "6", "7"]

    async def run() -> None:
        conn = await aconnect(proxy)
        try:
            assert len(await conn.fetch("SELECT * FROM plug_orders")) == 7
            assert len(await conn.fetch("SELECT * FROM plug_orders WHERE id <= $1", 30)) == 7
            assert len(await conn.fetch("SELECT * FROM plug_orders LIMIT $1", 12)) == 12
        finally:
            await conn.close()

    asyncio.run(run())


# ================================================================== cache_answer (cached)


@pytest.fixture
def cache_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    install_example(tmp_path / "p", "cache_answer")
    return proxy_factory(plugin_config(tmp_path / "p"))


def test_cache_answer_simple_protocol(cache_proxy: ProxyProcess) -> None:
    with connect(cache_proxy) as conn:
        # a table that does not exist: the answer cannot come from a server
        cur = conn.execute("SELECT /*cache:hello*/ * FROM no_such_table")
        assert cur.description is not None
        assert [d.name for d in cur.description] == ["greeting"]
        assert cur.description[0].type_code == 25  # text
        assert cur.fetchall() == [("hello from wasm",)]
        assert cur.statusmessage == "SELECT 1"
        assert conn.execute("SELECT 2").fetchone() == (2,)
    res = psql(cache_proxy, "SELECT /*cache:hello*/ 42;\nSELECT 43;\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["hello from wasm", "43"]


def test_cache_answer_extended_unnamed(cache_proxy: ProxyProcess) -> None:
    with connect(cache_proxy) as conn:
        cur = conn.execute("SELECT /*cache:hello*/ %s::int FROM no_such_table", [5])
        assert cur.description is not None
        assert [d.name for d in cur.description] == ["greeting"]
        assert cur.fetchall() == [("hello from wasm",)]
        assert cur.statusmessage == "SELECT 1"
        assert conn.execute("SELECT %s::int", [3]).fetchone() == (3,)


def test_cache_answer_extended_prepared_psycopg(cache_proxy: ProxyProcess) -> None:
    with connect(cache_proxy) as conn:
        for _ in range(3):  # Parse once (named statement), then Bind/Execute on it
            cur = conn.execute("SELECT /*cache:hello*/ 1 FROM no_such_table", prepare=True)
            assert cur.fetchall() == [("hello from wasm",)]
            assert cur.statusmessage == "SELECT 1"
        assert conn.execute("SELECT %s::int", [3]).fetchone() == (3,)


def test_cache_answer_asyncpg(cache_proxy: ProxyProcess) -> None:
    async def run() -> None:
        conn = await aconnect(cache_proxy)
        try:
            # Answered from the plugin without a server: the proxy declares parameters as text.
            rows = await conn.fetch("SELECT /*cache:hello*/ * FROM no_such_table WHERE x = $1", "1")
            assert [tuple(r) for r in rows] == [("hello from wasm",)]
            assert list(rows[0].keys()) == ["greeting"]
            rows = await conn.fetch("SELECT /*cache:hello*/ * FROM no_such_table")
            assert [tuple(r) for r in rows] == [("hello from wasm",)]
            assert await conn.fetchval("SELECT 7") == 7
        finally:
            await conn.close()

    asyncio.run(run())


# ================================================================== tenant_router (route)

TENANTS = {
    "acme": {"branch": "acme"},
    "globex": {"node": "standby2"},
    "initech": {"route": "primary"},
    "umbrella": {"route": "standby"},
}


@pytest.fixture
def router_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    install_example(tmp_path / "p", "tenant_router", config={"tenants": TENANTS})
    return proxy_factory(
        plugin_config(tmp_path / "p"),
        branches={"acme": {"node": "primary", "database": "app_branch"}},
    )


WHERE = "SELECT inet_server_port(), current_database()"


def test_tenant_router_by_attribute_simple(router_proxy: ProxyProcess, cluster: PgCluster) -> None:
    primary = cluster.primary.port
    standbys = {n.port for n in cluster.standbys}
    with connect(router_proxy) as conn:
        port, db = conn.execute(WHERE).fetchone()  # type: ignore[misc]
        assert port in standbys and db == "app"  # no tenant: the default read/write split
        conn.execute("SET helios.tenant = 'globex'")
        for _ in range(3):
            assert conn.execute(WHERE).fetchone() == (cluster.node("standby2").port, "app")
        conn.execute("SET helios.tenant = 'acme'")
        assert conn.execute(WHERE).fetchone() == (primary, "app_branch")
        conn.execute("SET helios.tenant = 'initech'")
        assert conn.execute(WHERE).fetchone() == (primary, "app")
        conn.execute("SET helios.tenant = 'umbrella'")
        port, db = conn.execute(WHERE).fetchone()  # type: ignore[misc]
        assert port in standbys and db == "app"
        conn.execute("SET helios.tenant = 'nobody'")
        port, db = conn.execute(WHERE).fetchone()  # type: ignore[misc]
        assert port in standbys and db == "app"
        conn.execute("RESET helios.tenant")
        port, db = conn.execute(WHERE).fetchone()  # type: ignore[misc]
        assert db == "app"


def test_tenant_router_by_comment_and_extended(router_proxy: ProxyProcess, cluster: PgCluster) -> None:
    primary = cluster.primary.port
    with connect(router_proxy) as conn:
        assert conn.execute("/*tenant=acme*/ " + WHERE).fetchone() == (primary, "app_branch")
        assert conn.execute(WHERE + " /*tenant=globex*/").fetchone() == (cluster.node("standby2").port, "app")
        # extended protocol (psycopg parameters)
        q = "/*tenant=acme*/ SELECT inet_server_port(), current_database(), %s::int"
        assert conn.execute(q, [1]).fetchone() == (primary, "app_branch", 1)
        conn.execute("SET helios.tenant = 'globex'")
        q = "SELECT inet_server_port(), current_database(), %s::int"
        assert conn.execute(q, [2]).fetchone() == (cluster.node("standby2").port, "app", 2)
        assert conn.execute(q, [3], prepare=True).fetchone() == (cluster.node("standby2").port, "app", 3)
    # the tenant as a startup option
    with connect(router_proxy, options="-c helios.tenant=acme") as conn:
        assert conn.execute(WHERE).fetchone() == (primary, "app_branch")

    async def run() -> None:
        conn = await aconnect(router_proxy)
        try:
            row = await conn.fetchrow("/*tenant=acme*/ SELECT inet_server_port(), current_database(), $1::int", 4)
            assert tuple(row) == (primary, "app_branch", 4)
            await conn.execute("SET helios.tenant = 'globex'")
            row = await conn.fetchrow("SELECT inet_server_port(), current_database(), $1::int", 5)
            assert tuple(row) == (cluster.node("standby2").port, "app", 5)
        finally:
            await conn.close()

    asyncio.run(run())


def test_helios_attribute_set_show_reset(router_proxy: ProxyProcess) -> None:
    """SET helios.tenant is an attribute plugins see; SHOW gives it back; RESET clears it."""
    res = subprocess.run(
        ["psql", router_proxy.dsn(), "-X", "-At", "-c", "SET helios.tenant = 'acme'", "-c", "SHOW helios.tenant",
         "-c", "SELECT current_database()", "-c", "RESET helios.tenant", "-c", "SELECT current_database()"],
        capture_output=True, text=True, timeout=8,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["SET", "acme", "app_branch", "RESET", "app"], res.stdout


# ================================================================== audit_log + observer (post_query)


def _watched(proxy: ProxyProcess) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for line in plugin_log_lines(proxy, "watcher"):
        doc = json.loads(line)
        assert isinstance(doc, list) and len(doc) == 2, line
        out.append((doc[0], doc[1]))
    return out


def test_post_query_outcome_and_audit_log(proxy_factory: ProxyFactory, tmp_path: Path, cluster: PgCluster) -> None:
    d = tmp_path / "p"
    install_example(d, "audit_log")
    install_wat(d, "watcher")
    proxy = proxy_factory(plugin_config(d))
    standby_ports = {n.port: n.name for n in cluster.standbys}
    with connect(proxy) as conn:
        conn.execute("SELECT 'simple-1'")
        conn.execute("SELECT 'ext-2', %s::int", [2])
        conn.execute("SELECT repeat('x', 5000) /* big-3 */ FROM generate_series(1, 20)")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT * FROM no_such_table_4")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT %s::int / 0 /* ext-fail-5 */", [1])
        conn.execute("SELECT pg_sleep(0.05) /* slow-6 */")
        port = conn.execute("SELECT inet_server_port() /* where-7 */").fetchone()[0]  # type: ignore[index]

    async def run() -> None:  # a named prepared statement: Parse+Describe+Sync, then Bind+Execute+Sync
        aconn = await aconnect(proxy)
        try:
            assert await aconn.fetchval("SELECT $1::int /* apg-8 */", 8) == 8
        finally:
            await aconn.close()

    asyncio.run(run())
    psycopg_tags = {"simple-1", "ext-2", "big-3", "no_such_table_4", "ext-fail-5", "slow-6", "where-7"}

    def by_tag() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        out = {}
        for ctx, outcome in _watched(proxy):
            for tag in [*psycopg_tags, "apg-8"]:
                if tag in ctx["query"]:
                    out[tag] = (ctx, outcome)
        return out

    seen = wait_until(lambda: psycopg_tags <= set(by_tag()) and by_tag(),
                      what=f"7 post_query calls in:\n{proxy.output()[-3000:]}")
    for tag, (ctx, outcome) in seen.items():
        assert set(outcome) >= {"success", "target_node", "elapsed_us", "response_bytes", "error"}, outcome
        assert outcome["elapsed_us"] > 0, (tag, outcome)
        assert outcome["response_bytes"] > 0, (tag, outcome)
        assert outcome["target_node"] in {"primary", "standby1", "standby2"}, (tag, outcome)
        assert ctx["hook_context"]["identity"] == "app"
        assert ctx["hook_context"]["database"] == "app"
        failed = tag in ("no_such_table_4", "ext-fail-5")
        assert outcome["success"] is (not failed), (tag, outcome)
        if failed:
            assert outcome["error"], (tag, outcome)
        else:
            assert outcome["error"] is None, (tag, outcome)
    assert "no_such_table_4" in seen["no_such_table_4"][1]["error"]
    assert "division by zero" in seen["ext-fail-5"][1]["error"]
    # every byte sent to the client, framing included:
    # RowDescription 1+4+2+(9+18) + DataRow 1+4+2+4+8 + CommandComplete 1+4+9 + ReadyForQuery 6
    assert seen["simple-1"][1]["response_bytes"] == 34 + 19 + 14 + 6
    # ParseComplete 5 + BindComplete 5 + RowDescription 1+4+2+27+23 + DataRow 1+4+2+9+5 + 14 + 6
    assert seen["ext-2"][1]["response_bytes"] == 5 + 5 + 57 + 21 + 14 + 6
    by_tag_now = seen
    assert by_tag_now["big-3"][1]["response_bytes"] > 100_000
    assert by_tag_now["slow-6"][1]["elapsed_us"] >= 50_000
    assert by_tag_now["where-7"][1]["target_node"] == standby_ports[port]
    assert by_tag_now["where-7"][0]["is_read_only"] is True
    # the asyncpg statement (named prepared statement, executed in a later batch) is observed too
    n = 8
    seen = wait_until(lambda: "apg-8" in by_tag() and by_tag(),
                      what=f"post_query for the asyncpg statement in:\n{proxy.output()[-3000:]}")
    assert seen["apg-8"][1]["success"] is True
    assert seen["apg-8"][1]["response_bytes"] > 0
    # audit_log: one line per statement with its running total, failures flagged
    lines = wait_until(lambda: len(plugin_log_lines(proxy, "audit_log")) >= n and plugin_log_lines(proxy, "audit_log"),
                       what="audit_log lines")
    assert len(lines) == n, lines
    assert sum(1 for line in lines if line.startswith("audit: failed")) == 2, lines
    assert any(f" n={n} " in line for line in lines), lines
    plugins = admin_plugins(proxy)  # the admin HTTP API shows the plugin's counters
    assert plugins is not None, "GET /api/plugins failed"
    audit = next(p for p in plugins if p["name"] == "audit_log")
    assert audit["metrics"] == {"queries_ok": 6.0, "queries_failed": 2.0}, audit
    assert audit["calls"]["post_query"]["calls"] == n, audit
    assert audit["calls"]["post_query"]["errors"] == 0, audit


# ================================================================== bad plugins are contained


class Background:
    """Another client running `SELECT n` in a loop through the proxy, counting failures."""

    def __init__(self, proxy: ProxyProcess):
        self.proxy = proxy
        self.ok = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with connect(self.proxy) as conn:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    if conn.execute("SELECT %s::int", [i]).fetchone() != (i,):
                        self.errors.append(f"wrong answer at {i}")
                    self.ok += 1
        except Exception as e:
            self.errors.append(repr(e))

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


@pytest.mark.parametrize(
    ("plugin", "kind"),
    [("spin", "timeout"), ("membomb", "trap"), ("trap", "trap"), ("badjson", "bad_json")],
)
def test_bad_plugin_is_contained(proxy_factory: ProxyFactory, tmp_path: Path, plugin: str, kind: str) -> None:
    d = tmp_path / "p"
    install_wat(d, plugin)
    install_example(d, "block_ddl")  # runs after the bad plugin (priority 10 > 5) and must still work
    # spin's manifest asks for 1e9 fuel; raise the proxy's ceiling so the deadline, not fuel, stops it
    proxy = proxy_factory(plugin_config(d, disable_after=100_000, limits={"fuel": 1_000_000_000}))
    rss_before = proxy_rss_kib(proxy)
    with Background(proxy) as bg, connect(proxy) as conn:
        for i in range(5):
            t0 = time.monotonic()
            assert conn.execute("SELECT %s::int * 2", [i]).fetchone() == (i * 2,)
            assert conn.execute(f"SELECT {i}").fetchone() == (i,)
            assert time.monotonic() - t0 < 2.0  # contained: the plugin's 30-50 ms limit, not a hang
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DROP TABLE plug_victim")
        assert exc.value.sqlstate == "42000"
        wait_until(lambda: bg.ok >= 5, what="background queries")
    assert bg.errors == []
    assert proxy.running()
    out = proxy.output()
    assert f"plugin {plugin} pre_query failed ({kind})" in out, out[-3000:]
    if plugin == "membomb":
        # the plugin was capped at 16 MiB; the proxy did not grow by gigabytes
        assert proxy_rss_kib(proxy) - rss_before < 200 * 1024


def test_fail_mode_closed_blocks_with_42000(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    d = tmp_path / "p"
    install_wat(d, "trap", fail_mode="closed")
    proxy = proxy_factory(plugin_config(d, disable_after=100_000))
    with connect(proxy) as conn:
        for _ in range(2):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("SELECT 1")
            assert exc.value.sqlstate == "42000"
            assert exc.value.diag.severity == "ERROR"
            assert "trap" in (exc.value.diag.message_primary or "")
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("SELECT %s::int", [1])
            assert exc.value.sqlstate == "42000"

    async def run() -> None:
        conn = await aconnect(proxy)
        try:
            with pytest.raises(asyncpg.PostgresError) as exc:
                await conn.fetchval("SELECT $1::int", 1)
            assert exc.value.sqlstate == "42000"
        finally:
            await conn.close()

    asyncio.run(run())


def test_disable_after_consecutive_errors(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    d = tmp_path / "p"
    install_wat(d, "trap", fail_mode="closed")
    proxy = proxy_factory(plugin_config(d, disable_after=3))
    with connect(proxy) as conn:
        for _ in range(3):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("SELECT 1")
            assert exc.value.sqlstate == "42000"
        # disabled now: out of the chain, so a closed plugin no longer blocks
        for i in range(3):
            assert conn.execute(f"SELECT {i}").fetchone() == (i,)
    out = proxy.wait_output("plugin trap disabled after 3 consecutive errors")
    assert out.count("plugin trap pre_query failed") == 3, out[-3000:]
    plugins = admin_plugins(proxy)
    assert plugins is not None, "GET /api/plugins failed"
    trap = next(p for p in plugins if p["name"] == "trap")
    assert trap["state"] == "disabled", trap
    assert trap["calls"]["pre_query"] == {"calls": 3, "errors": 3, "total_us": trap["calls"]["pre_query"]["total_us"]}


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        ("abiv2", "2"),
        ("sneaky", "helios.kv_set"),
    ],
)
def test_plugin_refused_at_load_proxy_serves(
    proxy_factory: ProxyFactory, tmp_path: Path, plugin: str, reason: str
) -> None:
    d = tmp_path / "p"
    install_wat(d, plugin)
    install_example(d, "block_ddl")
    proxy = proxy_factory(plugin_config(d))
    out = proxy.wait_output(f"plugin {plugin} refused")
    line = next(x for x in out.splitlines() if f"plugin {plugin} refused" in x)
    assert reason in line, line
    if plugin == "abiv2":
        assert "version" in line.lower(), line
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.Error) as exc:  # the good plugin beside it is loaded
            conn.execute("DROP TABLE plug_victim")
        assert exc.value.sqlstate == "42000"


# ================================================================== signatures


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heliosproxy", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_signed_plugins(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    keys, other, d = tmp_path / "keys", tmp_path / "other", tmp_path / "p"
    assert cli("plugin", "keygen", "--out", str(keys), "--name", "dev").returncode == 0
    assert cli("plugin", "keygen", "--out", str(other), "--name", "mallory").returncode == 0
    # block_ddl: signed by a trusted key -> loaded
    wasm = install_example(d, "block_ddl")
    res = cli("plugin", "sign", "--key", str(keys / "dev.key"), str(wasm))
    assert res.returncode == 0, res.stderr
    # cache_answer: unsigned -> refused
    install_example(d, "cache_answer")
    # add_limit: signed, then its manifest was changed -> refused
    wasm = install_example(d, "add_limit", config={"tables": ["plug_orders"], "limit": 3})
    assert cli("plugin", "sign", "--key", str(keys / "dev.key"), str(wasm)).returncode == 0
    (d / "add_limit.yaml").write_text((d / "add_limit.yaml").read_text().replace('"limit": 3', '"limit": 4'))
    # audit_log: signed by a key that is not in the trust root -> refused
    wasm = install_example(d, "audit_log")
    assert cli("plugin", "sign", "--key", str(other / "mallory.key"), str(wasm)).returncode == 0
    # (keys/ also holds dev.key; only *.pub files are trusted)
    proxy = proxy_factory(plugin_config(d, trust_root=str(keys)))
    out = proxy.wait_output("plugin block_ddl 1.0.0 loaded")
    for name in ("cache_answer", "add_limit", "audit_log"):
        out = proxy.wait_output(f"plugin {name} refused")
        line = next(x for x in out.splitlines() if f"plugin {name} refused" in x)
        assert "signature" in line, line
    assert "cache_answer.sig" in out
    with connect(proxy) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DROP TABLE plug_victim")
        assert exc.value.sqlstate == "42000"
        with pytest.raises(psycopg.Error) as exc:  # cache_answer is not loaded: the server answers
            conn.execute("SELECT /*cache:hello*/ * FROM no_such_table")
        assert exc.value.sqlstate == "42P01"
        assert len(conn.execute("SELECT * FROM plug_orders").fetchall()) == 50  # add_limit not loaded
    for name in ("cache_answer", "add_limit", "audit_log"):
        assert f"plugin {name}: " not in out
