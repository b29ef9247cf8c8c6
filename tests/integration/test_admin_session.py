"""The console session chosen at login (session/admin.py), byte by byte from a raw client, and pipelined."""

from __future__ import annotations

import struct

import psycopg

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory
from tests.helpers.rawpg import RawPg, cstr, data_rows, error_fields, msg, query_msg

ADMIN = {"admin": {"users": ["app"]}, "health": {"interval": "300ms"}}


def test_console_session_raw_protocol(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Pipelined simple and extended requests are answered in order; a FunctionCall gets 0A000; the console
    client shows in SHOW CLIENTS of another console connection, and plain clients still reach their server."""
    proxy = proxy_factory(ADMIN)
    with RawPg(proxy.host, proxy.port) as c:
        c.login("app", "apppass", "heliosproxy")
        assert c.params["server_version"] == "15.0 (heliosproxy)"
        parse = msg(b"P", cstr("s1") + cstr("SHOW VERSION") + b"\x00\x00")
        bind = msg(b"B", cstr("") + cstr("s1") + b"\x00\x00\x00\x00\x00\x00")
        execute = msg(b"E", cstr("") + b"\x00\x00\x00\x00")
        fcall = msg(b"F", struct.pack("!IHHI", 1234, 0, 0, 0) + b"\x00\x00")
        # Sent a byte at a time: each message is answered once it is whole, in order.
        data = query_msg("SHOW VERSION") + parse + bind + execute + msg(b"S") + fcall + query_msg("NOPE")
        for i in range(len(data)):
            c.send(data[i : i + 1])
        first = c.read_until_ready()
        assert [k for k, _ in first] == ["T", "D", "C", "Z"]
        version = data_rows(first)[0][0]
        second = c.read_until_ready()
        assert [k for k, _ in second] == ["1", "2", "D", "C", "Z"]
        assert data_rows(second) == [[version]]
        third = c.read_until_ready()
        assert [k for k, _ in third] == ["E", "Z"]
        assert error_fields(third[0][1])["C"] == "0A000"
        fourth = c.read_until_ready()
        assert error_fields(fourth[0][1])["C"] == "42601"
        with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as adm:
            cur = adm.execute("SHOW CLIENTS")
            assert cur.description is not None
            cols = [d.name for d in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            mine = [r for r in rows if r["database"] == "heliosproxy"]
            assert len(mine) == 2 and all(r["user"] == "app" for r in mine)
        with psycopg.connect(proxy.dsn(), autocommit=True) as app:
            assert app.execute("SELECT current_database()").fetchone() == ("app",)
