"""Model-based isolation check: clients through the proxy vs twin direct sessions, step by step, with shrinking.

Every client of the proxy has a twin: a direct connection to the primary with the same user and
startup parameters. Every step runs on both; after it, the step's answer and an observation of the
session (roles, settings, temp objects, prepared statements, cursors, advisory locks, LISTEN channels,
notifications, reported parameters, transaction status) must be the same on both sides. The first
divergence is shrunk to the shortest sequence of steps that still shows it, replayed on a fresh proxy.
"""

from __future__ import annotations

import os
import random
import select
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field

from . import extmsg
from .rawpg import ConnectionClosed, RawPg, ServerError, data_rows, error_fields, query_msg

USER, PASSWORD, DATABASE = "app", "apppass", "app"
ROLES = ("iso_m1", "iso_m2")  # granted to app by setup_sql()
NOT_GRANTED = "iso_m3"
READ_TIMEOUT = 6.0  # longer than lock_timeout (2s) and the pool's acquire_timeout
NOTIFY_SETTLE = 1.0  # how long notifications may take to arrive on either side

SETUP_SQL = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iso_m1') THEN CREATE ROLE iso_m1; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iso_m2') THEN CREATE ROLE iso_m2; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iso_m3') THEN CREATE ROLE iso_m3; END IF;
END $$;
GRANT iso_m1 TO app;
GRANT iso_m2 TO app;
"""

# Parameters whose last reported value (ParameterStatus) the client must see the same on both sides.
REPORTED = ("application_name", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
            "is_superuser", "session_authorization", "client_encoding", "integer_datetimes")

OBSERVE_FIELDS = (
    "current_user", "session_user", "is_superuser", "search_path", "statement_timeout", "lock_timeout",
    "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings", "application_name",
    "default_transaction_read_only", "transaction_read_only", "default_transaction_isolation",
    "transaction_isolation", "work_mem", "extra_float_digits", "app.tenant_id", "app.flag",
    "temp relations", "temp functions", "SQL prepared statements", "cursors", "advisory locks",
    "LISTEN channels",
)
OBSERVE_SQL = """SELECT current_user, session_user, current_setting('is_superuser'),
 current_setting('search_path'), current_setting('statement_timeout'), current_setting('lock_timeout'),
 current_setting('DateStyle'), current_setting('TimeZone'), current_setting('IntervalStyle'),
 current_setting('standard_conforming_strings'), current_setting('application_name'),
 current_setting('default_transaction_read_only'), current_setting('transaction_read_only'),
 current_setting('default_transaction_isolation'), current_setting('transaction_isolation'),
 current_setting('work_mem'), current_setting('extra_float_digits'),
 coalesce(current_setting('app.tenant_id', true), ''), coalesce(current_setting('app.flag', true), ''),
 (SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_catalog.pg_class
   WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
 (SELECT coalesce(string_agg(proname, ',' ORDER BY proname), '') FROM pg_catalog.pg_proc
   WHERE pronamespace = pg_catalog.pg_my_temp_schema()),
 (SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_catalog.pg_prepared_statements WHERE from_sql),
 (SELECT coalesce(string_agg(name || CASE WHEN is_holdable THEN '(hold)' ELSE '' END, ',' ORDER BY name), '')
   FROM pg_catalog.pg_cursors WHERE name <> ''),
 (SELECT coalesce(string_agg(objid::text || ':' || mode, ',' ORDER BY objid, mode), '') FROM pg_catalog.pg_locks
   WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),
 (SELECT coalesce(string_agg(c, ',' ORDER BY c), '') FROM pg_catalog.pg_listening_channels() c)"""
_NO_TEMP_OBJECT = ("3F000", "42883", "42P01", "42704")
_HELD = ("temp relations", "temp functions", "SQL prepared statements", "cursors", "advisory locks",
         "LISTEN channels")


# ============================================================================ steps


@dataclass(frozen=True)
class Step:
    """One thing client `client` does. `sql` is a simple Query; `proto` extended-protocol actions."""

    client: int
    kind: str
    sql: str = ""
    proto: tuple[tuple[str, ...], ...] = ()

    def show(self) -> str:
        if self.kind == "reconnect":
            return f"c{self.client}: (disconnect, connect again)"
        if self.proto:
            parts = []
            for action in self.proto:
                if action[0] == "parse":
                    parts.append(f"Parse {action[1]!r} AS {action[2]}")
                elif action[0] == "exec":
                    parts.append(f"Bind+Execute {action[1]!r}")
                elif action[0] == "close":
                    parts.append(f"Close statement {action[1]!r}")
            return f"c{self.client}: [protocol] " + "; ".join(parts) + "; Sync"
        return f"c{self.client}: {self.sql}"


Gen = Callable[[random.Random, int, int], "str | tuple[tuple[str, ...], ...]"]


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def _guc(rng: random.Random) -> tuple[str, str]:
    return rng.choice([
        ("search_path", _pick(rng, "public", "pg_catalog, public", "nowhere", '"$user", public')),
        ("statement_timeout", _pick(rng, "0", "30s", "1h")),
        ("DateStyle", _pick(rng, "SQL, DMY", "ISO, MDY", "German", "Postgres, YMD")),
        ("TimeZone", _pick(rng, "UTC", "Europe/Paris", "America/New_York")),
        ("IntervalStyle", _pick(rng, "postgres", "iso_8601", "sql_standard")),
        ("application_name", _pick(rng, "x1", "x2")),
        ("app.tenant_id", _pick(rng, "t1", "t2")),
        ("app.flag", _pick(rng, "f1", "f2")),
        ("standard_conforming_strings", _pick(rng, "on", "off")),
        ("default_transaction_read_only", _pick(rng, "on", "off")),
        ("work_mem", _pick(rng, "8MB", "16MB")),
        ("extra_float_digits", _pick(rng, "0", "1", "3")),
    ])


def _q(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _n(rng: random.Random) -> int:
    return rng.randint(1, 2)  # few names: more collisions and reuse


CATALOGUE: dict[str, tuple[int, Gen]] = {
    # --- settings
    "set": (10, lambda r, c, s: (lambda g: f"SET {g[0]} = {_q(g[1])}")(_guc(r))),
    "set-local": (3, lambda r, c, s: (lambda g: f"SET LOCAL {g[0]} = {_q(g[1])}")(_guc(r))),
    "reset": (3, lambda r, c, s: f"RESET {_guc(r)[0]}"),
    "reset-all": (1, lambda r, c, s: "RESET ALL"),
    "set_config-select": (5, lambda r, c, s: (lambda g: f"SELECT set_config({_q(g[0])}, {_q(g[1])}, "
                                                       f"{_pick(r, 'false', 'true')})")(_guc(r))),
    "set_config-from": (3, lambda r, c, s: (lambda g: f"SELECT * FROM set_config({_q(g[0])}, {_q(g[1])}, "
                                                     f"{_pick(r, 'false', 'true')})")(_guc(r))),
    "session-characteristics": (1, lambda r, c, s: "SET SESSION CHARACTERISTICS AS TRANSACTION "
                                + _pick(r, "READ ONLY", "READ WRITE", "ISOLATION LEVEL REPEATABLE READ")),
    "backslash-literal": (2, lambda r, c, s: "SELECT 'ab\\' AS x"),
    # SHOW of a custom parameter nobody set in this session: a fresh backend says 42704, a reused one
    # (even after DISCARD ALL) knows the placeholder and shows ''. Not something a pooler can hide: read
    # custom parameters with missing_ok instead.
    "show": (2, lambda r, c, s: (lambda g: f"SHOW {g}" if not g.startswith("app.") else
                                 f"SELECT coalesce(current_setting('{g}', true), '')")(_guc(r)[0])),
    # --- roles
    "set-role": (3, lambda r, c, s: f"SET ROLE {_pick(r, *ROLES, NOT_GRANTED)}"),
    "reset-role": (2, lambda r, c, s: _pick(r, "RESET ROLE", "SET ROLE NONE")),
    "set_config-role": (2, lambda r, c, s: f"SELECT set_config('role', {_q(_pick(r, *ROLES))}, "
                                           f"{_pick(r, 'false', 'true')})"),
    "session-authorization": (2, lambda r, c, s: _pick(r, "SET SESSION AUTHORIZATION app", "SET SESSION AUTHORIZATION "
                                                       "DEFAULT", "RESET SESSION AUTHORIZATION",
                                                       f"SET SESSION AUTHORIZATION {ROLES[0]}")),
    # --- transactions and errors
    "begin": (7, lambda r, c, s: _pick(r, "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ", "BEGIN READ ONLY",
                                       "START TRANSACTION")),
    "commit": (6, lambda r, c, s: _pick(r, "COMMIT", "END")),
    "rollback": (4, lambda r, c, s: "ROLLBACK"),
    "savepoint": (2, lambda r, c, s: _pick(r, "SAVEPOINT sp", "ROLLBACK TO SAVEPOINT sp", "RELEASE SAVEPOINT sp")),
    "error": (3, lambda r, c, s: _pick(r, "SELECT 1/0", "SELECT * FROM iso_no_such_table",
                                       "DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$")),
    "multi-statement": (2, lambda r, c, s: _pick(
        r,
        "SET search_path = nowhere; SELECT 1/0",
        "BEGIN; SET app.tenant_id = 'tm'; COMMIT",
        "BEGIN; SET application_name = 'xm'; ROLLBACK",
        "SET LOCAL work_mem = '1MB'; SELECT current_setting('work_mem')",
        "SELECT 1; SELECT set_config('app.flag', 'fm', false)",
    )),
    # --- DO blocks
    "do": (4, lambda r, c, s: _pick(
        r,
        "DO $$ BEGIN PERFORM set_config('search_path', 'nowhere', false); END $$",
        "DO $$ BEGIN PERFORM set_config('app.tenant_id', 'tdo', false); END $$",
        f"DO $$ BEGIN EXECUTE 'SET ROLE {ROLES[1]}'; END $$",
        "DO $$ BEGIN EXECUTE 'LISTEN {ch}1'; END $$",
        "DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE tt_do (x int)'; END $$",
        "DO $$ BEGIN PERFORM pg_advisory_lock({lk} + 7); END $$",
        "DO $$ BEGIN EXECUTE 'SET standard_conforming_strings = off'; END $$",
    )),
    # --- temp objects
    "temp-create": (4, lambda r, c, s: _pick(
        r, f"CREATE TEMP TABLE tt{_n(r)} (x int)", f"CREATE TABLE pg_temp.tt{_n(r)} (x int)",
        f"SELECT 1 AS x INTO TEMP tt{_n(r)}", f"CREATE TEMP TABLE tt{_n(r)} AS SELECT 1 AS x",
        f"CREATE TEMP TABLE ttc{_n(r)} (x int) ON COMMIT DROP")),
    "temp-use": (3, lambda r, c, s: _pick(r, f"INSERT INTO tt{_n(r)} VALUES ({c})", f"SELECT count(*) FROM tt{_n(r)}",
                                          f"DROP TABLE tt{_n(r)}", "DISCARD TEMP")),
    "temp-function": (2, lambda r, c, s: _pick(
        r, f"CREATE FUNCTION pg_temp.tf{_n(r)}() RETURNS int LANGUAGE sql AS 'SELECT {c}'",
        f"SELECT pg_temp.tf{_n(r)}()", f"DROP FUNCTION pg_temp.tf{_n(r)}()")),
    # --- SQL prepared statements
    "prepare": (3, lambda r, c, s: f"PREPARE ps{_n(r)} AS SELECT 'c{c}-' || {s}::text"),
    "execute": (3, lambda r, c, s: f"EXECUTE ps{_n(r)}"),
    "deallocate": (2, lambda r, c, s: _pick(r, f"DEALLOCATE ps{_n(r)}", "DEALLOCATE ALL",
                                            f"DEALLOCATE PREPARE ps{_n(r)}")),
    "discard": (2, lambda r, c, s: _pick(r, "DISCARD ALL", "DISCARD PLANS", "DISCARD SEQUENCES")),
    # --- protocol-level named statements, same names in every client
    "proto-parse": (4, lambda r, c, s: (("parse", f"s{_n(r)}", f"SELECT 'c{c}-{s}'::text"),)),
    "proto-exec": (5, lambda r, c, s: (("exec", f"s{_n(r)}"),)),
    "proto-parse-exec": (3, lambda r, c, s: (lambda n: (("parse", n, f"SELECT 'c{c}-{s}'::text"),
                                                        ("exec", n)))(f"s{_n(r)}" if r.random() < 0.5 else "")),
    "proto-close": (2, lambda r, c, s: (("close", f"s{_n(r)}"),)),
    # --- LISTEN / NOTIFY
    "listen": (3, lambda r, c, s: _pick(r, f"LISTEN {{ch}}{_n(r)}", f"UNLISTEN {{ch}}{_n(r)}", "UNLISTEN *")),
    "notify": (4, lambda r, c, s: _pick(r, f"NOTIFY {{ch}}{_n(r)}, 'c{c}-{s}'",
                                        f"SELECT pg_notify('{{ch}}{_n(r)}', 'c{c}-{s}')")),
    # --- advisory locks (keys per side and client: twins never block each other)
    "advisory": (4, lambda r, c, s: _pick(
        r, f"SELECT pg_advisory_lock({{lk}} + {_n(r)})", f"SELECT pg_try_advisory_lock({{lk}} + {_n(r)})",
        f"SELECT pg_advisory_unlock({{lk}} + {_n(r)})", "SELECT pg_advisory_unlock_all()",
        f"SELECT pg_advisory_xact_lock({{lk}} + {_n(r)})", "SELECT pg_advisory_lock_shared({lk} + 5)")),
    # --- cursors
    "cursor": (3, lambda r, c, s: _pick(
        r, f"DECLARE hc{_n(r)} CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g",
        f"DECLARE cc{_n(r)} CURSOR FOR SELECT g FROM generate_series(1, 5) g",
        f"FETCH 1 FROM hc{_n(r)}", f"FETCH 1 FROM cc{_n(r)}", f"CLOSE hc{_n(r)}", "CLOSE ALL")),
    "reconnect": (2, lambda r, c, s: ""),
}


def generate_step(rng: random.Random, client: int, serial: int, in_tx: bool, holder: bool,
                  exclude: frozenset[str] = frozenset()) -> Step:
    kinds = [k for k in CATALOGUE if k not in exclude]
    weights = []
    for k in kinds:
        w = CATALOGUE[k][0]
        if in_tx and k in ("commit", "rollback"):
            w *= 3  # transactions end
        if holder and k == "reconnect":
            w *= 3  # a client holding a server eventually lets go
        weights.append(w)
    kind = rng.choices(kinds, weights)[0]
    made = CATALOGUE[kind][1](rng, client, serial)
    if isinstance(made, tuple):
        return Step(client, kind, proto=made)
    return Step(client, kind, sql=made)


# ============================================================================ one side of a twin


class Wire:
    """A raw protocol session (to the proxy or directly to the primary) with what it has received."""

    def __init__(self, side: str, host: str, port: int, client: int, ch: str, lk: int) -> None:
        self.side, self.client, self.ch, self.lk = side, client, ch, lk
        self.raw = RawPg(host, port, timeout=READ_TIMEOUT)
        self.notifications: list[str] = []
        self.params: dict[str, str] = {}
        self.status = "I"
        self.closed = False
        self.stray: list[str] = []  # messages that arrived without being asked for
        self.rows: list[list[str | None]] = []  # the data rows of the last request
        try:
            self.raw.login(USER, PASSWORD, DATABASE, application_name=f"c{client}",
                           options=f"-c lock_timeout=2s -c app.flag=s{client}")
        except ServerError as exc:
            raise ConnectionError(f"{side} login failed: {exc}") from exc
        self.params = {k: v for k, v in self.raw.params.items() if k in REPORTED}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with suppress(ConnectionClosed, OSError):
                self.raw.send(b"X\x00\x00\x00\x04")
            self.raw.close()

    def subst(self, text: str) -> str:
        return text.replace("{ch}", self.ch).replace("{lk}", str(self.lk))

    def norm(self, text: str) -> str:
        return text.replace(self.ch, "{ch}")

    def _async(self, kind: str, body: bytes) -> bool:
        """Record a message that may arrive at any time; False if it is not one of those."""
        if kind == "A":
            channel, payload = body[4:].split(b"\x00")[:2]
            self.notifications.append(f"{self.norm(channel.decode())}:{payload.decode()}")
        elif kind == "S":
            name, value = body.split(b"\x00")[:2]
            if name.decode() in REPORTED:
                self.params[name.decode()] = value.decode()
        elif kind != "N":
            return False
        return True

    def poll(self, timeout: float) -> None:
        """Read whatever arrives within `timeout` without asking; anything but async messages is stray."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if not self.raw.pending:
                left = max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([self.raw.sock], [], [], left)
                if not ready:
                    return
            try:
                kind, body = self.raw.read_message(timeout=READ_TIMEOUT)
            except ConnectionClosed:
                self.stray.append("connection closed")
                self.closed = True
                return
            except TimeoutError:
                self.stray.append("partial message")
                return
            if not self._async(kind, body):
                fields = error_fields(body) if kind == "E" else {}
                self.stray.append(f"{kind} {fields.get('S', '')} {fields.get('C', '')} {fields.get('M', '')}".strip()
                                  if kind == "E" else f"{kind} {body[:40]!r}")

    def request(self, data: bytes) -> list[str]:
        """Send, read up to ReadyForQuery; the answer as comparable lines (async messages recorded aside)."""
        if self.closed:
            return ["(connection closed)"]
        out: list[str] = []
        self.rows = []
        try:
            self.raw.send(data)
            while True:
                kind, body = self.raw.read_message()
                if kind == "N":
                    f = error_fields(body)
                    out.append(f"notice {f.get('S')} {f.get('C')}")
                    continue
                if self._async(kind, body):
                    continue
                if kind == "E":
                    f = error_fields(body)
                    message = self.norm(f.get("M", ""))
                    if f.get("C") in _NO_TEMP_OBJECT and "pg_temp" in message:
                        # Whether "pg_temp" exists yet depends on the backend's past, not the session's.
                        out.append("error ERROR (a pg_temp object that does not exist)")
                        continue
                    out.append(f"error {f.get('S')} {f.get('C')} {message}")
                    if f.get("S") == "FATAL":
                        self.closed = True
                        out.append("(connection closed)")
                        return out
                elif kind == "D":
                    row = [self.norm(v) if v is not None else None for v in data_rows([(kind, body)])[0]]
                    self.rows.append(row)
                    out.append(f"row {row}")
                elif kind == "C":
                    out.append(f"complete {body.rstrip(bytes(1)).decode()}")
                elif kind == "Z":
                    self.status = chr(body[0])
                    out.append(f"ready {self.status}")
                    return out
                elif kind in "123ntsI":
                    out.append({"1": "parse-complete", "2": "bind-complete", "3": "close-complete",
                                "n": "no-data", "t": "parameter-description", "s": "suspended",
                                "I": "empty-query"}[kind])
                elif kind == "T":
                    continue  # column names follow from the statement; rows are compared
                else:
                    out.append(f"{kind} {body[:40]!r}")
        except ConnectionClosed:
            self.closed = True
            out.append("(connection closed)")
        except TimeoutError:
            out.append(f"(no answer within {READ_TIMEOUT}s)")
            self.close()
        return out

    def run(self, step: Step) -> list[str]:
        if step.proto:
            data = b""
            for action in step.proto:
                if action[0] == "parse":
                    data += extmsg.parse(action[1], action[2])
                elif action[0] == "exec":
                    data += extmsg.bind(action[1]) + extmsg.execute()
                elif action[0] == "close":
                    data += extmsg.close(b"S", action[1])
            return self.request(data + extmsg.sync())
        return self.request(query_msg(self.subst(step.sql)))

    def observe(self) -> dict[str, str]:
        lines = self.request(query_msg(OBSERVE_SQL))
        if len(self.rows) != 1:
            return {"observation": " | ".join(lines)}
        obs = {k: v or "" for k, v in zip(OBSERVE_FIELDS, self.rows[0], strict=True)}
        locks = []
        for item in filter(None, obs["advisory locks"].split(",")):
            objid, mode = item.split(":")
            locks.append(f"{{lk}}{int(objid) - self.lk:+d}:{mode}")
        obs["advisory locks"] = ",".join(locks)
        obs["transaction status"] = self.status
        for k in REPORTED:
            obs[f"reported {k}"] = self.params.get(k, "(none)")
        return obs


# ============================================================================ twins and a run


@dataclass
class Divergence:
    step_index: int  # index in the sequence of the step after which it showed
    client: int
    what: str  # "answer", an observation field, "stray message", "proxy log"
    proxy: str
    direct: str

    @property
    def signature(self) -> str:
        return self.what

    def describe(self) -> str:
        return (f"client c{self.client}, {self.what}:\n      through the proxy: {self.proxy}\n"
                f"      direct to PostgreSQL: {self.direct}")


class Blocked(Exception):
    """The proxy answered 53300 (no server free within acquire_timeout) to the step or to the observation.

    `ran`: the step itself ran on both sides (only the observation after it found no server).
    """

    def __init__(self, message: str, ran: bool = False) -> None:
        super().__init__(message)
        self.ran = ran


@dataclass
class Twin:
    proxy: Wire
    direct: Wire
    holds: bool = False  # has held session state since it connected (the proxy may keep it pinned)

    def close(self) -> None:
        self.proxy.close()
        self.direct.close()


@dataclass
class Endpoint:
    host: str
    port: int


class World:
    """N twins: proxy sessions and their direct sessions."""

    def __init__(self, proxy: Endpoint, direct: Endpoint, clients: int, nonce: str, key_base: int) -> None:
        self.proxy_ep, self.direct_ep = proxy, direct
        self.nonce, self.key_base = nonce, key_base  # key_base: advisory lock keys of this world
        self.twins: list[Twin] = []
        for i in range(clients):
            self.twins.append(self._connect(i))

    def _connect(self, i: int) -> Twin:
        base = self.key_base + i * 1000
        return Twin(
            Wire("proxy", self.proxy_ep.host, self.proxy_ep.port, i, f"hpm{self.nonce}p_", base),
            Wire("direct", self.direct_ep.host, self.direct_ep.port, i, f"hpm{self.nonce}d_", base + 500),
        )

    def close(self) -> None:
        for t in self.twins:
            t.close()

    def step(self, index: int, step: Step) -> Divergence | None:
        """Run `step` on both sides and compare; raise Blocked if the proxy had no server for it."""
        twin = self.twins[step.client]
        if twin.proxy.closed and twin.direct.closed:  # both sessions ended (e.g. FATAL): a new one
            twin = self.twins[step.client] = self._connect(step.client)
        for i, t in enumerate(self.twins):  # nothing may arrive unasked (notifications aside)
            for w in (t.proxy, t.direct):
                w.poll(0.0)
            if t.proxy.stray or t.direct.stray:
                return Divergence(index, i, "messages nobody asked for", "; ".join(t.proxy.stray) or "(none)",
                                  "; ".join(t.direct.stray) or "(none)")
        if step.kind == "reconnect":
            twin.close()
            self.twins[step.client] = twin = self._connect(step.client)
        else:
            got_p = twin.proxy.run(step)
            if got_p[:1] and got_p[0].startswith("error ERROR 53300"):
                raise Blocked(got_p[0])
            got_d = twin.direct.run(step)
            if got_p != got_d:
                return Divergence(index, step.client, "answer to the step", " / ".join(got_p), " / ".join(got_d))
        return self.compare(index, step.client)

    def compare(self, index: int, client: int) -> Divergence | None:
        twin = self.twins[client]
        if twin.proxy.closed != twin.direct.closed:
            return Divergence(index, client, "connection open", str(not twin.proxy.closed), str(not twin.direct.closed))
        if twin.proxy.closed:
            return None
        # Notifications travel asynchronously: give both sides a moment to agree.
        deadline = time.monotonic() + NOTIFY_SETTLE
        while twin.proxy.notifications != twin.direct.notifications and time.monotonic() < deadline:
            twin.proxy.poll(0.05)
            twin.direct.poll(0.05)
        obs_p, obs_d = twin.proxy.observe(), twin.direct.observe()
        if obs_p.get("observation", "").startswith("error ERROR 53300"):
            raise Blocked(obs_p["observation"], ran=True)
        if twin.proxy.notifications != twin.direct.notifications:
            return Divergence(index, client, "notifications received", str(twin.proxy.notifications),
                              str(twin.direct.notifications))
        order = ("observation", *OBSERVE_FIELDS)
        for k in sorted(set(obs_p) | set(obs_d), key=lambda k: (order.index(k) if k in order else len(order), k)):
            if obs_p.get(k) != obs_d.get(k):
                return Divergence(index, client, k, repr(obs_p.get(k)), repr(obs_d.get(k)))
        twin.holds = twin.holds or any(obs_d.get(k) for k in _HELD) or obs_d.get("current_user") != USER
        return None


# ============================================================================ driving, replaying, shrinking


@dataclass
class Config:
    seed: int
    steps: int
    clients: int
    pool_size: int
    exclude: frozenset[str] = frozenset()
    shrink_replays: int = 60
    shrink_seconds: float = 120.0
    replay_hint: str = ""  # the command that runs this configuration again


@dataclass
class Outcome:
    config: Config
    sequence: list[Step] = field(default_factory=list)
    divergence: Divergence | None = None
    shrunk: list[Step] = field(default_factory=list)
    shrunk_divergence: Divergence | None = None
    replays: int = 0
    blocked: int = 0
    proxy_log: str = ""
    note: str = ""  # what shrinking found out about reproducibility

    def report(self) -> str:
        c = self.config
        if self.divergence is None:
            return (f"seed {c.seed}, pool size {c.pool_size}, {c.clients} clients: {len(self.sequence)} steps, "
                    "no divergence")
        seq, div = (self.shrunk, self.shrunk_divergence) if self.shrunk_divergence else (self.sequence, self.divergence)
        assert div is not None
        lines = [
            f"DIVERGENCE: seed {c.seed}, pool size {c.pool_size}, {c.clients} clients "
            f"(found after {self.divergence.step_index + 1} steps; shortest sequence found: {len(seq)} steps, "
            f"{self.replays} replays on fresh proxies):",
        ]
        shown = 40  # a sequence that could not be shrunk: its end says the most
        if len(seq) > shown:
            lines.append(f"  ... {len(seq) - shown} earlier steps (all of them: ISOLATION_SHOW_ALL=1) ...")
        for i, st in enumerate(seq):
            if len(seq) - i > shown and not os.environ.get("ISOLATION_SHOW_ALL"):
                continue
            mark = "  <-- diverges here" if i == div.step_index else ""
            lines.append(f"  {i + 1:3d}. {st.show()}   [{st.kind}]{mark}")
        lines.append("  then " + div.describe())
        if self.note:
            lines.append(f"  note: {self.note}")
        if c.replay_hint:
            lines.append(f"  (run again: {c.replay_hint})")
        if self.proxy_log:
            lines.append("  proxy log (tail):\n" + "\n".join("    " + x for x in self.proxy_log.splitlines()[-15:]))
        return "\n".join(lines)


class Model:
    """Runs sequences: `explore` generates one step at a time; `replay` runs a fixed sequence; `shrink`."""

    def __init__(self, start_proxy: Callable[[int], AbstractContextManager[Endpoint]], direct: Endpoint) -> None:
        self.start_proxy = start_proxy  # pool size -> a fresh proxy for the time of the context
        self.direct = direct
        self.runs = 0

    @contextmanager
    def _world(self, clients: int, pool_size: int) -> Iterator[World]:
        self.runs += 1
        nonce = f"{int(time.time() * 1000) % 100000:05d}{self.runs:03d}"
        key_base = 100_000 + (self.runs % 1000) * 10_000  # fresh keys per run: no lock of a dying backend blocks
        with self.start_proxy(pool_size) as ep:
            world = World(ep, self.direct, clients, nonce, key_base)
            try:
                yield world
            finally:
                world.close()

    def explore(self, cfg: Config) -> Outcome:
        rng = random.Random(cfg.seed)
        out = Outcome(cfg)
        with self._world(cfg.clients, cfg.pool_size) as world:
            serial = 0
            while len(out.sequence) < cfg.steps:
                serial += 1
                twins = world.twins
                in_tx = [t.direct.status != "I" for t in twins]
                holders = [i for i, t in enumerate(twins) if in_tx[i] or t.holds]
                # A client may only start using a server if one is free: otherwise it would wait
                # (legitimately) for another client's transaction or pinned session.
                eligible = holders if len(holders) >= cfg.pool_size else list(range(len(twins)))
                client = rng.choice(eligible)
                step = generate_step(rng, client, serial, in_tx[client], client in holders, cfg.exclude)
                try:
                    div = world.step(len(out.sequence), step)
                except Blocked as exc:
                    out.blocked += 1
                    if exc.ran:
                        out.sequence.append(step)
                    # The proxy keeps a server for a client the model does not count as holding one:
                    # let every other client go, once, and carry on.
                    for i in range(len(twins)):
                        if i != client:
                            world.twins[i].close()
                            world.twins[i] = world._connect(i)
                            out.sequence.append(Step(i, "reconnect"))
                    continue
                out.sequence.append(step)
                if div is not None:
                    out.divergence = div
                    break
        return out

    def replay(self, seq: list[Step], clients: int, pool_size: int) -> Divergence | None:
        """The first divergence of `seq` on a fresh proxy; what="blocked" if the proxy had no server for a step."""
        with self._world(clients, pool_size) as world:
            for i, step in enumerate(seq):
                try:
                    div = world.step(i, step)
                except Blocked as exc:
                    return Divergence(i, step.client, "blocked", str(exc), "(runs)")
                if div is not None:
                    return div
        return None

    def shrink(self, out: Outcome) -> None:
        """Shortest subsequence (greedy delta debugging) that still shows a divergence of the same kind."""
        assert out.divergence is not None
        cfg = out.config
        best = out.sequence[: out.divergence.step_index + 1]
        deadline = time.monotonic() + cfg.shrink_seconds

        def replay(candidate: list[Step]) -> Divergence | None:
            out.replays += 1
            return self.replay(candidate, cfg.clients, cfg.pool_size)

        # The replay of the whole prefix must show it again; if it shows another divergence instead
        # (timing), shrink that one when it reproduces.
        first = replay(best)
        if first is None:
            out.note = "replaying the sequence on a fresh proxy showed no divergence: it depends on timing"
            return
        if first.what == "blocked":
            out.note = (f"replaying the sequence on a fresh proxy, step {first.step_index + 1} found no free server "
                        "(53300): another client kept it longer than when exploring (timing)")
            return
        if first.signature != out.divergence.signature:
            again = replay(best[: first.step_index + 1])
            if again is None or again.signature != first.signature:
                out.note = (f"replaying the sequence on a fresh proxy diverged differently (step "
                            f"{first.step_index + 1}, {first.what}) and not reproducibly: it depends on timing")
                return
            out.note = (f"replaying the sequence on a fresh proxy diverged earlier, at step {first.step_index + 1}; "
                        "that divergence is the one shrunk")
        target = first.signature
        best, best_div = best[: first.step_index + 1], first

        def still_fails(candidate: list[Step]) -> Divergence | None:
            if out.replays >= cfg.shrink_replays or time.monotonic() > deadline:
                return None
            div = replay(candidate)
            return div if div is not None and div.signature == target else None

        # Drop whole clients first, then chunks of decreasing size, then single steps.
        for c in range(cfg.clients):
            cand = [s for s in best if s.client != c]
            if cand and cand != best and (d := still_fails(cand)) is not None:
                best, best_div = cand[: d.step_index + 1], d
        chunk = max(1, len(best) // 2)
        while chunk >= 1:
            i = 0
            while i < len(best):
                cand = best[:i] + best[i + chunk:]
                d = still_fails(cand) if cand else None
                if d is not None:
                    best, best_div = cand[: d.step_index + 1], d
                else:
                    i += chunk
            if out.replays >= cfg.shrink_replays or time.monotonic() > deadline:
                break
            chunk //= 2
        out.shrunk, out.shrunk_divergence = best, best_div
