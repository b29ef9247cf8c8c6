"""Transaction pooling edge cases: read-your-writes, pins for advisory locks and WITH HOLD cursors."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

Conn = psycopg.Connection[tuple[Any, ...]]
pytestmark = pytest.mark.timeout(60)


def connect(proxy: ProxyProcess) -> Conn:
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10)


def _where(conn: Conn) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def test_read_your_writes_window_sends_reads_to_the_primary(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"routing": {"read_write_split": True, "read_your_writes_ms": 1500}})
    with connect(proxy) as c:
        assert _where(c) is True  # no write yet: a standby
        c.execute("SELECT pg_catalog.txid_current()")  # a write function: runs on the primary
        assert _where(c) is False, "a read right after a write must see the primary"
    with connect(proxy) as other:
        assert _where(other) is True, "another session is not affected"


def test_session_advisory_lock_pins_the_client(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 3}, "routing": {"read_write_split": False}})
    with connect(proxy) as a, connect(proxy) as b:
        a.execute("SELECT pg_advisory_lock(4242)")
        pid = a.execute("SELECT pg_backend_pid()").fetchone()
        for _ in range(5):
            b.execute("SELECT 1")  # other traffic in between
            assert a.execute("SELECT pg_backend_pid()").fetchone() == pid
        got = b.execute("SELECT pg_try_advisory_lock(4242)").fetchone()
        assert got == (False,), "the lock is held by a's backend, which a keeps"
        a.execute("SELECT pg_advisory_unlock(4242)")


def test_with_hold_cursor_survives_transactions(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}, "routing": {"read_write_split": False}})
    with connect(proxy) as a, connect(proxy) as b:
        a.execute("BEGIN")
        a.execute("DECLARE hp_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g")
        a.execute("COMMIT")
        for i in range(1, 4):
            b.execute("SELECT 1")
            assert a.execute("FETCH 1 FROM hp_cur").fetchone() == (i,)
        a.execute("CLOSE hp_cur")


def test_pipeline_with_prepared_statements_over_a_shared_backend(
    cluster: PgCluster, proxy_factory: ProxyFactory
) -> None:
    """psycopg pipeline mode mixing unnamed and prepared statements while another client uses the pool."""
    proxy = proxy_factory({"pool": {"size": 2}, "routing": {"read_write_split": False}})
    with connect(proxy) as a, connect(proxy) as b:
        for round_ in range(3):
            b.execute("SELECT 1")
            with a.pipeline():
                curs = []
                for i in range(12):
                    cur = a.cursor()
                    cur.execute("SELECT %s::int * 2, %s::text", (i, f"r{round_}"), prepare=i % 2 == 0)
                    curs.append(cur)
            for i, cur in enumerate(curs):
                assert cur.fetchone() == (i * 2, f"r{round_}")


def test_extended_error_before_sync_skips_to_sync(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """An error the proxy answers at a Flush makes it ignore the rest until Sync, like a server."""
    from tests.helpers.rawpg import RawPg, cstr, msg

    proxy = proxy_factory({"routing": {"read_write_split": False}})
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        # SET helios.* must be a simple query: its Parse is refused at the Flush.
        raw.send(msg(b"P", cstr("") + cstr("SET helios.route = 'primary'") + b"\x00\x00") + msg(b"H"))
        kind, _ = raw.read_message()
        assert kind == "E"
        # What follows up to Sync is ignored; Sync gets ReadyForQuery and nothing else.
        bind = msg(b"B", cstr("") + cstr("") + b"\x00\x00\x00\x00\x00\x00")
        raw.send(bind + msg(b"E", cstr("") + b"\x00\x00\x00\x00") + msg(b"S"))
        assert [k for k, _ in raw.read_until_ready()] == ["Z"]
        assert [k for k, _ in raw.query("SELECT 1")] == ["T", "D", "C", "Z"]
