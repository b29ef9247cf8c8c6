"""Classify SQL with pglast into a cached, immutable StatementInfo (read/write, tx, effects)."""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pglast import parser as _pg

from heliosproxy.config.schema import DEFAULT_WRITE_FUNCTIONS

__all__ = [
    "Classifier",
    "ClassifierStats",
    "Effect",
    "SignalCall",
    "StatementInfo",
    "TxControl",
    "classify_uncached",
    "count_statements",
    "ddl_databases",
]


class TxControl(enum.Enum):
    """Transaction-control kinds (`END` and `COMMIT AND CHAIN` are COMMIT, `ABORT` is ROLLBACK)."""

    BEGIN = "begin"
    BEGIN_READ_ONLY = "begin_read_only"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback_to"
    PREPARE_TRANSACTION = "prepare_transaction"
    COMMIT_PREPARED = "commit_prepared"
    ROLLBACK_PREPARED = "rollback_prepared"


class Effect:
    """Session-state effects of a statement string (union over its statements): bits of an int.

    Plain int masks, not enum.Flag: the session tests them per statement, and int arithmetic costs
    no Python call."""

    NONE: Final = 0
    SET: Final = 1 << 0  # session-level SET of a GUC (incl. SET ... TO DEFAULT, SET ROLE, ...)
    RESET: Final = 1 << 1  # RESET name / RESET ALL
    DISCARD: Final = 1 << 2  # DISCARD ALL only (PLANS/SEQUENCES/TEMP are not flagged)
    LISTEN: Final = 1 << 3
    UNLISTEN: Final = 1 << 4
    PREPARE: Final = 1 << 5  # SQL-level PREPARE
    DEALLOCATE: Final = 1 << 6  # SQL-level DEALLOCATE [ALL]
    HOLD_CURSOR: Final = 1 << 7  # DECLARE ... WITH HOLD
    TEMP_TABLE: Final = 1 << 8  # CREATE TEMP TABLE/VIEW/SEQUENCE, CREATE TABLE AS / SELECT INTO TEMP
    ADVISORY_LOCK: Final = 1 << 9  # session-level pg_[try_]advisory_lock[_shared] (not the xact ones)
    SET_LOCAL: Final = 1 << 10  # SET LOCAL of a GUC (transaction-scoped)
    # Session effects the proxy cannot model exactly: any DO, set_config() other than the plain
    # `SELECT set_config(const, const, const)`, dblink*, temp-schema DDL of other kinds. The
    # client is pinned to its server connection (reset before anyone else gets it).
    DIRTY: Final = 1 << 11
    # set_config() of a known setting whose value (or whether it runs) is only known at run
    # time: the proxy reads the setting back right after the statement (`readback` names).
    READBACK: Final = 1 << 12
    # The two below are answered by the proxy itself and never sent to a backend.
    HELIOS_SET: Final = 1 << 13  # SET / RESET helios.*
    HELIOS_SHOW: Final = 1 << 14  # SHOW helios.*


Setting = tuple[str, str | None, bool]


@dataclass(frozen=True, slots=True)
class SignalCall:
    """A statement that is exactly `SELECT [pg_catalog.]pg_cancel_backend(pid) [AS name]` or
    `SELECT [pg_catalog.]pg_terminate_backend(pid[, timeout]) [AS name]` (session/pidmap.py).

    args: per argument, ("const", value) for an integer literal (optionally cast) or
    ("param", n) for the parameter $n (optionally cast); an argument of any other shape makes
    the statement not a SignalCall."""

    function: str  # "pg_cancel_backend" | "pg_terminate_backend"
    column: str  # the result column's name: the alias, else the function's name
    args: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What the proxy needs to know about one query string (one or more statements).

    read_only: certainly read-only (SELECT/VALUES/SHOW/EXPLAIN rules); False for transaction
        control statements (routing looks at `tx` first), SET/RESET, anything else, and
        unparseable text. A string with zero statements (empty / comments only) is False too.
    settings: SET/RESET entries `(name lowercased, value or None, is_local)`. The value is the
        flattened text PostgreSQL itself would store (list elements joined by ", ", identifiers
        quoted for list GUCs such as search_path) and can be replayed with
        `SELECT pg_catalog.set_config(name, value, is_local)`. None means RESET or
        `SET ... TO DEFAULT`; `RESET ALL` is `("all", None, False)`. `SET TRANSACTION ...` adds
        nothing (it only affects the current transaction); `SET SESSION CHARACTERISTICS AS
        TRANSACTION ...` adds the equivalent `default_transaction_isolation` /
        `default_transaction_read_only` / `default_transaction_deferrable` entries.
        `SHOW helios.x` adds `("helios.x", None, False)` (tell it from RESET by Effect.HELIOS_SHOW).
    """

    read_only: bool
    kinds: tuple[str, ...]
    tables: tuple[str, ...]
    normalized: str
    fingerprint: str
    tx: TxControl | None
    effects: int  # Effect bits
    settings: tuple[Setting, ...]
    statements: int
    parse_error: bool
    pins: bool
    # DEALLOCATE targets in order: a name, or None for DEALLOCATE ALL.
    deallocate: tuple[str | None, ...] = ()
    # Calls a function that is not a PostgreSQL built-in (or CALLs a procedure): its session
    # effects are unknown (pool.strict_isolation pins such clients).
    calls_unknown: bool = False
    # Settings to read back from the server after the statement (Effect.READBACK).
    readback: tuple[str, ...] = ()
    # Functions called that are not schema-qualified with pg_catalog nor in write_functions, as
    # (schema or None, lowercased name, argument count): routing checks their volatility in pg_proc.
    functions: tuple[tuple[str | None, str, int], ...] = ()
    ddl: bool = False  # a statement other than DML/queries/session commands (may change the catalog)
    # The whole string is one `SELECT pg_cancel_backend(..)` / `pg_terminate_backend(..)` call.
    signal: SignalCall | None = None
    # Calls a volatile built-in, a time function (now(), CURRENT_TIMESTAMP, ...) or a stable one that
    # reads the session, catalog or statistics: its answer may differ between two runs (result cache).
    volatile: bool = False


_ADVISORY_SESSION_LOCKS: Final = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    }
)
# Statement kinds that execute their contents now (function calls inside them really run).
_EXECUTING: Final = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "CreateTableAsStmt",
        "CopyStmt",
        "CallStmt",
        "DeclareCursorStmt",
    }
)
# Statement kinds whose temp RangeVar (relpersistence 't') means a temp relation is created.
_CREATING: Final = frozenset({"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt", "SelectStmt"})
_WRITE_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_SPECIAL_KEYS: Final = _WRITE_NODES | {"FuncCall", "SelectStmt", "CommonTableExpr", "SQLValueFunction"}
# CURRENT_DATE, CURRENT_TIME[STAMP], LOCALTIME[STAMP] (with or without a precision): the clock.
_TIME_VALUE_OPS: Final = frozenset(
    {
        "SVFOP_CURRENT_DATE", "SVFOP_CURRENT_TIME", "SVFOP_CURRENT_TIME_N", "SVFOP_CURRENT_TIMESTAMP",
        "SVFOP_CURRENT_TIMESTAMP_N", "SVFOP_LOCALTIME", "SVFOP_LOCALTIME_N", "SVFOP_LOCALTIMESTAMP",
        "SVFOP_LOCALTIMESTAMP_N",
    }
)
# GUCs flagged GUC_LIST_QUOTE in PostgreSQL: their list elements are identifier-quoted.
_LIST_QUOTE_GUCS: Final = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "local_preload_libraries",
        "shared_preload_libraries",
        "unix_socket_directories",
    }
)
_TX_KINDS: Final = {
    "TRANS_STMT_BEGIN": TxControl.BEGIN,
    "TRANS_STMT_START": TxControl.BEGIN,
    "TRANS_STMT_COMMIT": TxControl.COMMIT,
    "TRANS_STMT_ROLLBACK": TxControl.ROLLBACK,
    "TRANS_STMT_SAVEPOINT": TxControl.SAVEPOINT,
    "TRANS_STMT_RELEASE": TxControl.RELEASE,
    "TRANS_STMT_ROLLBACK_TO": TxControl.ROLLBACK_TO,
    "TRANS_STMT_PREPARE": TxControl.PREPARE_TRANSACTION,
    "TRANS_STMT_COMMIT_PREPARED": TxControl.COMMIT_PREPARED,
    "TRANS_STMT_ROLLBACK_PREPARED": TxControl.ROLLBACK_PREPARED,
}
_SESSION_CHARACTERISTICS: Final = {
    "transaction_isolation": "default_transaction_isolation",
    "transaction_read_only": "default_transaction_read_only",
    "transaction_deferrable": "default_transaction_deferrable",
}
# Statement kinds that do not change the catalog (anything else may create or alter a function).
_NOT_DDL: Final = frozenset(
    {
        "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TransactionStmt",
        "VariableSetStmt", "VariableShowStmt", "ExplainStmt", "CopyStmt", "PrepareStmt", "ExecuteStmt",
        "DeallocateStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt", "ListenStmt",
        "UnlistenStmt", "NotifyStmt", "DiscardStmt", "LockStmt", "CallStmt", "VacuumStmt",
        "CheckPointStmt", "ConstraintsSetStmt",
    }
)
_CURSOR_OPT_HOLD: Final = 0x0020
_FALSE_WORDS: Final = frozenset({"false", "off", "0", "no"})
_SIMPLE_IDENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")


class _WriteFunctions:
    """The configured write-function list, split into unqualified and schema-qualified names."""

    __slots__ = ("plain", "qualified")

    def __init__(self, names: Iterable[str]) -> None:
        plain: set[str] = set()
        qualified: set[str] = set()
        for raw in names:
            name = raw.strip().lower()
            if name.startswith("pg_catalog."):
                name = name[len("pg_catalog.") :]
            if not name:
                continue
            (qualified if "." in name else plain).add(name)
        self.plain = frozenset(plain)
        self.qualified = frozenset(qualified)


def _func_name(fields: dict[str, Any]) -> list[str]:
    return [part.get("String", {}).get("sval", "").lower() for part in fields.get("funcname", ())]


class _Scan:
    """Facts collected while walking one statement's JSON tree."""

    __slots__ = (
        "adv_lock",
        "ctes",
        "dirty",
        "funcs",
        "into",
        "lock",
        "nested_write",
        "pg_temp",
        "ranges",
        "set_config",
        "temp",
        "unknown_call",
        "volatile",
        "write_call",
    )

    def __init__(self) -> None:
        self.ranges: list[dict[str, Any]] = []
        self.ctes: set[str] = set()
        self.write_call = False
        self.lock = False
        self.into = False
        self.nested_write = False
        self.adv_lock = False
        self.temp = False
        self.set_config: list[dict[str, Any]] = []  # set_config() calls (their FuncCall fields)
        self.dirty = False
        self.pg_temp = False  # something is named in a pg_temp schema
        self.unknown_call = False
        self.funcs: list[tuple[str | None, str, int]] = []
        self.volatile = False

    def walk(self, root: Any, wf: _WriteFunctions) -> None:
        stack: list[Any] = [root]
        pop = stack.pop
        push = stack.append
        extend = stack.extend
        special = _SPECIAL_KEYS
        while stack:
            node = pop()
            cls = node.__class__
            if cls is list:
                extend(node)
                continue
            if cls is not dict:
                continue
            if "relname" in node and "relpersistence" in node:
                self.ranges.append(node)
                if node["relpersistence"] == "t":
                    self.temp = True
                schema = node.get("schemaname")
                if schema and schema.startswith("pg_temp"):
                    self.pg_temp = True
            for key, val in node.items():
                cls = val.__class__
                if cls is dict:
                    if key in special:
                        self._special(key, val, wf)
                    push(val)
                elif cls is list:
                    extend(val)

    def _special(self, key: str, val: dict[str, Any], wf: _WriteFunctions) -> None:
        if key == "FuncCall":
            self._func(val, wf)
        elif key == "SelectStmt":
            if "lockingClause" in val:
                self.lock = True
            into = val.get("intoClause")
            if into is not None:
                self.into = True
                if _is_temp_rel(into.get("rel")):
                    self.temp = True
        elif key == "SQLValueFunction":
            if val.get("op") in _TIME_VALUE_OPS:
                self.volatile = True
        elif key == "CommonTableExpr":
            name = val.get("ctename")
            if name:
                self.ctes.add(name)
        else:  # InsertStmt / UpdateStmt / DeleteStmt / MergeStmt
            self.nested_write = True

    def _func(self, fields: dict[str, Any], wf: _WriteFunctions) -> None:
        names = _func_name(fields)
        if not names:
            return
        if names[0].startswith("pg_temp"):
            self.pg_temp = True
        last = names[-1]
        if last in _volatile_functions():
            self.volatile = True
        if (len(names) > 1 and names[-2] != "pg_catalog") or last not in _builtin_functions():
            self.unknown_call = True
        if last == "set_config":
            self.set_config.append(fields)
        elif last.startswith("dblink"):
            self.dirty = True
        if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
            if last in wf.plain:
                self.write_call = True
            elif len(names) == 1:
                self.funcs.append((None, last, len(fields.get("args", ()))))
            if last in _ADVISORY_SESSION_LOCKS:
                self.adv_lock = True
        elif ".".join(names) in wf.qualified:
            self.write_call = True
        else:
            self.funcs.append((names[-2], last, len(fields.get("args", ()))))


@functools.cache
def _builtin_functions() -> frozenset[str]:
    """Names of PostgreSQL's built-in functions (shipped list, read once)."""
    text = (Path(__file__).with_name("pg_catalog_functions.txt")).read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


@functools.cache
def _volatile_functions() -> frozenset[str]:
    """Built-ins whose answer may change between runs (shipped list, read once)."""
    text = (Path(__file__).with_name("pg_volatile_functions.txt")).read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def _is_temp_rel(rel: Any) -> bool:
    if not isinstance(rel, dict):
        return False
    if rel.get("relpersistence") == "t":
        return True
    schema = rel.get("schemaname")
    return isinstance(schema, str) and schema.startswith("pg_temp")


def _const_text(node: Any) -> str | None:
    """The text of a constant node (A_Const, String, Integer, ...) as PostgreSQL flattens it."""
    if not isinstance(node, dict):
        return None
    if "A_Const" in node:
        c = node["A_Const"]
        if "sval" in c:
            return str(c["sval"].get("sval", ""))
        if "ival" in c:
            return str(c["ival"].get("ival", 0))
        if "fval" in c:
            return str(c["fval"].get("fval", "0"))
        if "boolval" in c:
            return "true" if c["boolval"].get("boolval") else "false"
        return None
    if "String" in node:
        return str(node["String"].get("sval", ""))
    if "Integer" in node:
        return str(node["Integer"].get("ival", 0))
    if "Float" in node:
        return str(node["Float"].get("fval", "0"))
    if "Boolean" in node:
        return "true" if node["Boolean"].get("boolval") else "false"
    if "TypeCast" in node:  # SET TIME ZONE INTERVAL '...' : approximate with the literal
        return _const_text(node["TypeCast"].get("arg"))
    return None


def _quote_ident(name: str) -> str:
    if name and (name[0].isalpha() or name[0] == "_") and set(name) <= _SIMPLE_IDENT_CHARS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _flatten(name: str, args: list[Any]) -> str:
    parts: list[str] = []
    quote = name in _LIST_QUOTE_GUCS
    for arg in args:
        text = _const_text(arg)
        if text is None:
            text = ""
        is_string = isinstance(arg, dict) and "sval" in arg.get("A_Const", {})
        parts.append(_quote_ident(text) if quote and is_string else text)
    return ", ".join(parts)


def _defelem_bool(elem: dict[str, Any]) -> bool:
    """A DefElem's boolean value (absent arg means true), e.g. EXPLAIN (ANALYZE off)."""
    arg = elem.get("arg")
    if arg is None:
        return True
    text = _const_text(arg)
    return text is None or text.strip().lower() not in _FALSE_WORDS


class _Builder:
    """Accumulates a StatementInfo over the statements of one query string."""

    __slots__ = (
        "ctes",
        "deallocate",
        "effects",
        "funcs",
        "kinds",
        "ranges",
        "read_only",
        "readback",
        "sensitive",
        "settings",
        "signal",
        "tx",
        "tx_mark",
        "unknown_call",
        "volatile",
    )

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.ranges: list[dict[str, Any]] = []
        self.ctes: set[str] = set()
        self.read_only = True
        self.tx: TxControl | None = None
        self.effects = Effect.NONE
        self.settings: list[Setting] = []
        self.sensitive = False
        self.deallocate: list[str | None] = []
        self.unknown_call = False
        self.readback: list[str] = []
        self.tx_mark: int | None = None  # len(settings) at this string's BEGIN
        self.signal: SignalCall | None = None
        self.funcs: dict[tuple[str | None, str, int], None] = {}
        self.volatile = False

    def absorb(self, scan: _Scan) -> None:
        self.ranges.extend(scan.ranges)
        self.volatile = self.volatile or scan.volatile
        self.ctes |= scan.ctes
        for f in scan.funcs:
            self.funcs.setdefault(f, None)

    def tables(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for rv in sorted(self.ranges, key=lambda r: int(r.get("location", -1))):
            rel = rv.get("relname", "")
            schema = rv.get("schemaname")
            if schema:
                catalog = rv.get("catalogname")
                name = f"{catalog}.{schema}.{rel}" if catalog else f"{schema}.{rel}"
            elif rel in self.ctes:
                continue
            else:
                name = rel
            seen.setdefault(name, None)
        return tuple(seen)


def _statement(kind: str, fields: dict[str, Any], b: _Builder, wf: _WriteFunctions) -> None:
    """Fold one top-level statement into the builder."""
    b.kinds.append(kind)
    if kind == "TransactionStmt":
        _transaction(fields, b)
        return
    if kind == "VariableSetStmt":
        _variable_set(fields, b)
        return
    if kind == "VariableShowStmt":
        name = str(fields.get("name", "")).lower()
        if name.startswith("helios."):
            b.effects |= Effect.HELIOS_SHOW
            b.settings.append((name, None, False))
        return  # SHOW is read-only
    if kind == "ExplainStmt":
        _explain(fields, b, wf)
        return
    if kind == "DoStmt":
        b.read_only = False
        b.effects |= Effect.DIRTY
        return
    b.read_only = b.read_only and kind == "SelectStmt"
    if kind == "SelectStmt":
        b.signal = _signal_call(fields)
        if b.signal is not None:
            b.sensitive = True  # the record holds the literal PID: never shared with other values
    scan = _Scan()
    scan.walk({kind: fields}, wf)  # wrapped, so the statement's own node is inspected too
    if scan.set_config:
        b.sensitive = True  # what set_config() does depends on its literal arguments
    for call in scan.set_config:
        setting = _set_config_setting(call, kind, fields)
        if setting is None:
            args = call.get("args", ())
            guc = _const_text(args[0]) if args else None
            if guc is not None and "A_Const" in args[0] and guc.lower() not in _SESSION_IDENTITY:
                b.readback.append(guc.lower())
                b.effects |= Effect.READBACK
            else:
                b.effects |= Effect.DIRTY  # unknown name, or the role: pin
        elif setting[2]:
            b.effects |= Effect.SET_LOCAL
        else:
            b.settings.append(setting)
            b.effects |= Effect.SET
    if scan.unknown_call or kind == "CallStmt":
        b.unknown_call = True
    if scan.dirty:
        b.effects |= Effect.DIRTY
    if b.effects & Effect.DIRTY:
        b.read_only = False  # it pins the client: to the primary, never to a standby
    if scan.pg_temp and kind not in _PLAIN_DML:
        b.effects |= Effect.TEMP_TABLE  # CREATE TABLE pg_temp.t, CREATE VIEW pg_temp.v, ...
    if kind == "CreateFunctionStmt" and _func_name(fields)[0].startswith("pg_temp"):
        b.effects |= Effect.TEMP_TABLE
    if kind == "SelectStmt" and (scan.lock or scan.into or scan.nested_write or scan.write_call):
        b.read_only = False
    b.absorb(scan)
    if kind in _EXECUTING and scan.adv_lock:
        b.effects |= Effect.ADVISORY_LOCK
    if scan.temp and kind in _CREATING:
        b.effects |= Effect.TEMP_TABLE
    if kind == "CreateStmt":
        if _is_temp_rel(fields.get("relation")):
            b.effects |= Effect.TEMP_TABLE
    elif kind == "CreateTableAsStmt":
        if _is_temp_rel(fields.get("into", {}).get("rel")):
            b.effects |= Effect.TEMP_TABLE
    elif kind == "ViewStmt":
        if _is_temp_rel(fields.get("view")):
            b.effects |= Effect.TEMP_TABLE
    elif kind == "CreateSeqStmt":
        if _is_temp_rel(fields.get("sequence")):
            b.effects |= Effect.TEMP_TABLE
    elif kind == "DeclareCursorStmt":
        if int(fields.get("options", 0)) & _CURSOR_OPT_HOLD:
            b.effects |= Effect.HOLD_CURSOR
    elif kind == "ListenStmt":
        b.effects |= Effect.LISTEN
    elif kind == "UnlistenStmt":
        b.effects |= Effect.UNLISTEN
    elif kind == "PrepareStmt":
        b.effects |= Effect.PREPARE
    elif kind == "DeallocateStmt":
        b.effects |= Effect.DEALLOCATE
        b.deallocate.append(None if fields.get("isall") or "name" not in fields else str(fields["name"]))
    elif kind == "DiscardStmt" and fields.get("target") == "DISCARD_ALL":
        b.effects |= Effect.DISCARD


def _transaction(fields: dict[str, Any], b: _Builder) -> None:
    b.read_only = False
    tx = _TX_KINDS.get(str(fields.get("kind")))
    if tx is TxControl.BEGIN:
        for opt in fields.get("options", ()):
            elem = opt.get("DefElem", {})
            if elem.get("defname") == "transaction_read_only":
                b.sensitive = True
                ro = _const_text(elem.get("arg"))
                tx = TxControl.BEGIN_READ_ONLY if ro not in (None, "0") else TxControl.BEGIN
    if tx is not None:
        b.tx = tx
    # Settings made earlier in this same string that a ROLLBACK here undoes are no effect at all:
    # those since its BEGIN, or (no BEGIN: the implicit block of a multi-statement string) all.
    if tx in (TxControl.BEGIN, TxControl.BEGIN_READ_ONLY):
        b.tx_mark = len(b.settings)
    elif tx is TxControl.ROLLBACK:
        del b.settings[b.tx_mark or 0 :]
        b.tx_mark = None
    elif tx is TxControl.COMMIT:
        b.tx_mark = None


def _variable_set(fields: dict[str, Any], b: _Builder) -> None:
    b.read_only = False
    b.sensitive = True
    kind = fields.get("kind")
    raw_name = str(fields.get("name", ""))
    name = raw_name.lower()
    is_local = bool(fields.get("is_local", False))
    helios = name.startswith("helios.")
    if kind == "VAR_SET_VALUE":
        b.settings.append((name, _flatten(name, fields.get("args", [])), is_local))
        b.effects |= Effect.HELIOS_SET if helios else (Effect.SET_LOCAL if is_local else Effect.SET)
    elif kind == "VAR_SET_DEFAULT":
        b.settings.append((name, None, is_local))
        b.effects |= Effect.HELIOS_SET if helios else (Effect.SET_LOCAL if is_local else Effect.SET)
    elif kind == "VAR_RESET":
        b.settings.append((name, None, False))
        b.effects |= Effect.HELIOS_SET if helios else Effect.RESET
    elif kind == "VAR_RESET_ALL":
        b.settings.append(("all", None, False))
        b.effects |= Effect.RESET
    elif kind == "VAR_SET_MULTI" and raw_name == "SESSION CHARACTERISTICS":
        for opt in fields.get("args", ()):
            elem = opt.get("DefElem", {})
            guc = _SESSION_CHARACTERISTICS.get(elem.get("defname", ""))
            if guc is None:
                continue
            value = _const_text(elem.get("arg")) or ""
            if guc != "default_transaction_isolation":
                value = "off" if value == "0" else "on"
            b.settings.append((guc, value, False))
            b.effects |= Effect.SET
    # VAR_SET_MULTI "TRANSACTION" (SET TRANSACTION ...) and VAR_SET_CURRENT: no session state.


def _explain(fields: dict[str, Any], b: _Builder, wf: _WriteFunctions) -> None:
    analyze = False
    for opt in fields.get("options", ()):
        elem = opt.get("DefElem", {})
        if elem.get("defname") == "analyze":
            if "arg" in elem:
                b.sensitive = True
            analyze = _defelem_bool(elem)
    query = fields.get("query", {})
    if not analyze:  # plain EXPLAIN executes nothing: read-only, no effects; keep the tables
        scan = _Scan()
        scan.walk(query, wf)
        b.absorb(scan)
        return
    for inner_kind, inner_fields in query.items():
        inner = _Builder()
        _statement(inner_kind, inner_fields, inner, wf)
        b.read_only = b.read_only and inner.read_only
        b.ranges.extend(inner.ranges)
        b.ctes |= inner.ctes
        b.funcs.update(inner.funcs)
        b.effects |= inner.effects
        b.sensitive = b.sensitive or inner.sensitive
        b.volatile = b.volatile or inner.volatile


_PINNING: Final = Effect.TEMP_TABLE | Effect.HOLD_CURSOR | Effect.ADVISORY_LOCK | Effect.LISTEN | Effect.DIRTY
_PLAIN_DML: Final = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"})
_SET_CONFIG_NAMES: Final = (["set_config"], ["pg_catalog", "set_config"])
# Settings that change who the session is: a change the proxy cannot model pins the client.
_SESSION_IDENTITY: Final = frozenset({"role", "session_authorization"})


def _set_config_setting(call: dict[str, Any], kind: str, fields: dict[str, Any]) -> Setting | None:
    """What one set_config() call of a statement does, when the proxy can know it.

    `set_config(x, y, true)` is transaction-local: ("", None, True) whatever x and y are. A
    session-level call with constant arguments that is a top-level target of a SELECT with no
    FROM, WHERE or other clause (so it runs exactly once) gives its (name, value, False). Any
    other call (parameters, FROM/WHERE, nested in expressions) is None: what it sets, and whether
    it runs at all, is only known at run time."""
    if _func_name(call) not in _SET_CONFIG_NAMES:
        return None
    args = call.get("args", ())
    if len(args) != 3 or set(call) - {"funcname", "args", "funcformat", "location"}:
        return None
    local = _const_text(args[2])
    if local is not None and local.strip().lower() not in _FALSE_WORDS:
        return ("", None, True)
    if local is None or kind != "SelectStmt" or set(fields) - {"targetList", "limitOption", "op"}:
        return None
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return None
    if not any(t.get("ResTarget", {}).get("val", {}).get("FuncCall") is call for t in fields.get("targetList", ())):
        return None
    name, value = _const_text(args[0]), _const_text(args[1])
    if name is None or value is None or "A_Const" not in args[1] or "isnull" in args[1]["A_Const"]:
        return None  # a NULL value resets: not guessed
    return (name.lower(), value, False)


_SIGNAL_FUNCTIONS: Final = {"pg_cancel_backend": 1, "pg_terminate_backend": 2}  # name -> most arguments


def _signal_arg(node: Any) -> tuple[str, int] | None:
    if not isinstance(node, dict):
        return None
    if "TypeCast" in node:
        node = node["TypeCast"].get("arg")
        if not isinstance(node, dict):
            return None
    if "ParamRef" in node:
        return ("param", int(node["ParamRef"].get("number", 0)))
    const = node.get("A_Const")
    if isinstance(const, dict) and "ival" in const:
        return ("const", int(const["ival"].get("ival", 0)))
    return None


def _signal_call(fields: dict[str, Any]) -> SignalCall | None:
    """`SELECT pg_cancel_backend(x)` / `SELECT pg_terminate_backend(x[, y])` and nothing else."""
    targets = fields.get("targetList", ())
    if len(targets) != 1 or set(fields) - {"targetList", "limitOption", "op"}:
        return None
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return None
    target = targets[0].get("ResTarget", {})
    call = target.get("val", {}).get("FuncCall")
    if not isinstance(call, dict) or set(call) - {"funcname", "args", "funcformat", "location"}:
        return None
    names = _func_name(call)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) != 1 or names[0] not in _SIGNAL_FUNCTIONS:
        return None
    raw_args = call.get("args", ())
    if not 1 <= len(raw_args) <= _SIGNAL_FUNCTIONS[names[0]]:
        return None
    args = tuple(_signal_arg(a) for a in raw_args)
    if any(a is None for a in args):
        return None
    return SignalCall(names[0], str(target.get("name") or names[0]), tuple(a for a in args if a is not None))


def _unparseable(sql: str) -> StatementInfo:
    return StatementInfo(
        read_only=False,
        kinds=(),
        tables=(),
        normalized=sql,
        fingerprint="",
        tx=None,
        effects=Effect.NONE,
        settings=(),
        statements=0,
        parse_error=True,
        pins=False,
    )


def _analyze(sql: str, normalized: str, wf: _WriteFunctions) -> tuple[StatementInfo, bool]:
    """Parse `sql`; return its info and whether it may be reused for other literal values."""
    if "\x00" in sql:  # libpg_query stops at NUL; PostgreSQL rejects such a Query message
        return _unparseable(sql), False
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
        fingerprint = _pg.fingerprint(sql)
    except Exception:
        return _unparseable(sql), False
    stmts = tree.get("stmts", [])
    b = _Builder()
    for raw in stmts:
        for kind, fields in raw.get("stmt", {}).items():
            _statement(kind, fields, b, wf)
    effects = b.effects
    info = StatementInfo(
        read_only=b.read_only and bool(stmts),
        kinds=tuple(b.kinds),
        tables=b.tables(),
        normalized=normalized,
        fingerprint=fingerprint,
        tx=b.tx,
        effects=effects,
        settings=tuple(b.settings),
        statements=len(stmts),
        parse_error=False,
        pins=bool(effects & _PINNING),
        deallocate=tuple(b.deallocate),
        calls_unknown=b.unknown_call,
        readback=tuple(dict.fromkeys(b.readback)),
        functions=tuple(b.funcs),
        ddl=any(k not in _NOT_DDL for k in b.kinds),
        signal=b.signal if len(stmts) == 1 else None,
        volatile=b.volatile,
    )
    return info, not b.sensitive and not b.settings


# ---------------------------------------------------------------- literal pre-key
# A cheap key for texts that differ only in integer values (pgbench -M simple sends a new one per
# statement), looked up before pglast's normalize() (~3-4 µs): the UTF-8 bytes with every ASCII
# digit replaced by \x01 (encode + bytes.translate, ~0.3 µs; a regex over the text costs as much
# as normalize() itself in CPython). A key is only *stored* after checking, on the text that
# produced it, that replacing each run of \x01 by $1..$n in order gives exactly normalize()'s
# text and that every run is shorter than 10 digits. Then every digit of that text belongs to a
# whole integer constant that fits int4 (the lexer's ICONST; not part of an identifier, a string,
# a comment or hint, a parameter, a decimal or a negative number: those make the check fail), so
# any other text with the same key has the same bytes except the values of those integers (same
# widths, so still ICONST): the same normalize() text, hence the same record from the
# normalized-text level. String literals are not pre-keyed; such texts take the normalize() path.
_DIGIT_MARKS: Final = bytes.maketrans(b"0123456789", b"\x01" * 10)
_DIGIT_RUN: Final = re.compile("\x01+")
_UNKNOWN: Final = _unparseable("\x00unknown pre-key")  # a sentinel, compared by identity


def literal_prekey(sql: str) -> bytes | None:
    """`sql` with its ASCII digits replaced by \x01 (UTF-8 bytes); None if it has none or has \x01."""
    if "\x01" in sql:  # (on the str: `b"\x01" in raw` costs 8x more; UTF-8 has 0x01 only for U+0001)
        return None
    try:
        raw = sql.encode()
    except UnicodeEncodeError:  # lone surrogates: let normalize() decide
        return None
    key = raw.translate(_DIGIT_MARKS)
    return key if key != raw else None


def _prekey_agrees(key: bytes, normalized: str) -> bool:
    """True if the digit runs of `key`, numbered $1..$n in order, give exactly `normalized`,
    and every run is shorter than 10 digits (so each integer fits int4 whatever its value)."""
    text = key.decode()
    out: list[str] = []
    pos = 0
    for n, m in enumerate(_DIGIT_RUN.finditer(text), 1):
        start, stop = m.span()
        if stop - start >= 10:
            return False
        out.append(text[pos:start])
        out.append(f"${n}")
        pos = stop
    out.append(text[pos:])
    return "".join(out) == normalized


DATABASE_DDL: Final = frozenset({"DropdbStmt", "CreatedbStmt", "RenameStmt", "AlterDatabaseStmt"})


def ddl_databases(sql: str) -> tuple[str, ...]:
    """Databases a DROP/CREATE ... TEMPLATE/ALTER ... RENAME DATABASE statement needs unused."""
    try:
        stmts = json.loads(_pg.parse_sql_json(sql)).get("stmts", [])
    except Exception:
        return ()
    out: list[str] = []
    for raw in stmts:
        for kind, fields in raw.get("stmt", {}).items():
            if kind in ("DropdbStmt", "AlterDatabaseStmt") and fields.get("dbname"):
                out.append(str(fields["dbname"]))
            elif kind == "RenameStmt" and fields.get("renameType") == "OBJECT_DATABASE" and fields.get("subname"):
                out.append(str(fields["subname"]))
            elif kind == "CreatedbStmt":
                for opt in fields.get("options", ()):
                    elem = opt.get("DefElem", {})
                    if elem.get("defname") == "template":
                        text = _const_text(elem.get("arg"))
                        if text:
                            out.append(text)
    return tuple(out)


def count_statements(sql: str) -> int:
    """How many statements `sql` holds; -1 when it does not parse."""
    if "\x00" in sql:
        return -1
    try:
        return len(json.loads(_pg.parse_sql_json(sql)).get("stmts", []))
    except Exception:
        return -1


def classify_uncached(sql: str, write_functions: Iterable[str] = DEFAULT_WRITE_FUNCTIONS) -> StatementInfo:
    """Classify without any cache (tests, one-off use)."""
    try:
        normalized = _pg.normalize(sql)
    except Exception:
        normalized = sql
    return _analyze(sql, normalized, _WriteFunctions(write_functions))[0]


@dataclass(slots=True)
class ClassifierStats:
    """Counters of a Classifier: how each classify() call was answered."""

    exact_hits: int = 0
    fingerprint_hits: int = 0  # answered from the normalized-text (literal-independent) LRU
    parses: int = 0
    prekey_hits: int = 0  # the part of fingerprint_hits answered by the literal pre-key (no normalize())


class _Recent:
    """An approximate LRU of at most `size` keys (2 at least): two generations of plain dicts.

    A lookup probes the young generation, then the old one (a hit there is copied into the young
    one); an insertion goes into the young one, and once that is full it becomes the old one and the
    previous old one is dropped whole. The young one takes half of `size`, then the other half, in
    turn, so the two never hold more than `size` keys. A key used at least once per `size // 2`
    insertions is never evicted; a hit costs one plain dict probe and reorders nothing (an
    OrderedDict LRU costs a probe and a `move_to_end` per hit and a `popitem` per insertion once
    full: in compiled code those are generic method calls, the plain dict's are inlined C calls).
    """

    __slots__ = ("old", "room", "size", "young")

    def __init__(self, size: int) -> None:
        self.size = max(2, size)
        self.room = (self.size + 1) // 2  # keys the young generation takes before it turns old
        self.young: dict[Any, StatementInfo | None] = {}
        self.old: dict[Any, StatementInfo | None] = {}

    def get(self, key: Any, default: StatementInfo | None = None) -> StatementInfo | None:
        """The value of `key`, or `default` (values may be None: pass a sentinel to tell)."""
        value = self.young.get(key, _UNKNOWN)
        if value is not _UNKNOWN:
            return value
        value = self.old.get(key, _UNKNOWN)
        if value is not _UNKNOWN:
            self.put(key, value)  # used again: survives the next turn
            return value
        return default

    def touch(self, key: Any) -> None:
        """Mark `key` as used (if held)."""
        if key not in self.young:
            value = self.old.get(key, _UNKNOWN)
            if value is not _UNKNOWN:
                self.put(key, value)

    def put(self, key: Any, value: StatementInfo | None) -> None:
        young = self.young
        if len(young) >= self.room and key not in young:
            self.old = young
            young = self.young = {}
            half = (self.size + 1) // 2
            self.room = min(half, self.size - len(self.old))
        young[key] = value

    def snapshot(self) -> dict[Any, StatementInfo | None]:
        """Every held key and its value (tests, introspection)."""
        out = dict(self.old)
        out.update(self.young)
        return out

    def __len__(self) -> int:
        return len(self.snapshot())

    def clear(self) -> None:
        self.young = {}
        self.old = {}
        self.room = (self.size + 1) // 2


class Classifier:
    """Cached classifier: exact-text cache, literal pre-key, normalized-text cache, then a parse.

    The normalized-text level ("fingerprint hits") is keyed by pglast's normalize() text (constants
    replaced by $n) rather than by fingerprint(): the fingerprint ignores schema names and
    aliases (`SELECT a FROM s.t` and `FROM r.t` share one), so it cannot stand for the tables
    or schema-qualified function names, while normalize() keeps everything but literal values,
    costs no more, and makes `normalized` exact. Texts that differ only in comments or spacing
    therefore miss that level. Records that depend on literal values (any SET/RESET/SHOW
    helios.*, BEGIN with options, EXPLAIN (ANALYZE x)) are never
    stored there, so each new text of those is parsed.
    Before normalize(), a miss of the exact-text cache tries the literal pre-key cache (see
    `literal_prekey`): texts that differ from a verified one only in integer values (same widths)
    are answered with its record without calling pglast; these count as fingerprint hits too.
    A text the pre-key answers is not stored by its exact text: clients that inline literals
    (pgbench -M simple) send a new text per statement, which would only push reusable entries out,
    and the pre-key answers that text again for one more probe.
    Each level holds at most `cache_size` keys, evicted about least recently used (`_Recent`).
    `stats`: exact_hits, fingerprint_hits (second-level hits), parses, prekey_hits (the part of
    fingerprint_hits answered by the pre-key).
    """

    __slots__ = ("_by_norm", "_by_pre", "_by_text", "_size", "_wf", "stats")

    def __init__(self, cache_size: int = 10_000, write_functions: Iterable[str] = DEFAULT_WRITE_FUNCTIONS) -> None:
        self._size = max(1, int(cache_size))
        self._wf = _WriteFunctions(write_functions)
        self._by_text = _Recent(self._size)  # text -> record
        self._by_norm = _Recent(self._size)  # normalize() text -> record
        # literal_prekey -> record; None: that key's texts have digits that are not int4 constants
        self._by_pre = _Recent(self._size)
        self.stats = ClassifierStats()

    def cache_sizes(self) -> tuple[int, int]:
        """(entries in the exact-text cache, entries in the normalized-text cache)."""
        return len(self._by_text), len(self._by_norm)

    def classify(self, sql: str) -> StatementInfo:
        info = self._by_text.get(sql)
        if info is not None:
            self.stats.exact_hits += 1
            return info
        return self._miss(sql)

    def _miss(self, sql: str) -> StatementInfo:
        key = literal_prekey(sql)
        if key is not None:
            shaped = self._by_pre.get(key, _UNKNOWN)
            if shaped is None:  # this key's digits are not all int4 constants: no pre-key
                key = None
            elif shaped is not _UNKNOWN:
                self._by_norm.touch(shaped.normalized)  # keep the two literal-independent levels in step
                stats = self.stats
                stats.fingerprint_hits += 1
                stats.prekey_hits += 1
                return shaped
        try:
            normalized: str | None = _pg.normalize(sql)
        except Exception:
            normalized = None
        if normalized is not None:
            shaped = self._by_norm.get(normalized)
            if shaped is not None:
                self.stats.fingerprint_hits += 1
                self._by_text.put(sql, shaped)
                if key is not None:
                    self._by_pre.put(key, shaped if _prekey_agrees(key, normalized) else None)
                return shaped
        self.stats.parses += 1
        info, reusable = _analyze(sql, sql if normalized is None else normalized, self._wf)
        self._by_text.put(sql, info)
        if reusable and normalized is not None:
            self._by_norm.put(normalized, info)
            if key is not None:
                self._by_pre.put(key, info if _prekey_agrees(key, normalized) else None)
        return info

    def clear(self) -> None:
        self._by_text.clear()
        self._by_norm.clear()
        self._by_pre.clear()
