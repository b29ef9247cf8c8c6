"""Hot reload of WASM plugins in the running proxy: modify under load with 0 errors, broken update, add, remove."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.wat_e2e.kit import (
    PLUGINS_BUILD,
    build_examples,
    install_example,
    manifest_of,
    plugin_config,
    wait_until,
    wat_bytes,
    write_manifest,
)

pytestmark = pytest.mark.timeout(90)

HOT = {"hot_reload": True, "poll_interval": 0.1, "debounce": 0.2}


@pytest.fixture(scope="module", autouse=True)
def table(cluster: PgCluster) -> Iterator[None]:
    build_examples()
    cluster.sql(cluster.primary, """
        DROP TABLE IF EXISTS reload_rows;
        CREATE TABLE reload_rows (id int PRIMARY KEY);
        INSERT INTO reload_rows SELECT g FROM generate_series(1, 40) g;
    """, user="app", db="app")
    cluster.wait_replay()
    yield
    cluster.sql(cluster.primary, "DROP TABLE IF EXISTS reload_rows", user="app", db="app")


def connect(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10)


def drop_blocked(proxy: ProxyProcess) -> bool:
    """True when `DROP TABLE IF EXISTS` (of a table that does not exist) is refused with 42000."""
    with connect(proxy) as conn:
        try:
            conn.execute("DROP TABLE IF EXISTS reload_no_such_table")
        except psycopg.Error as e:
            assert e.sqlstate == "42000", e
            return True
    return False


def cached_answer(proxy: ProxyProcess) -> bool:
    with connect(proxy) as conn:
        try:
            rows = conn.execute("SELECT /*cache:hello*/ * FROM reload_no_such_table").fetchall()
        except psycopg.errors.UndefinedTable:
            return False
    assert rows == [("hello from wasm",)]
    return True


def row_count(proxy: ProxyProcess) -> int:
    with connect(proxy) as conn:
        return len(conn.execute("SELECT id FROM reload_rows").fetchall())


class Load:
    """`clients` threads, each with its own connection, running simple and extended queries until stopped."""

    def __init__(self, proxy: ProxyProcess, clients: int = 20):
        self.proxy = proxy
        self.errors: list[str] = []
        self.counts = [0] * clients
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        try:
            with connect(self.proxy) as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    if n % 2:
                        got = conn.execute(f"SELECT {n}, {i}").fetchone()
                    else:
                        got = conn.execute("SELECT %s::int, %s::int", [n, i]).fetchone()
                    if got != (n, i):
                        self.errors.append(f"client {i}: wrong answer {got} for {(n, i)}")
                    self.counts[i] += 1
                    time.sleep(0.002)
        except Exception as e:
            self.errors.append(f"client {i}: {e!r}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_until(lambda: all(c > 0 for c in self.counts) or self.errors, timeout=20, what="all clients running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)


def test_modify_under_load_zero_errors(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    d = tmp_path / "p"
    install_example(d, "block_ddl", as_name="guard", version="1.0.0")
    install_example(d, "add_limit", config={"tables": ["reload_rows"], "limit": 7})
    proxy = proxy_factory(plugin_config(d, **HOT))
    assert drop_blocked(proxy)
    assert row_count(proxy) == 7
    with Load(proxy, clients=20) as load:
        # 1. the manifest's config changes: add_limit's limit 7 -> 3
        before = list(load.counts)
        manifest = manifest_of("add_limit")
        manifest.update(version="1.1.0", config={"tables": ["reload_rows"], "limit": 3})
        write_manifest(d / "add_limit.yaml", manifest)
        proxy.wait_output("plugin add_limit reloaded: 1.0.0 -> 1.1.0", timeout=10)
        assert row_count(proxy) == 3
        # 2. the module under the name "guard" is replaced by another plugin's wasm
        manifest = manifest_of("cache_answer")
        manifest.update(name="guard", version="2.0.0")
        shutil.copyfile(PLUGINS_BUILD / "cache_answer.wasm", d / ".guard.tmp")
        write_manifest(d / "guard.yaml", manifest)
        (d / ".guard.tmp").replace(d / "guard.wasm")
        proxy.wait_output("plugin guard reloaded: 1.0.0 -> 2.0.0", timeout=10)
        assert cached_answer(proxy)
        assert not drop_blocked(proxy)
        time.sleep(0.3)
        assert all(c > b for c, b in zip(load.counts, before, strict=True)), (before, load.counts)
    assert load.errors == [], (load.errors, proxy.output()[-4000:])
    assert sum(load.counts) > 200, load.counts
    assert proxy.running()


def test_broken_update_keeps_old_version(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    d = tmp_path / "p"
    install_example(d, "block_ddl", version="1.0.0")
    proxy = proxy_factory(plugin_config(d, **HOT))
    assert drop_blocked(proxy)
    with Load(proxy, clients=5) as load:
        # a module that is not wasm at all
        (d / "block_ddl.wasm").write_bytes(b"\x00asm garbage, not a module")
        out = proxy.wait_output("plugin block_ddl: new version refused; keeping version 1.0.0 running", timeout=10)
        assert "plugin block_ddl refused" in out
        assert drop_blocked(proxy)
        # a valid module with the wrong ABI version
        (d / "block_ddl.wasm").write_bytes(wat_bytes("abiv2"))
        wait_until(lambda: proxy.output().count("new version refused; keeping version 1.0.0 running") >= 2,
                   timeout=10, what="second refusal")
        assert drop_blocked(proxy)
        # fixed: the good module comes back with a new version
        install_example(d, "block_ddl", version="1.0.1")
        proxy.wait_output("plugin block_ddl reloaded: 1.0.0 -> 1.0.1", timeout=10)
        assert drop_blocked(proxy)
    assert load.errors == [], (load.errors, proxy.output()[-4000:])


def test_add_and_remove(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    proxy = proxy_factory(plugin_config(d, **HOT))
    assert not drop_blocked(proxy)
    with Load(proxy, clients=5) as load:
        install_example(d, "block_ddl")
        proxy.wait_output("plugin block_ddl 1.0.0 loaded", timeout=10)
        assert drop_blocked(proxy)
        (d / "block_ddl.wasm").unlink()
        proxy.wait_output("plugin block_ddl removed", timeout=10)
        assert not drop_blocked(proxy)
    assert load.errors == [], (load.errors, proxy.output()[-4000:])


def _plugin_stats(proxy: ProxyProcess, name: str) -> dict[str, Any]:
    from tests.wat_e2e.kit import admin_plugins

    stats = admin_plugins(proxy) or []
    return next((p for p in stats if p["name"] == name), {})


def test_plugin_counters_survive_a_hot_reload_and_a_refused_version_shows_last_error(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "audit_log", version="1.0.0")
    proxy = proxy_factory(plugin_config(d, **HOT), admin={"users": ["app"]})
    with connect(proxy) as conn:
        for i in range(3):
            conn.execute(f"SELECT {i}")
    wait_until(lambda: _plugin_stats(proxy, "audit_log").get("metrics", {}).get("queries_ok", 0) >= 3,
               what="3 counted queries")
    before = _plugin_stats(proxy, "audit_log")["metrics"]["queries_ok"]

    install_example(d, "audit_log", version="1.0.1")
    wait_until(lambda: _plugin_stats(proxy, "audit_log").get("version") == "1.0.1", what="version 1.0.1")
    assert _plugin_stats(proxy, "audit_log")["metrics"]["queries_ok"] >= before  # not reset
    with connect(proxy) as conn:
        conn.execute("SELECT 'after reload'")
    wait_until(lambda: _plugin_stats(proxy, "audit_log")["metrics"]["queries_ok"] > before,
               what="the new version counting on from the old value")

    manifest = manifest_of("audit_log")
    manifest.update(version="2.0.0", hooks=["post_query", "no_such_hook"])
    write_manifest(d / "audit_log.yaml", manifest)
    wait_until(lambda: _plugin_stats(proxy, "audit_log").get("last_error"), what="last_error")
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as adm:
        cur = adm.execute("SHOW PLUGINS")
        cols = [c.name for c in cur.description or []]
        row = dict(zip(cols, cur.fetchone() or (), strict=True))
    assert row["version"] == "1.0.1" and row["state"] == "running"
    assert row["last_error"].startswith("new version refused: ")
    assert "no_such_hook" in row["last_error"]
