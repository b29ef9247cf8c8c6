"""Result cache building blocks: shared generations across fork, the store's policy, TTL, eviction and invalidation."""

from __future__ import annotations

import os
import time

from heliosproxy.cache import GLOBAL_SLOT, ResultCache, shared_generations, table_slot
from heliosproxy.cache.wal import parse_table
from heliosproxy.config.schema import CacheConfig, CacheRule
from heliosproxy.session.resultcache import write_slots
from heliosproxy.sql.classify import classify_uncached


def test_a_bump_in_a_forked_child_is_seen_by_the_parent() -> None:
    gens = shared_generations()
    slot = table_slot("fork_probe")
    before = gens.stamp((slot,))
    pid = os.fork()
    if pid == 0:  # the child: what a worker does at a write's ReadyForQuery
        gens.bump({slot})
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert not gens.current((slot,), before)


def test_every_bump_is_a_new_value() -> None:
    gens = shared_generations()
    slot = table_slot("bump_probe")
    seen = set()
    for _ in range(1000):
        gens.bump({slot})
        seen.add(gens.get(slot))
    assert len(seen) == 1000


def test_table_slots_ignore_the_schema() -> None:
    assert table_slot("public.t") == table_slot("t") == table_slot("s.t")
    # WAL lines name tables as test_decoding quotes them; statements as the classifier joins them
    for line, stmt in (('table public."My T": INSERT: id[integer]:1', "My T"),
                       ("table s.t: DELETE: (no-tuple-data)", "t"),
                       ('table public."a.b": UPDATE: x', "a.b"),
                       ('table public."x""y": TRUNCATE: (no-flags)', 'x"y')):
        name = parse_table(line)
        assert name is not None and table_slot(name) == table_slot(classify_uncached(
            f'SELECT * FROM "{stmt.replace(chr(34), chr(34) * 2)}"').tables[0]), line
    assert table_slot("t") != GLOBAL_SLOT


def _cache(**kw: object) -> ResultCache:
    cfg = CacheConfig(enabled=True, rules=(CacheRule(("items", "public.prices"), 5.0),), **kw)  # type: ignore[arg-type]
    return ResultCache(cfg, shared_generations())


def test_rules_and_hints_decide_the_ttl() -> None:
    c = _cache()
    assert c.ttl_for(("items",), None) == 5.0
    assert c.ttl_for(("shop.items",), None) == 5.0  # unqualified rule name: any schema
    assert c.ttl_for(("public.prices",), None) == 5.0
    assert c.ttl_for(("prices",), None) is None  # the rule names it qualified
    assert c.ttl_for(("items", "other"), None) is None  # every table must be covered
    assert c.ttl_for(("other",), "30s") == 30.0
    assert c.ttl_for(("items",), "skip") is None
    assert c.ttl_for((), "1m") == 60.0
    assert c.ttl_for(("pg_catalog.pg_class",), "30s") is None
    assert c.ttl_for(("pg_stat_activity",), "30s") is None


def test_store_invalidate_evict_expire() -> None:
    c = _cache(max_memory=2000)
    slots, stamp = c.stamp(("items",))
    assert c.put(b"k1", b"x" * 500, slots, stamp, 60.0)
    assert c.get(b"k1") == b"x" * 500
    c.invalidate({table_slot("other")})
    assert c.get(b"k1") is not None
    c.invalidate({table_slot("items")})
    assert c.get(b"k1") is None and c.stats.invalidations == 1
    # a write between the stamp and the put keeps the answer out
    slots, stamp = c.stamp(("items",))
    c.gens.bump({table_slot("items")})
    assert not c.put(b"k2", b"y", slots, stamp, 60.0)
    # eviction: three 700-byte entries in 2000 bytes
    for i in range(3):
        slots, stamp = c.stamp(("items",))
        c.put(f"e{i}".encode(), b"z" * 500, slots, stamp, 60.0)
    assert c.stats.evictions == 1 and c.get(b"e0") is None and c.get(b"e2") is not None
    assert c.stats.bytes <= 2000
    slots, stamp = c.stamp(("items",))
    c.put(b"short", b"s", slots, stamp, 0.01)
    time.sleep(0.02)
    assert c.get(b"short") is None and c.stats.expired == 1


def test_write_slots() -> None:
    def ws(sql: str) -> set[int]:
        return write_slots(classify_uncached(sql))

    assert ws("UPDATE items SET a = 1") == {table_slot("items")}
    assert ws("INSERT INTO s.items SELECT * FROM prices") == {table_slot("items"), table_slot("prices")}
    assert ws("WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d") == {table_slot("items")}
    assert ws("TRUNCATE items") == {table_slot("items")}
    assert ws("BEGIN") == set() and ws("SET search_path = x") == set()
    assert ws("ALTER TABLE items ADD c int") == {GLOBAL_SLOT}
    assert ws("DO $$ BEGIN END $$") == {GLOBAL_SLOT}
    assert ws("SELECT my_function()") == {GLOBAL_SLOT}


def test_classifier_flags_volatile_and_time_functions() -> None:
    for sql in ("SELECT now()", "SELECT CURRENT_DATE", "SELECT localtimestamp(2)", "SELECT random()",
                "SELECT * FROM t WHERE at > statement_timestamp()", "SELECT pg_backend_pid()",
                "SELECT nextval('s')", "EXPLAIN ANALYZE SELECT clock_timestamp()"):
        assert classify_uncached(sql).volatile, sql
    for sql in ("SELECT count(*), lower(name) FROM t", "SELECT to_char(at, 'YYYY') FROM t", "SELECT 1"):
        assert not classify_uncached(sql).volatile, sql


def test_cache_config_is_checked() -> None:
    import pytest

    from heliosproxy.config.load import parse_config
    from heliosproxy.errors import ConfigError

    base = "nodes: [{name: p, host: 127.0.0.1, port: 5432, role: primary}]\n"
    cfg = parse_config(base + "cache: {enabled: true, max_memory: 8MiB, rules: [{tables: [t], ttl: 2s}]}\n", "c.yaml")
    assert cfg.cache.enabled and cfg.cache.max_memory == 8 * 1024 * 1024 and cfg.cache.rules[0].ttl == 2.0
    assert not parse_config(base, "c.yaml").cache.enabled  # off by default
    for bad, words in (
        ("cache: {invalidation: wal}\n", "wal needs cache.wal_user"),
        ("cache: {invalidation: binlog}\n", "'binlog' is not one of proxy, wal"),
        ("cache: {rules: [{tables: []}]}\n", "non-empty list of table names"),
        ("cache: {default_ttl: 0s}\n", "must be > 0"),
    ):
        with pytest.raises(ConfigError) as exc:
            parse_config(base + bad, "c.yaml")
        assert words in str(exc.value), str(exc.value)
