"""Table-driven tests of SQL classification: read-only rules, tx control, effects, cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosproxy.config.schema import DEFAULT_WRITE_FUNCTIONS
from heliosproxy.sql import Classifier, Effect, StatementInfo, TxControl, classify_uncached


def info(sql: str) -> StatementInfo:
    return Classifier().classify(sql)


# ---------------------------------------------------------------- read-only rules

READ_ONLY = [
    "SELECT 1",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
    "VALUES (1), (2)",
    "SHOW search_path",
    "SHOW ALL",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN INSERT INTO t VALUES (1)",  # plain EXPLAIN executes nothing
    "EXPLAIN DELETE FROM t",
    "EXPLAIN SELECT nextval('s')",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE off, VERBOSE) UPDATE t SET a = 1",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SELECT * FROM (SELECT 1) s UNION ALL SELECT 2",
    "SELECT currval('s')",
    "SELECT lastval()",
    "SELECT pg_catalog.now()",
    "SELECT myschema.nextval('s')",  # only unqualified or pg_catalog. names are matched
    "SELECT 1; SELECT 2",
    "SELECT 'nextval(1)'",
    "select count(*) from t where a in (select b from u)",
]


@pytest.mark.parametrize("sql", READ_ONLY)
def test_read_only(sql: str) -> None:
    i = info(sql)
    assert i.read_only is True
    assert i.parse_error is False


NOT_READ_ONLY = [
    # locking clauses, also nested
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE",
    "SELECT * FROM t FOR UPDATE SKIP LOCKED",
    "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
    "SELECT * FROM t WHERE a IN (SELECT a FROM u FOR SHARE)",
    "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
    "TABLE t; SELECT * FROM t FOR KEY SHARE",
    # SELECT INTO
    "SELECT a INTO u FROM t",
    "SELECT a INTO TEMP u FROM t",
    # data-modifying CTEs
    "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
    "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
    "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING *) SELECT * FROM a",
    "WITH x AS (SELECT * FROM (WITH y AS (DELETE FROM t RETURNING *) SELECT * FROM y) z) SELECT * FROM x",
    # EXPLAIN ANALYZE of a write
    "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE) DELETE FROM t",
    "EXPLAIN (ANALYZE true, BUFFERS) UPDATE t SET a = 1",
    "EXPLAIN (ANALYZE 1) UPDATE t SET a = 1",
    "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
    "EXPLAIN ANALYZE SELECT nextval('s')",
    # writes
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE",
    "TRUNCATE t",
    "CREATE TABLE t (a int)",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "CALL p()",
    "DO $$ BEGIN END $$",
    "NOTIFY ch",
    "VACUUM t",
    "LOCK TABLE t",
    "EXECUTE p(1)",
    "DECLARE c CURSOR FOR SELECT 1",
    "FETCH 1 FROM c",
    # session statements
    "SET x = 1",
    "RESET ALL",
    "LISTEN ch",
    "DISCARD ALL",
    # multi-statement: every part must be read-only
    "SELECT 1; INSERT INTO t VALUES (1)",
    "INSERT INTO t VALUES (1); SELECT 1",
    # transaction control is not read-only-routable (routing looks at .tx first)
    "BEGIN",
    "BEGIN READ ONLY",
    "COMMIT",
    "SELECT 1; COMMIT",
    # empty / comment-only strings
    "",
    ";",
    "/* nothing */",
]


@pytest.mark.parametrize("sql", NOT_READ_ONLY)
def test_not_read_only(sql: str) -> None:
    i = info(sql)
    assert i.read_only is False
    assert i.parse_error is False


@pytest.mark.parametrize("name", DEFAULT_WRITE_FUNCTIONS)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT {f}(1)",
        "SELECT pg_catalog.{f}(1)",
        "SELECT * FROM t WHERE a = {f}(1)",
        "SELECT * FROM t WHERE a IN (SELECT {f}(b) FROM u)",
        "SELECT coalesce({f}(1), 2)",
        "SELECT * FROM {f}(1)",
        "SELECT 1 ORDER BY {f}(1)",
        "WITH x AS (SELECT {f}(1)) SELECT * FROM x",
        "SELECT 1; SELECT {f}(1)",
        "SELECT {F}(1)",
    ],
)
def test_each_write_function_makes_a_write(name: str, template: str) -> None:
    sql = template.format(f=name, F=name.upper())
    assert info(sql).read_only is False, sql
    # plain EXPLAIN never executes the call
    if ";" not in sql:
        assert info("EXPLAIN " + sql).read_only is True


def test_write_functions_are_configurable() -> None:
    c = Classifier(write_functions=["my_writer", "audit.log_it", "pg_catalog.other"])
    assert c.classify("SELECT my_writer(1)").read_only is False
    assert c.classify("SELECT MY_WRITER(1)").read_only is False
    assert c.classify("SELECT audit.log_it(1)").read_only is False
    assert c.classify("SELECT log_it(1)").read_only is True
    assert c.classify("SELECT other(1)").read_only is False
    assert c.classify("SELECT nextval('s')").read_only is True  # not on this list
    assert c.classify("SELECT pg_advisory_lock(1)").pins is True  # pins regardless


# ---------------------------------------------------------------- transaction control

TX = [
    ("BEGIN", TxControl.BEGIN),
    ("BEGIN WORK", TxControl.BEGIN),
    ("START TRANSACTION", TxControl.BEGIN),
    ("BEGIN READ WRITE", TxControl.BEGIN),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", TxControl.BEGIN),
    ("BEGIN READ ONLY", TxControl.BEGIN_READ_ONLY),
    ("begin transaction read only", TxControl.BEGIN_READ_ONLY),
    ("START TRANSACTION READ ONLY", TxControl.BEGIN_READ_ONLY),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", TxControl.BEGIN_READ_ONLY),
    ("BEGIN READ ONLY, READ WRITE", TxControl.BEGIN),
    ("COMMIT", TxControl.COMMIT),
    ("END", TxControl.COMMIT),
    ("COMMIT AND CHAIN", TxControl.COMMIT),
    ("ROLLBACK", TxControl.ROLLBACK),
    ("ABORT", TxControl.ROLLBACK),
    ("SAVEPOINT s1", TxControl.SAVEPOINT),
    ("RELEASE SAVEPOINT s1", TxControl.RELEASE),
    ("ROLLBACK TO SAVEPOINT s1", TxControl.ROLLBACK_TO),
    ("PREPARE TRANSACTION 'g1'", TxControl.PREPARE_TRANSACTION),
    ("COMMIT PREPARED 'g1'", TxControl.COMMIT_PREPARED),
    ("ROLLBACK PREPARED 'g1'", TxControl.ROLLBACK_PREPARED),
    ("BEGIN; SELECT 1; COMMIT", TxControl.COMMIT),  # the last one counts
    ("COMMIT; BEGIN READ ONLY", TxControl.BEGIN_READ_ONLY),
    ("SELECT 1", None),
    ("SET TRANSACTION READ ONLY", None),
]


@pytest.mark.parametrize(("sql", "tx"), TX)
def test_transaction_control(sql: str, tx: TxControl | None) -> None:
    assert info(sql).tx is tx


# ---------------------------------------------------------------- effects and settings

EFFECTS = [
    ("SET search_path = a", Effect.SET, (("search_path", "a", False),)),
    ("SET SESSION search_path TO a, b", Effect.SET, (("search_path", "a, b", False),)),
    (
        'SET search_path = "$user", public, "My Schema"',
        Effect.SET,
        (("search_path", '"$user", public, "My Schema"', False),),
    ),
    ("SET search_path = 'a,b'", Effect.SET, (("search_path", '"a,b"', False),)),
    ("SET statement_timeout = 5000", Effect.SET, (("statement_timeout", "5000", False),)),
    ("SET statement_timeout = '5s'", Effect.SET, (("statement_timeout", "5s", False),)),
    ("SET extra_float_digits = -3", Effect.SET, (("extra_float_digits", "-3", False),)),
    ("SET random_page_cost = 1.5", Effect.SET, (("random_page_cost", "1.5", False),)),
    ("SET DateStyle = iso, mdy", Effect.SET, (("datestyle", "iso, mdy", False),)),
    ("SET TIME ZONE 'UTC'", Effect.SET, (("timezone", "UTC", False),)),
    ("SET NAMES 'UTF8'", Effect.SET, (("client_encoding", "UTF8", False),)),
    ("SET ROLE alice", Effect.SET, (("role", "alice", False),)),
    ("SET search_path TO DEFAULT", Effect.SET, (("search_path", None, False),)),
    ("SET LOCAL search_path = a", Effect.SET_LOCAL, (("search_path", "a", True),)),
    (
        "SET LOCAL statement_timeout TO DEFAULT",
        Effect.SET_LOCAL,
        (("statement_timeout", None, True),),
    ),
    ("RESET search_path", Effect.RESET, (("search_path", None, False),)),
    ("RESET ROLE", Effect.RESET, (("role", None, False),)),
    ("RESET ALL", Effect.RESET, (("all", None, False),)),
    (
        "SET a.b = 1; SET LOCAL c = 2; RESET d",
        Effect.SET | Effect.SET_LOCAL | Effect.RESET,
        (("a.b", "1", False), ("c", "2", True), ("d", None, False)),
    ),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Effect.NONE, ()),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        Effect.SET,
        (
            ("default_transaction_isolation", "serializable", False),
            ("default_transaction_read_only", "on", False),
        ),
    ),
    ("SET helios.route = 'standby'", Effect.HELIOS_SET, (("helios.route", "standby", False),)),
    ("SET helios.node TO n2", Effect.HELIOS_SET, (("helios.node", "n2", False),)),
    ("SET helios.branch = 'Dev'", Effect.HELIOS_SET, (("helios.branch", "Dev", False),)),
    ("RESET helios.route", Effect.HELIOS_SET, (("helios.route", None, False),)),
    ("SHOW helios.route", Effect.HELIOS_SHOW, (("helios.route", None, False),)),
    ("SHOW search_path", Effect.NONE, ()),
    ("DISCARD ALL", Effect.DISCARD, ()),
    ("DISCARD PLANS", Effect.NONE, ()),
    ("LISTEN ch", Effect.LISTEN, ()),
    ("UNLISTEN ch", Effect.UNLISTEN, ()),
    ("UNLISTEN *", Effect.UNLISTEN, ()),
    ("PREPARE p AS SELECT 1", Effect.PREPARE, ()),
    ("DEALLOCATE p", Effect.DEALLOCATE, ()),
    ("DEALLOCATE ALL", Effect.DEALLOCATE, ()),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Effect.HOLD_CURSOR, ()),
    ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", Effect.NONE, ()),
    ("DECLARE c SCROLL CURSOR FOR SELECT 1", Effect.NONE, ()),
    ("CREATE TEMP TABLE x (a int)", Effect.TEMP_TABLE, ()),
    ("CREATE TEMPORARY TABLE IF NOT EXISTS x (a int)", Effect.TEMP_TABLE, ()),
    ("CREATE TABLE pg_temp.x (a int)", Effect.TEMP_TABLE, ()),
    ("CREATE TEMP TABLE x AS SELECT 1", Effect.TEMP_TABLE, ()),
    ("CREATE TEMP VIEW v AS SELECT 1", Effect.TEMP_TABLE, ()),
    ("CREATE TEMP SEQUENCE s", Effect.TEMP_TABLE, ()),
    ("SELECT 1 INTO TEMP x", Effect.TEMP_TABLE, ()),
    ("EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1", Effect.TEMP_TABLE, ()),
    ("EXPLAIN CREATE TEMP TABLE x AS SELECT 1", Effect.NONE, ()),
    ("CREATE TABLE x (a int)", Effect.NONE, ()),
    ("CREATE UNLOGGED TABLE x (a int)", Effect.NONE, ()),
    ("SELECT pg_advisory_lock(1)", Effect.ADVISORY_LOCK, ()),
    ("SELECT pg_advisory_lock_shared(1)", Effect.ADVISORY_LOCK, ()),
    ("SELECT pg_try_advisory_lock(1, 2)", Effect.ADVISORY_LOCK, ()),
    ("SELECT pg_catalog.pg_try_advisory_lock_shared(1)", Effect.ADVISORY_LOCK, ()),
    ("SELECT * FROM t WHERE pg_try_advisory_lock(t.id)", Effect.ADVISORY_LOCK, ()),
    ("SELECT pg_advisory_xact_lock(1)", Effect.NONE, ()),
    ("SELECT pg_try_advisory_xact_lock(1)", Effect.NONE, ()),
    ("SELECT pg_advisory_unlock(1)", Effect.NONE, ()),
    ("EXPLAIN SELECT pg_advisory_lock(1)", Effect.NONE, ()),
    ("SELECT 1", Effect.NONE, ()),
]


@pytest.mark.parametrize(("sql", "effects", "settings_"), EFFECTS)
def test_effects_and_settings(sql: str, effects: int, settings_: tuple[tuple[str, str | None, bool], ...]) -> None:
    i = info(sql)
    assert i.parse_error is False
    assert i.effects == effects
    assert i.settings == settings_


PINS = [
    ("CREATE TEMP TABLE x (a int)", True),
    ("SELECT a INTO TEMPORARY x FROM t", True),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", True),
    ("DECLARE c CURSOR FOR SELECT 1", False),
    ("SELECT pg_advisory_lock(42)", True),
    ("SELECT pg_try_advisory_lock(42)", True),
    ("SELECT pg_advisory_xact_lock(42)", False),
    ("LISTEN ch", True),
    ("UNLISTEN ch", False),
    ("SET search_path = a", False),
    ("PREPARE p AS SELECT 1", False),
    ("SELECT 1", False),
    ("SELEC 1", False),
]


@pytest.mark.parametrize(("sql", "pins"), PINS)
def test_pins(sql: str, pins: bool) -> None:
    assert info(sql).pins is pins


# ---------------------------------------------------------------- kinds, tables, text

TABLES = [
    ("SELECT * FROM t", ("t",)),
    ("SELECT * FROM public.t", ("public.t",)),
    ("SELECT * FROM db.s.t", ("db.s.t",)),
    ('SELECT * FROM "My Schema"."My Table"', ("My Schema.My Table",)),
    ("SELECT * FROM b JOIN a ON true JOIN b bb ON true", ("b", "a")),
    ("SELECT * FROM s1.t JOIN s2.t ON true", ("s1.t", "s2.t")),
    ("WITH x AS (SELECT * FROM base) SELECT * FROM x", ("base",)),
    ("WITH x AS (SELECT 1) SELECT * FROM other.x", ("other.x",)),
    ("SELECT * FROM t WHERE a IN (SELECT a FROM u)", ("t", "u")),
    ("INSERT INTO t SELECT * FROM u", ("t", "u")),
    ("UPDATE s.t SET a = u.a FROM u", ("s.t", "u")),
    ("DELETE FROM t USING u", ("t", "u")),
    ("SELECT 1 FROM a; SELECT 1 FROM b; SELECT 1 FROM a", ("a", "b")),
    ("EXPLAIN SELECT * FROM t", ("t",)),
    ("SELECT 1", ()),
    ("SELECT * FROM generate_series(1, 3)", ()),
]


@pytest.mark.parametrize(("sql", "tables"), TABLES)
def test_tables(sql: str, tables: tuple[str, ...]) -> None:
    assert info(sql).tables == tables


def test_kinds_statements_and_text() -> None:
    i = info("SELECT 1; INSERT INTO t VALUES (2); SET x = 3")
    assert i.kinds == ("SelectStmt", "InsertStmt", "VariableSetStmt")
    assert i.statements == 3
    assert i.normalized == "SELECT $1; INSERT INTO t VALUES ($2); SET x = $3"
    assert len(i.fingerprint) == 16 and int(i.fingerprint, 16) >= 0
    assert info("SELECT a FROM t WHERE b = 1").fingerprint == info("SELECT a FROM t WHERE b = 999").fingerprint
    assert info("VALUES (1)").kinds == ("SelectStmt",)
    assert info("").statements == 0


UNPARSEABLE = [
    "SELEC 1",
    "SELECT FROM WHERE",
    "INSERT INTO",
    "SELECT 'unterminated",
    "SELECT 1\x00; DELETE FROM t",  # PostgreSQL rejects a NUL inside a Query; never route it
    "\\d t",
    "BEGIN; SELEC 1",
]


@pytest.mark.parametrize("sql", UNPARSEABLE)
def test_unparseable(sql: str) -> None:
    i = info(sql)
    assert i.parse_error is True
    assert i.read_only is False
    assert i.fingerprint == ""
    assert i.normalized == sql
    assert i.tx is None


def test_classify_uncached_agrees_with_classifier() -> None:
    for sql in [*READ_ONLY, *NOT_READ_ONLY, *UNPARSEABLE]:
        assert classify_uncached(sql) == Classifier().classify(sql)


# ---------------------------------------------------------------- cache behaviour


def test_exact_hit_returns_the_same_record_without_parsing() -> None:
    c = Classifier()
    first = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123")
    assert (c.stats.exact_hits, c.stats.fingerprint_hits, c.stats.parses) == (0, 0, 1)
    again = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123")
    assert again is first
    assert (c.stats.exact_hits, c.stats.fingerprint_hits, c.stats.parses) == (1, 0, 1)


def test_new_literal_is_a_fingerprint_hit_not_a_parse() -> None:
    c = Classifier()
    a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123")
    b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 456")
    assert c.stats.parses == 1 and c.stats.fingerprint_hits == 1
    assert b == a
    assert b.normalized == "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    for n in range(100):
        c.classify(f"UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = {n * 7}")
    assert c.stats.parses == 2 and c.stats.fingerprint_hits == 100
    # a text answered by the pre-key is not stored by its text: the pre-key answers it again
    assert c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 456") is a
    assert c.stats.exact_hits == 0 and c.stats.parses == 2
    # one answered through normalize() is: the same text again is an exact hit
    c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 4567")
    c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 4567")
    assert c.stats.exact_hits == 1 and c.stats.parses == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SET search_path = a", "SET search_path = b"),
        ("SET helios.node = 'x'", "SET helios.node = 'y'"),
        ("SET LOCAL statement_timeout = 1", "SET LOCAL statement_timeout = 2"),
        ("SELECT 1 FROM s1.t WHERE a = 1", "SELECT 1 FROM s2.t WHERE a = 2"),
        ("BEGIN READ ONLY", "BEGIN READ WRITE"),
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),
    ],
)
def test_values_are_never_conflated(first: str, second: str) -> None:
    c = Classifier()
    a = c.classify(first)
    b = c.classify(second)
    assert a == classify_uncached(first)
    assert b == classify_uncached(second)
    assert a != b


def test_set_with_new_value_is_reparsed() -> None:
    c = Classifier()
    c.classify("SET search_path = a")
    b = c.classify("SET search_path = b")
    assert c.stats.fingerprint_hits == 0 and c.stats.parses == 2
    assert b.settings == (("search_path", "b", False),)


def test_schema_qualified_tables_are_not_conflated() -> None:
    # pglast's fingerprint ignores schema names; the second-level key must not.
    c = Classifier()
    assert c.classify("SELECT * FROM s1.t WHERE a = 1").tables == ("s1.t",)
    assert c.classify("SELECT * FROM s2.t WHERE a = 1").tables == ("s2.t",)
    assert c.classify("SELECT * FROM s2.t WHERE a = 2").tables == ("s2.t",)
    assert c.stats.fingerprint_hits == 1


def test_lru_evicts_least_recently_used() -> None:
    # SET records never enter the second level, so only the exact-text LRU answers here.
    c = Classifier(cache_size=3)
    for name in ("a", "b", "c"):
        c.classify(f"SET {name} = 1")
    c.classify("SET a = 1")  # a is now the most recent
    c.classify("SET d = 1")  # evicts b, the least recently used
    assert c.cache_sizes() == (3, 0)
    parses, exact = c.stats.parses, c.stats.exact_hits
    c.classify("SET a = 1")
    assert (c.stats.parses, c.stats.exact_hits) == (parses, exact + 1)
    assert c.classify("SET b = 1").settings == (("b", "1", False),)
    assert (c.stats.parses, c.stats.exact_hits) == (parses + 1, exact + 1)


def test_second_level_lru_evicts_least_recently_used() -> None:
    c = Classifier(cache_size=2)
    c.classify("SELECT * FROM a WHERE x = 1")
    c.classify("SELECT * FROM b WHERE x = 1")
    c.classify("SELECT * FROM a WHERE x = 2")  # shape hit: a's shape is now most recent
    c.classify("SELECT * FROM c WHERE x = 1")  # new shape evicts b's
    assert c.stats.fingerprint_hits == 1
    parses = c.stats.parses
    c.classify("SELECT * FROM a WHERE x = 3")
    assert (c.stats.parses, c.stats.fingerprint_hits) == (parses, 2)
    c.classify("SELECT * FROM b WHERE x = 3")
    assert c.stats.parses == parses + 1


def test_caches_stay_bounded() -> None:
    c = Classifier(cache_size=5)
    for n in range(200):
        c.classify(f"SELECT * FROM t{n % 17} WHERE x = {n}")
        c.classify(f"SET x{n} = {n}")
    text, norm = c.cache_sizes()
    assert 3 <= text <= 5 and 3 <= norm <= 5


def test_unparseable_text_is_cached_by_exact_text() -> None:
    c = Classifier()
    c.classify("SELEC 1")
    c.classify("SELEC 1")
    assert c.stats.parses == 1 and c.stats.exact_hits == 1


def test_records_are_immutable() -> None:
    i = info("SELECT 1")
    with pytest.raises(AttributeError):
        i.read_only = False  # type: ignore[misc]


# ---------------------------------------------------------------- literal pre-key (no normalize() per new literal)


def test_new_literal_after_a_verified_shape_is_a_prekey_hit() -> None:
    c = Classifier()
    a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123")
    b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 456")
    assert b is a and c.stats.prekey_hits == 1 and c.stats.parses == 1
    assert c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 7") is a  # other width: normalize()
    assert c.stats.prekey_hits == 1 and c.stats.fingerprint_hits == 2
    u = c.classify("UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 7")  # -5: no pre-key
    for n in range(50):
        assert c.classify(f"UPDATE pgbench_accounts SET abalance = abalance + {10 + n} WHERE aid = {100 + n}") == u
    assert c.stats.parses == 2
    assert c.stats.prekey_hits == 1 + 49  # the first positive one verifies the key, 49 hit it
    assert c.stats.fingerprint_hits == 2 + 50
    # texts whose digits are not all int4 constants never get a pre-key entry
    for sql in ["SELECT * FROM t1 WHERE a = 1", "SELECT 'x1' FROM t", "SELECT 1.5 FROM t", "SELECT 1234567890"]:
        c.classify(sql)
    entries = list(c._by_pre.snapshot().values())
    assert sum(v is not None for v in entries) == 3  # two SELECT widths, one UPDATE
    assert sum(v is None for v in entries) == 5  # -5 and the four above: "no pre-key", never re-checked


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # different tables, schemas, columns, quoted identifiers
        ("SELECT * FROM t1 WHERE a = 1", "SELECT * FROM t2 WHERE a = 2"),
        ("SELECT * FROM s1.t WHERE a = 1", "SELECT * FROM s2.t WHERE a = 2"),
        ('SELECT "c1" FROM t WHERE a = 1', 'SELECT "c2" FROM t WHERE a = 2'),
        ('SELECT "t 1".a FROM "t 1" WHERE a = 1', 'SELECT "t 2".a FROM "t 2" WHERE a = 2'),
        ("SELECT é1 FROM t WHERE a = 1", "SELECT é2 FROM t WHERE a = 2"),
        # SET / RESET / helios values and other value-dependent statements
        ("SET statement_timeout = 5", "SET statement_timeout = 6"),
        ("SET search_path = 'a'", "SET search_path = 'b'"),
        ("SET helios.node = 'n1'", "SET helios.node = 'n2'"),
        ("SET LOCAL work_mem = '64kB'", "SET LOCAL work_mem = '1MB'"),
        ("EXPLAIN (ANALYZE 0) DELETE FROM t WHERE a = 1", "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE a = 2"),
        ("EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"),
        ("SELECT pg_advisory_xact_lock(1)", "SELECT pg_advisory_lock(1)"),
        # helios hints are comments: never pre-keyed
        ("/*helios:route=standby*/ SELECT * FROM t WHERE a = 1",
         "/*helios:route=primary*/ SELECT * FROM t WHERE a = 2"),
        ("SELECT * FROM t WHERE a = 1 /*helios:node=n1*/", "SELECT * FROM t WHERE a = 2 /*helios:node=n2*/"),
        ("SELECT * FROM t WHERE a = 1 -- x", "SELECT * FROM t WHERE a = 2; DELETE FROM t -- x"),
        # constants the lexer reads differently (int4 vs wider / decimal, string vs number)
        ("FETCH 5 FROM c", "FETCH 99999999999 FROM c"),
        ("FETCH 5 FROM c", "FETCH 5.5 FROM c"),
        ("SELECT interval '1 day'", "SELECT interval 5"),
        ("SELECT 'a'::varchar(5) FROM t", "SELECT 'a'::varchar(6) FROM t"),  # typmods are kept by normalize
        ("SELECT 1 FROM t", "SELECT 1e FROM t"),
        ("SELECT 1 FROM t", "SELECT 1.. FROM t"),
        ("SELECT 1 FROM t", "SELECT 1.5 FROM t"),
        ("SELECT 1000000000", "SELECT 9999999999"),  # int4 vs numeric with the same width
        ("FETCH 1000000000 FROM c", "FETCH 9999999999 FROM c"),  # FETCH takes an int4 only
        ("SELECT 2147483647", "SELECT 2147483648"),
        ("SELECT $1 FROM t", "SELECT $2 FROM t"),
        ("SELECT 1 FROM t /* 1 */", "SELECT 1 FROM t /* 2 */; DELETE FROM t"),
        ("/*helios:lag=100*/ SELECT 1", "/*helios:lag=200*/ SELECT 1"),
        ("SELECT 'x1' FROM t", "SELECT 'x2' FROM t"),
        ("SELECT 1 FROM t", "SELECT 1\x01 FROM t"),
        # strings: escapes, prefixes, embedded quotes and statements
        ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'x''; DELETE FROM t; SELECT '''"),
        ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'x\\'; DELETE FROM t; SELECT 1"),
        ("SELECT * FROM t WHERE a = E'x'", "SELECT * FROM t WHERE a = E'x\\'; DELETE FROM t; SELECT 1 --'"),
        ("SELECT 'a'\n'b' FROM t", "SELECT 'a' 'b' FROM t"),
        ("SELECT $$1$$ FROM t", "SELECT $$1$$; DELETE FROM t; SELECT $$2$$"),
        ("SELECT 1", "SELECT 1; DELETE FROM t"),
        ("SELECT -1 FROM t", "SELECT - 1 FROM t"),
    ],
)
def test_prekey_never_conflates(first: str, second: str) -> None:
    c = Classifier()
    for _ in range(2):  # the second round runs with every cache level warm
        assert c.classify(first) == classify_uncached(first)
        assert c.classify(second) == classify_uncached(second)
    # and with the second text seen first
    c = Classifier()
    assert c.classify(second) == classify_uncached(second)
    assert c.classify(first) == classify_uncached(first)


LITERALS = ["1", "2", "07", "2147483647", "2147483648", "99999999999", "1.5", ".5", "1e3", "1.e-2",
            "'x'", "'y'", "'it''s'", "''", "'1 day'", "'a\\'"]
WORDS = ["SELECT", "FROM", "t", "s.t", '"t 1"', '"c1"', "WHERE", "a", "=", "-", "+", ",", ";", "(", ")",
         "::varchar(", "LIMIT", "FETCH", "interval", "SET", "work_mem", "EXPLAIN", "(ANALYZE", "DELETE",
         "E", "U&", "B", ".", "e", "'", "\n", *LITERALS]


@st.composite
def same_words_other_literals(draw: st.DrawFn) -> list[str]:
    """Texts from one word list whose literal words are redrawn for each text, joined with or
    without spaces (so literals also touch their neighbours)."""
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=14))
    texts = []
    for _ in range(draw(st.integers(2, 5))):
        sep = draw(st.sampled_from([" ", ""]))
        texts.append(sep.join(draw(st.sampled_from(LITERALS)) if w in LITERALS else w for w in words))
    return texts


@settings(max_examples=500, deadline=None)
@given(st.lists(same_words_other_literals(), min_size=1, max_size=3))
def test_cached_answers_equal_uncached_ones(groups: list[list[str]]) -> None:
    # Whatever the caches keep (exact text, literal pre-key, normalized text), each answer
    # equals a fresh classification.
    c = Classifier()
    for texts in groups:
        for sql in texts:
            assert c.classify(sql) == classify_uncached(sql), sql


# ---------------------------------------------------------------- robustness

SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT",
            "INSERT",
            "INTO",
            "FROM",
            "WHERE",
            "FOR",
            "UPDATE",
            "WITH",
            "AS",
            "(",
            ")",
            ",",
            ";",
            "'",
            '"',
            "$$",
            "1",
            "t",
            "s.t",
            "nextval(1)",
            "SET",
            "=",
            "BEGIN",
            "READ",
            "ONLY",
            "EXPLAIN",
            "ANALYZE",
            "/*",
            "*/",
            "--",
            "\n",
            "helios:",
            "\x00",
        ]
    ),
    max_size=20,
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), SQLISH))
def test_classify_never_raises(sql: str) -> None:
    c = Classifier(cache_size=8)
    i = c.classify(sql)
    assert isinstance(i, StatementInfo)
    assert c.classify(sql) is i
    if i.parse_error:
        assert i.read_only is False


def test_set_config_records_are_never_shared_between_literal_values() -> None:
    c = Classifier()
    local = c.classify("SELECT set_config('role', 'r1', true)")
    session = c.classify("SELECT set_config('role', 'r1', false)")
    assert local.effects == Effect.SET_LOCAL and not local.settings
    assert session.settings == (("role", "r1", False),)


def test_recent_cache_keeps_what_is_used_and_stays_bounded() -> None:
    from heliosproxy.sql.classify import _Recent

    hot = info("SELECT 1")
    r = _Recent(10)
    r.put("hot", hot)
    for n in range(1000):
        r.put(n, None)
        assert r.get("hot") is hot  # used once per insertion: never evicted
        assert len(r) <= 10
    assert r.get(999, hot) is None  # a held None is told from a miss by the default
    assert r.get(0, hot) is hot  # long evicted
    r.clear()
    assert len(r) == 0 and r.get("hot") is None
