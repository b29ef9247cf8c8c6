"""Pooling through a real proxy: many clients over few backends, session state, LISTEN, pins, timeouts, session mode."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

Conn = psycopg.Connection[tuple[Any, ...]]

pytestmark = pytest.mark.timeout(60)

SPLIT_OFF = {"read_write_split": False}


def connect(proxy: ProxyProcess, autocommit: bool = True, application_name: str | None = None) -> Conn:
    params = {} if application_name is None else {"application_name": application_name}
    return psycopg.connect(proxy.dsn(**params), autocommit=autocommit, connect_timeout=10)


def run_threads(n: int, target: Callable[[int], None], timeout: float = 60.0) -> list[str]:
    """Run target(i) in n threads; the errors they raised, as text."""
    errors: list[str] = []
    lock = threading.Lock()

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            with lock:
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        errors.append(f"{alive} clients still running after {timeout}s")
    return errors


@pytest.fixture(scope="module")
def setup_db(cluster: PgCluster) -> PgCluster:
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pl_rows (client int, n int, v text)")
        for schema in ("pl_a", "pl_b", "pl_c", "pl_d"):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.whoami (v text)")
            conn.execute(f"TRUNCATE {schema}.whoami")
            conn.execute(f"INSERT INTO {schema}.whoami VALUES ('{schema}')")
    cluster.wait_replay()
    return cluster


def default_timezone(cluster: PgCluster) -> str:
    with psycopg.connect(cluster.dsn(cluster.primary)) as conn:
        row = conn.execute("SHOW TimeZone").fetchone()
        assert row is not None
        return str(row[0])


class BackendSampler:
    """Counts the app user's client backends on each node every 50 ms; keeps the maxima."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self.max: dict[str, int] = {n.name: 0 for n in cluster.nodes}
        self._stop = threading.Event()
        self._conns = {n.name: psycopg.connect(cluster.dsn(n), autocommit=True) for n in cluster.nodes}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, conn in self._conns.items():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app' "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ).fetchone()
                assert row is not None
                self.max[name] = max(self.max[name], int(row[0]))
            self._stop.wait(0.05)

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns.values():
            conn.close()


# ---------------------------------------------------------------------------------- many clients


def test_200_clients_over_a_pool_of_10(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    # eventual: each client's reads after its write transaction still go to a standby (the default
    # routing.consistency=session would send them to the primary to read the client's writes).
    proxy = proxy_factory({"pool": {"size": 10, "acquire_timeout": "20s"}, "routing": {"consistency": "eventual"}})
    n = 200
    all_connected = threading.Barrier(n, timeout=60)
    tag = uuid.uuid4().hex[:8]

    def client(i: int) -> None:
        with connect(proxy, application_name=f"pl-{tag}-{i}") as conn:
            all_connected.wait()
            for k in range(3):
                row = conn.execute("SELECT pg_is_in_recovery(), %s::int", (i,)).fetchone()
                assert row == (True, i)
                with conn.transaction():
                    conn.execute("INSERT INTO pl_rows VALUES (%s, %s, %s)", (i, k, tag))
                    row = conn.execute("SELECT count(*) FROM pl_rows WHERE client = %s AND v = %s",
                                       (i, tag)).fetchone()
                    assert row == (k + 1,)
                assert conn.info.parameter_status("application_name") == f"pl-{tag}-{i}"

    with BackendSampler(setup_db) as sampler:
        errors = run_threads(n, client, timeout=90)
    assert errors == [], f"{errors[:3]}\n--- proxy log (tail) ---\n{proxy.output()[-4000:]}"
    with psycopg.connect(setup_db.dsn(setup_db.primary)) as direct:
        row = direct.execute("SELECT count(*), count(DISTINCT client) FROM pl_rows WHERE v = %s", (tag,)).fetchone()
        assert row == (3 * n, n)
    assert all(0 < sampler.max[name] <= 10 for name in ("primary",)), sampler.max
    assert all(m <= 10 for m in sampler.max.values()), sampler.max


# ---------------------------------------------------------------------------------- session state


def _check_settings(conn: Conn, schema: str, tz: str, app: str) -> int:
    row = conn.execute(
        "SELECT current_setting('search_path'), current_setting('TimeZone'), "
        "current_setting('application_name'), (SELECT v FROM whoami), pg_backend_pid()"
    ).fetchone()
    assert row is not None
    assert row[:4] == (f"{schema}, public", tz, app, schema), row
    assert conn.info.parameter_status("TimeZone") == tz
    assert conn.info.parameter_status("application_name") == app
    return int(row[4])


@pytest.mark.parametrize("split", [False, True], ids=["split_off", "split_on"])
def test_settings_survive_backend_changes(setup_db: PgCluster, proxy_factory: ProxyFactory, split: bool) -> None:
    proxy = proxy_factory({"pool": {"size": 3}, "routing": {"read_write_split": split}})
    profiles = [("pl_a", "Asia/Tokyo", "alpha"), ("pl_b", "America/New_York", "beta"),
                ("pl_c", "Europe/Paris", "gamma"), ("pl_d", "UTC", "delta")]
    pids: dict[int, set[int]] = {i: set() for i in range(len(profiles))}

    def client(i: int) -> None:
        schema, tz, app = profiles[i]
        with connect(proxy) as conn:
            conn.execute(f"SET search_path = {schema}, public")
            conn.execute(f"SET timezone = '{tz}'")
            conn.execute(f"SET application_name = '{app}'")
            for k in range(40):
                if k % 3 == 0:
                    with conn.transaction():
                        pids[i].add(_check_settings(conn, schema, tz, app))
                        conn.execute("INSERT INTO public.pl_rows VALUES (%s, %s, 'settings')", (i, k))
                else:
                    pids[i].add(_check_settings(conn, schema, tz, app))

    errors = run_threads(len(profiles), client)
    assert errors == [], f"{errors[:3]}\n--- proxy log (tail) ---\n{proxy.output()[-4000:]}"
    # the point of the test: clients did change backends
    assert all(len(p) >= 2 for p in pids.values()), pids


def test_set_local_stays_in_its_transaction(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    default_tz = default_timezone(setup_db)
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    with connect(proxy) as a, connect(proxy) as b:
        a.execute("BEGIN")
        a.execute("SET LOCAL timezone = 'Asia/Tokyo'")
        assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        a.execute("COMMIT")
        assert a.execute("SHOW TimeZone").fetchone() == (default_tz,)
        assert b.execute("SHOW TimeZone").fetchone() == (default_tz,)
        assert a.execute("SHOW TimeZone").fetchone() == (default_tz,)


def test_set_in_a_transaction_is_kept_on_commit_and_undone_on_rollback(
    setup_db: PgCluster, proxy_factory: ProxyFactory
) -> None:
    default_tz = default_timezone(setup_db)
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    with connect(proxy) as a, connect(proxy) as b:
        a.execute("BEGIN")
        a.execute("SET timezone = 'Asia/Tokyo'")
        a.execute("ROLLBACK")
        assert a.execute("SHOW TimeZone").fetchone() == (default_tz,)
        a.execute("BEGIN")
        a.execute("SET timezone = 'Europe/Paris'")
        a.execute("COMMIT")
        b.execute("SET timezone = 'America/New_York'")  # same (only) backend, another client
        assert b.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
        assert a.execute("SHOW TimeZone").fetchone() == ("Europe/Paris",)
        assert a.info.parameter_status("TimeZone") == "Europe/Paris"
        assert b.execute("SHOW TimeZone").fetchone() == ("America/New_York",)


def test_reset_and_reset_all(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    default_tz = default_timezone(setup_db)
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    with connect(proxy, application_name="alpha") as a, connect(proxy) as b:
        a.execute("SET timezone = 'Asia/Tokyo'")
        a.execute("SET search_path = pl_a, public")
        b.execute("SET timezone = 'America/New_York'")
        a.execute("RESET timezone")
        assert a.execute("SHOW TimeZone").fetchone() == (default_tz,)
        assert b.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
        assert a.execute("SHOW TimeZone").fetchone() == (default_tz,)
        assert a.execute("SHOW search_path").fetchone() == ("pl_a, public",)
        a.execute("SET application_name = 'beta'")
        assert b.execute("SELECT 1").fetchone() == (1,)
        # RESET goes back to the value the client connected with, as on a direct connection
        a.execute("RESET application_name")
        assert a.execute("SHOW application_name").fetchone() == ("alpha",)
        a.execute("SET application_name = 'beta'")
        a.execute("RESET ALL")
        assert b.execute("SELECT 1").fetchone() == (1,)
        row = a.execute("SELECT current_setting('search_path'), current_setting('application_name')").fetchone()
        assert row == ('"$user", public', "alpha")
        assert a.info.parameter_status("application_name") == "alpha"


# ---------------------------------------------------------------------------------- LISTEN and pins


def test_listen_notify_in_transaction_mode(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}})
    channel = f"pl_chan_{uuid.uuid4().hex[:8]}"
    with connect(proxy) as listener, connect(proxy) as notifier, connect(proxy) as other:
        listener.execute(f"LISTEN {channel}")
        for i in range(20):
            if i % 2:
                notifier.execute(f"NOTIFY {channel}, 'n{i}'")
            else:
                notifier.execute("SELECT pg_notify(%s, %s)", (channel, f"n{i}"))
            other.execute("SELECT 1")  # other clients keep using the pool
            if i % 5 == 0:
                assert listener.execute("SELECT 2").fetchone() == (2,)
        got = [n.payload for n in listener.notifies(timeout=5.0, stop_after=20)]
        assert sorted(got, key=lambda p: int(p[1:])) == [f"n{i}" for i in range(20)]
        listener.execute(f"UNLISTEN {channel}")
        notifier.execute(f"NOTIFY {channel}, 'after-unlisten'")
        assert [n.payload for n in listener.notifies(timeout=1.0)] == []


def test_temp_table_pins_the_client(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}})
    stop = threading.Event()

    def others(i: int) -> None:
        with connect(proxy) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("INSERT INTO pl_rows VALUES (%s, 0, 'temp-others')", (i,))
                conn.execute("SELECT 1")

    bg_errors: list[str] = []
    bg = threading.Thread(target=lambda: bg_errors.extend(run_threads(3, others)), daemon=True)
    with connect(proxy) as conn:
        conn.execute("CREATE TEMP TABLE pl_tmp (x int)")
        bg.start()
        pids = set()
        for i in range(10):
            with conn.transaction():
                conn.execute("INSERT INTO pl_tmp VALUES (%s)", (i,))
            row = conn.execute("SELECT count(*), pg_backend_pid() FROM pl_tmp").fetchone()
            assert row is not None and row[0] == i + 1
            pids.add(row[1])
            time.sleep(0.02)
        assert len(pids) == 1
        stop.set()
        bg.join(30)
    assert bg_errors == []


# ---------------------------------------------------------------------------------- limits


def test_acquire_timeout_is_53300_and_the_session_continues(
    setup_db: PgCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory({"pool": {"size": 1, "acquire_timeout": "500ms"}, "routing": SPLIT_OFF})
    with connect(proxy) as holder, connect(proxy) as waiter:
        holder.execute("BEGIN")
        holder.execute("INSERT INTO pl_rows VALUES (-1, 0, 'acquire-timeout')")
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(psycopg.errors.TooManyConnections):
                waiter.execute("SELECT 1")
            elapsed = time.monotonic() - started
            assert 0.4 <= elapsed <= 3.0, elapsed
        holder.execute("COMMIT")
        assert waiter.execute("SELECT 42").fetchone() == (42,)
        assert holder.execute("SELECT 43").fetchone() == (43,)


def test_backend_left_in_a_transaction_is_not_reused(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    marker = uuid.uuid4().hex
    a = connect(proxy)
    a.execute("BEGIN")
    a.execute("INSERT INTO pl_rows VALUES (-2, 0, %s)", (marker,))
    a.pgconn.finish()  # the client vanishes mid-transaction (no ROLLBACK, no Terminate handling)
    with connect(proxy) as b:
        deadline = time.monotonic() + 10
        while True:
            try:
                # simple protocol: in a fresh implicit transaction now() is this statement's start
                row = b.execute(f"SELECT count(*), now() = statement_timestamp() FROM pl_rows "
                                f"WHERE v = '{marker}'").fetchone()
                break
            except psycopg.errors.TooManyConnections:
                assert time.monotonic() < deadline
        assert row == (0, True)  # not in a leftover transaction, and the insert was rolled back


# ---------------------------------------------------------------------------------- session mode


@pytest.fixture
def session_proxy(setup_db: PgCluster, proxy_factory: ProxyFactory) -> Iterator[ProxyProcess]:
    yield proxy_factory({"pool": {"mode": "session", "size": 1, "acquire_timeout": "2s",
                                  "reset_query": "DISCARD ALL"}})


def test_session_mode_resets_the_backend_between_clients(setup_db: PgCluster, session_proxy: ProxyProcess) -> None:
    with connect(session_proxy) as c1:
        c1.execute("SET pl.flag = 'c1'")
        c1.execute("SET search_path = pl_a, public")
        c1.execute("CREATE TEMP TABLE pl_session_tmp (x int)")
        c1.execute("PREPARE pl_q AS SELECT 1")
        row = c1.execute("SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('pl.flag')").fetchone()
        assert row is not None
        pid1 = row[0]
        assert row[1:] == (False, "c1")  # session mode: the session stays on the primary
        assert c1.execute("SELECT v FROM whoami").fetchone() == ("pl_a",)
    deadline = time.monotonic() + 10
    while True:
        try:
            c2 = connect(session_proxy)
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the single backend never came back"
            time.sleep(0.1)
    with c2:
        row = c2.execute(
            "SELECT pg_backend_pid(), current_setting('pl.flag', true), current_setting('search_path'), "
            "to_regclass('pg_temp.pl_session_tmp'), (SELECT count(*) FROM pg_prepared_statements)"
        ).fetchone()
        assert row is not None
        assert row[0] == pid1  # the same backend (pool size 1) ...
        assert row[1] in (None, "")  # ... without client 1's state
        assert row[2:] == ('"$user", public', None, 0)


def test_session_mode_keeps_one_backend_per_client(setup_db: PgCluster, session_proxy: ProxyProcess) -> None:
    with connect(session_proxy) as c1:
        pid = c1.execute("SELECT pg_backend_pid()").fetchone()
        for _ in range(3):
            assert c1.execute("SELECT pg_backend_pid()").fetchone() == pid
        # the only backend is taken: a second client cannot get one within acquire_timeout
        with pytest.raises(psycopg.OperationalError):
            connect(session_proxy)
        assert c1.execute("SELECT pg_backend_pid()").fetchone() == pid
