"""Real clients through the proxy (psql, psycopg 3, asyncpg, pgbench), compared with a direct connection."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyProcess, base_config, deep_merge
from tests.helpers.rawpg import RawPg, data_rows, query_msg

Conn = psycopg.Connection[tuple[object, ...]]
ROWS = 100_000


def _proxy(cluster: PgCluster, mode: str) -> ProxyProcess:
    return ProxyProcess(deep_merge(
        base_config(cluster.node_config()),
        {"routing": {"read_write_split": False}, "pool": {"mode": mode}},
    ))


@pytest.fixture(scope="module")
def tx_proxy(cluster: PgCluster) -> Iterator[ProxyProcess]:
    with _proxy(cluster, "transaction") as p:
        yield p


@pytest.fixture(scope="module")
def session_proxy(cluster: PgCluster) -> Iterator[ProxyProcess]:
    with _proxy(cluster, "session") as p:
        yield p


@pytest.fixture(params=["transaction", "session"])
def proxy(request: pytest.FixtureRequest) -> ProxyProcess:
    """The transaction-pooling proxy, then the session-mode one."""
    p: ProxyProcess = request.getfixturevalue(f"{'tx' if request.param == 'transaction' else 'session'}_proxy")
    return p


@pytest.fixture
def table(cluster: PgCluster) -> Iterator[str]:
    """A fresh table name in database app, dropped at test end."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    cluster.sql(cluster.primary, f"DROP TABLE IF EXISTS {name}", db="app")


def _direct_dsn(cluster: PgCluster) -> str:
    return cluster.dsn(cluster.primary) + "?sslmode=disable"


def _connect(dsn: str, autocommit: bool = True) -> Conn:
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)


def _psql(dsn: str, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    env["PGCONNECT_TIMEOUT"] = "5"
    return subprocess.run(["psql", "-X", "-d", dsn, *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=60, cwd=cwd)


# A COPY text-format payload with escapes, tabs, unicode, NULLs and empty strings.
def _copy_payload(rows: int = ROWS) -> bytes:
    lines = []
    for i in range(1, rows + 1):
        if i % 7 == 0:
            text = "\\N"
        elif i % 11 == 0:
            text = ""
        else:
            text = f"row {i} tab\\there back\\\\slash nl\\nend é☃ {'z' * (i % 50)}"
        lines.append(f"{i}\t{text}\t{i / 2:g}\n")  # float8 output: 0.5, 1, 1.5
    return "".join(lines).encode()


# ====================================================================== psql


def test_psql_c_and_multi_statement_match_direct(proxy: ProxyProcess, cluster: PgCluster, table: str) -> None:
    args = ["-c", "SELECT 1 AS one",
            "-c", f"CREATE TABLE {table} (id int primary key, v text)",
            "-c", f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); SELECT count(*) FROM {table}; "
                  f"UPDATE {table} SET v = v || '!' RETURNING *",
            "-c", f"SELECT * FROM {table} ORDER BY id",
            "-c", f"DROP TABLE {table}"]
    via_proxy = _psql(proxy.dsn(), *args)
    direct = _psql(_direct_dsn(cluster), *args)
    assert via_proxy.returncode == 0, via_proxy.stderr
    assert (via_proxy.stdout, via_proxy.stderr) == (direct.stdout, direct.stderr)
    assert "a!" in via_proxy.stdout and "(2 rows)" in via_proxy.stdout


def test_psql_script_with_errors_matches_direct(proxy: ProxyProcess, cluster: PgCluster, table: str,
                                               tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(
        f"CREATE TABLE {table} (id int primary key);\n"
        f"INSERT INTO {table} VALUES (1);\n"
        f"INSERT INTO {table} VALUES (1);\n"  # unique violation
        "SELECT 1/0;\n"
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (2);\n"
        "SELEC oops;\n"
        "SELECT 'skipped';\n"
        "ROLLBACK;\n"
        f"INSERT INTO {table} VALUES (3);\n"
        f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {table};\n"
        "\\echo done\n"
        f"DROP TABLE {table};\n"
    )
    via_proxy = _psql(proxy.dsn(), "-f", "script.sql", cwd=tmp_path)
    direct = _psql(_direct_dsn(cluster), "-f", "script.sql", cwd=tmp_path)
    assert (via_proxy.returncode, via_proxy.stdout, via_proxy.stderr) == (
        direct.returncode, direct.stdout, direct.stderr)
    assert "duplicate key value" in via_proxy.stderr
    assert "division by zero" in via_proxy.stderr
    assert "current transaction is aborted" in via_proxy.stderr
    assert " 1,3\n" in via_proxy.stdout and "done" in via_proxy.stdout


def test_psql_copy_in_and_out_round_trip(proxy: ProxyProcess, cluster: PgCluster, table: str,
                                        tmp_path: Path) -> None:
    src = tmp_path / "in.tsv"
    payload = _copy_payload()
    src.write_bytes(payload)
    res = _psql(proxy.dsn(), "-v", "ON_ERROR_STOP=1",
                "-c", f"CREATE TABLE {table} (id int primary key, t text, f float8)",
                "-c", f"\\copy {table} FROM 'in.tsv'",
                "-c", f"\\copy (SELECT * FROM {table} ORDER BY id) TO 'out.tsv'",
                cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"COPY {ROWS}" in res.stdout
    assert (tmp_path / "out.tsv").read_bytes() == payload
    # And it really is in the table on the primary.
    assert cluster.sql(cluster.primary, f"SELECT count(*), count(t), sum(id) FROM {table}", db="app") == (
        f"{ROWS}|{ROWS - ROWS // 7}|{ROWS * (ROWS + 1) // 2}"
    )


# ====================================================================== psycopg 3


def test_psycopg_simple_and_extended(proxy: ProxyProcess) -> None:
    with _connect(proxy.dsn()) as conn:
        # Simple query protocol (client-side binding).
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT %s::int + 1, %s::text", (41, "it's"))
        assert cur.fetchone() == (42, "it's")
        # Extended protocol with server-side parameters, text and binary results.
        params = (7, "text ☃", b"\x00\x01\xff", None, 2.5, datetime.date(2024, 2, 29),
                  decimal.Decimal("12345.678901"), json.dumps({"a": [1, 2]}))
        sql = "SELECT %s::int, %s::text, %s::bytea, %s::text, %s::float8, %s::date, %s::numeric, %s::jsonb"
        expected = (7, "text ☃", b"\x00\x01\xff", None, 2.5, datetime.date(2024, 2, 29),
                    decimal.Decimal("12345.678901"), {"a": [1, 2]})
        assert conn.execute(sql, params).fetchone() == expected
        assert conn.cursor(binary=True).execute(sql, params).fetchone() == expected
        # Prepared (psycopg prepares after the 5th execution; prepare=True forces it now).
        for i in range(10):
            assert conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone() == (i * 2,)
        rows = conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 5000) g").fetchall()
        assert len(rows) == 5000 and rows[-1][0] == 5000


def test_psycopg_server_errors_and_session_continues(proxy: ProxyProcess, table: str) -> None:
    with _connect(proxy.dsn()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key)")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here WHERE 1 = %s", (1,))
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as exc:
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
        assert exc.value.diag.constraint_name == f"{table}_pkey"
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)
    with _connect(proxy.dsn(), autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (2)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        conn.execute(f"INSERT INTO {table} VALUES (3)")
        conn.commit()
        assert conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone() == ([1, 3],)


def test_psycopg_notices_and_parameter_status(proxy: ProxyProcess) -> None:
    with _connect(proxy.dsn()) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity} {d.message_primary}"))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        assert notices == ["NOTICE hello 42"]
        conn.execute("SET application_name = 'through-proxy'")
        assert conn.info.parameter_status("application_name") == "through-proxy"
        assert conn.execute("SHOW application_name").fetchone() == ("through-proxy",)


def test_psycopg_pipeline(proxy: ProxyProcess, table: str) -> None:
    with _connect(proxy.dsn()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key, v text)")
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(200):
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"v{i}"))
            c1 = conn.execute(f"SELECT count(*) FROM {table}")
            c2 = conn.execute("SELECT %s::text || %s::text", ("a", "b"))
        assert c1.fetchone() == (200,)
        assert c2.fetchone() == ("ab",)
        with conn.pipeline() as p:
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(50)]
            p.sync()
            assert [c.fetchone() for c in curs] == [(i,) for i in range(50)]


def _pipeline_error_scenario(dsn: str, table: str) -> tuple[str, list[int]]:
    """Statement 2 of 3 fails in one pipeline sync: (the error class, the ids that were committed)."""
    with _connect(dsn) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int primary key)")
        error = ""
        try:
            with conn.pipeline():
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))  # unique violation
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (3,))
        except psycopg.Error as exc:
            error = type(exc).__name__
        # The session continues, in the extended protocol too.
        ids = conn.execute(f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM {table} WHERE id > %s",
                           (0,)).fetchone()
        assert ids is not None
        conn.execute(f"DROP TABLE {table}")
        return error, list(ids[0])  # type: ignore[call-overload]


def test_psycopg_pipeline_error_in_middle_matches_direct(proxy: ProxyProcess, cluster: PgCluster,
                                                        table: str) -> None:
    direct = _pipeline_error_scenario(_direct_dsn(cluster), table)
    via_proxy = _pipeline_error_scenario(proxy.dsn(), table)
    assert via_proxy == direct
    # What the server does: one implicit transaction up to Sync, rolled back; statement 3 skipped.
    assert direct == ("UniqueViolation", [])


def _multi_statement_error_scenario(dsn: str, table: str) -> tuple[str, list[int], str]:
    with _connect(dsn) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int primary key)")
        error = ""
        try:
            # No parameters: psycopg sends one simple Query with three statements.
            conn.execute(f"INSERT INTO {table} VALUES (1); SELECT 1/0; INSERT INTO {table} VALUES (3)")
        except psycopg.Error as exc:
            error = type(exc).__name__
        row = conn.execute(f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM {table}").fetchone()
        assert row is not None
        status = conn.info.transaction_status.name
        conn.execute(f"DROP TABLE {table}")
        return error, list(row[0]), status  # type: ignore[call-overload]


def test_multi_statement_simple_query_error_matches_direct(proxy: ProxyProcess, cluster: PgCluster,
                                                          table: str) -> None:
    direct = _multi_statement_error_scenario(_direct_dsn(cluster), table)
    via_proxy = _multi_statement_error_scenario(proxy.dsn(), table)
    assert via_proxy == direct
    assert direct == ("DivisionByZero", [], "IDLE")


def test_psycopg_copy_round_trip_byte_identical(proxy: ProxyProcess, cluster: PgCluster, table: str) -> None:
    payload = _copy_payload()
    with _connect(proxy.dsn()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key, t text, f float8)")
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for start in range(0, len(payload), 65536):
                copy.write(payload[start:start + 65536])
        out = bytearray()
        with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        assert bytes(out) == payload
        binary_via_proxy = bytearray()
        with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                binary_via_proxy += chunk
    with _connect(_direct_dsn(cluster)) as direct:
        binary_direct = bytearray()
        with direct.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                binary_direct += chunk
    assert binary_via_proxy == binary_direct


def test_psycopg_copy_failures_leave_session_usable(proxy: ProxyProcess, table: str) -> None:
    with _connect(proxy.dsn()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key)")
        # The client aborts the COPY (CopyFail).
        with pytest.raises(RuntimeError, match="client gives up"), \
                conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write(b"1\n2\n")
            raise RuntimeError("client gives up")
        # The server rejects the data mid-COPY.
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), \
                conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write(b"10\n11\nnot-a-number\n12\n")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write(b"5\n6\n")
        assert conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone() == ([5, 6],)


def test_listen_notify(proxy: ProxyProcess) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    with _connect(proxy.dsn()) as listener, _connect(proxy.dsn()) as sender:
        listener.execute(f"LISTEN {channel}")
        row = sender.execute("SELECT pg_backend_pid(), pg_notify(%s, %s)", (channel, "first")).fetchone()
        assert row is not None
        sender_pid = row[0]
        sender.execute(f"NOTIFY {channel}, 'second'")
        got = list(listener.notifies(timeout=5, stop_after=2))
        assert [(n.channel, n.payload) for n in got] == [(channel, "first"), (channel, "second")]
        assert got[0].pid == sender_pid
        if proxy.config["pool"]["mode"] == "session":
            # Session mode: the sender's BackendKeyData carries its backend's real PID.
            assert sender.info.backend_pid == sender_pid
            assert got[1].pid == sender_pid
            assert listener.execute("SELECT pg_backend_pid()").fetchone() == (listener.info.backend_pid,)
        listener.execute(f"UNLISTEN {channel}")
        sender.execute(f"NOTIFY {channel}, 'third'")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


# ====================================================================== asyncpg


def test_asyncpg(proxy: ProxyProcess, table: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn(), timeout=5)
        try:
            # Named prepared statements, used again and again.
            stmt = await conn.prepare("SELECT $1::int + $2::int AS s, $3::text AS t")
            for i in range(20):
                assert tuple(await stmt.fetchrow(i, 1, f"n{i}")) == (i + 1, f"n{i}")
            # Binary format of rich types.
            values = (b"\x00\xff" * 100, decimal.Decimal("-1.5e-10"), [1, None, 3],
                      datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC),
                      uuid.UUID(int=12345), "line1\nline2 ☃")
            row = await conn.fetchrow("SELECT $1::bytea, $2::numeric, $3::int[], $4::timestamptz, $5::uuid, $6::text",
                                      *values)
            assert tuple(row) == values
            # fetch, executemany, transactions.
            await conn.execute(f"CREATE TABLE {table} (id int primary key, v text)")
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(i, f"v{i}") for i in range(1000)])
            rows = await conn.fetch(f"SELECT id, v FROM {table} WHERE id % 100 = $1 ORDER BY id", 7)
            assert [tuple(r) for r in rows] == [(i, f"v{i}") for i in range(7, 1000, 100)]
            async with conn.transaction():
                await conn.execute(f"DELETE FROM {table} WHERE id < 500")
            try:
                async with conn.transaction():
                    await conn.execute(f"DELETE FROM {table}")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 500
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await conn.execute(f"INSERT INTO {table} VALUES ($1, 'dup')", 999)
            assert await stmt.fetchval(1, 2, "x") == 3
            # A cursor inside a transaction (portal with row limits: PortalSuspended).
            async with conn.transaction():
                seen = [r["id"] async for r in conn.cursor(f"SELECT id FROM {table} ORDER BY id", prefetch=64)]
            assert seen == list(range(500, 1000))
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_50_concurrent_tasks(proxy: ProxyProcess, table: str) -> None:
    async def worker(n: int) -> int:
        conn = await asyncpg.connect(proxy.dsn(), timeout=10)
        try:
            stmt = await conn.prepare(f"INSERT INTO {table} VALUES ($1, $2) RETURNING id")
            total = 0
            for j in range(10):
                async with conn.transaction():
                    total += await stmt.fetchval(n * 100 + j, n)
                    assert await conn.fetchval("SELECT $1::int", n) == n
            return total
        finally:
            await conn.close()

    async def main() -> list[int]:
        setup = await asyncpg.connect(proxy.dsn(), timeout=5)
        await setup.execute(f"CREATE TABLE {table} (id int primary key, worker int)")
        await setup.close()
        return await asyncio.gather(*(worker(n) for n in range(50)))

    totals = asyncio.run(main())
    assert totals == [sum(n * 100 + j for j in range(10)) for n in range(50)]
    with _connect(proxy.dsn()) as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT worker) FROM {table}").fetchone() == (500, 50)


# ====================================================================== pgbench


@pytest.fixture(scope="module")
def pgbench_initialized(tx_proxy: ProxyProcess) -> ProxyProcess:
    res = subprocess.run(["pgbench", "-i", "-s", "1", "-q", tx_proxy.dsn()], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "done" in res.stderr
    return tx_proxy


@pytest.mark.parametrize(("mode", "protocol"), [("transaction", "simple"), ("transaction", "extended"),
                                                ("transaction", "prepared"), ("session", "prepared")])
def test_pgbench(pgbench_initialized: ProxyProcess, request: pytest.FixtureRequest, mode: str,
                 protocol: str) -> None:
    proxy: ProxyProcess = request.getfixturevalue("tx_proxy" if mode == "transaction" else "session_proxy")
    duration = "5" if mode == "transaction" else "3"
    res = subprocess.run(["pgbench", "-n", "-c", "8", "-j", "2", "-T", duration, "-M", protocol, proxy.dsn()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)", res.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
    assert processed and failed, res.stdout
    assert int(failed.group(1)) == 0, res.stdout
    assert int(processed.group(1)) > 100, res.stdout
    assert f"query mode: {protocol}" in res.stdout


# ====================================================================== streaming


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class _RssSampler:
    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_million_row_result_streams_with_bounded_memory(tx_proxy: ProxyProcess) -> None:
    limit_kib = 64 * 1024
    query = "COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g) TO STDOUT"
    with _connect(tx_proxy.dsn()) as conn:
        conn.execute("SELECT 1")
        baseline = _rss_kib(tx_proxy.pid)
        rows = 0
        size = 0
        with _RssSampler(tx_proxy.pid) as sampler, conn.cursor().copy(query) as copy:
            first = True
            for chunk in copy:
                if first:
                    # A slow reader: without backpressure the proxy would buffer the rest meanwhile.
                    time.sleep(1.5)
                    first = False
                rows += bytes(chunk).count(b"\n")
                size += len(chunk)
        assert rows == 1_000_000
        assert size == sum(len(str(g)) for g in range(1, 1_000_001)) + 1_000_000 * 102
        growth = sampler.peak - baseline
        assert growth < limit_kib, f"proxy RSS grew by {growth // 1024} MiB while streaming {size // 2**20} MiB"
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_large_result_via_server_side_cursor(session_proxy: ProxyProcess) -> None:
    with _connect(session_proxy.dsn(), autocommit=False) as conn:
        seen = 0
        total = 0
        with conn.cursor(name="big") as cur:
            cur.itersize = 20_000
            cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
            for g, text in cur:
                seen += 1
                total += g  # type: ignore[operator]
                assert len(text) == 100  # type: ignore[arg-type]
        conn.commit()
        assert (seen, total) == (200_000, 200_000 * 200_001 // 2)



def test_slow_reader_does_not_stall_the_next_transaction(cluster: PgCluster) -> None:
    """Backpressure from a slow client must not stick to the pooled backend after the transaction ends.

    The client reads nothing while the result (a bit more than the proxy's write-buffer limit) arrives,
    so the proxy's last read from the backend, the one with ReadyForQuery, is likely the one that
    pauses the backend; the transaction then ends and the next one reuses that backend.
    """
    config = deep_merge(base_config(cluster.node_config()),
                        {"routing": {"read_write_split": False}, "pool": {"mode": "transaction", "size": 1}})
    with ProxyProcess(config) as proxy, RawPg(proxy.host, proxy.port, timeout=5.0, rcvbuf=4096) as raw:
        raw.login("app", "apppass", "app")
        for kib in range(500, 1300, 50):
            raw.send(query_msg(f"COPY (SELECT repeat('x', 1023) FROM generate_series(1, {kib})) TO STDOUT"))
            time.sleep(0.25)  # read nothing meanwhile
            copied = 0
            while True:
                kind, _ = raw.read_message()
                if kind == "d":
                    copied += 1
                elif kind == "Z":
                    break
            assert copied == kib
            # The next transaction of the same client, on the same backend (pool.size 1).
            try:
                rows = data_rows(raw.query(f"SELECT {kib}"))
            except TimeoutError:
                raise AssertionError(f"no answer to the statement after a {kib} KiB COPY read late") from None
            assert rows == [[str(kib)]]


def test_psycopg_copy_in_out_then_next_statement(tx_proxy: ProxyProcess) -> None:
    """COPY FROM STDIN, COPY TO STDOUT, then the next statement, several rounds: each must answer."""
    conn = _connect(tx_proxy.dsn())
    payload = _copy_payload()
    done: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for round_ in range(16):
                name = f"t_{uuid.uuid4().hex[:12]}"
                conn.execute(f"CREATE TABLE {name} (id int primary key, t text, f float8)")
                with conn.cursor().copy(f"COPY {name} FROM STDIN") as copy:
                    for start in range(0, len(payload), 65536):
                        copy.write(payload[start:start + 65536])
                out = bytearray()
                with conn.cursor().copy(f"COPY (SELECT * FROM {name} ORDER BY id) TO STDOUT") as copy:
                    for chunk in copy:
                        out += chunk
                assert bytes(out) == payload
                conn.execute(f"DROP TABLE {name}")
                done.append(round_)
        except BaseException as exc:  # reported below
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(45)
    try:
        assert not worker.is_alive(), f"hung after {len(done)} rounds of COPY FROM + COPY TO + DROP"
        assert not failure, failure
        assert done == list(range(16))
    finally:
        conn.close()
