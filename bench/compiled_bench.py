"""Micro-benchmark of the hot path's pure-Python modules, pure vs compiled builds (mypyc, Cython), same source.

    .venv/bin/python bench/compiled_bench.py                       # this checkout as installed
    .venv/bin/python bench/compiled_bench.py --compare pure=DIR mypyc=DIR cython=DIR [--rounds 5]

Each DIR holds a `heliosproxy/` package (with or without compiled extension modules next to its
sources). `--compare` runs one subprocess per tree and round, alternating the order, and prints
the median ns per operation. Operations: ReplyScanner.feed of a pgbench -S reply, the messages
helpers one transaction uses (msg, ready_for_query, bind_result_formats, read_cstr),
Classifier.classify exact-text hit and new-integer-literal (pre-key) hit, Pool.try_acquire +
release, BackendConnection.data_received to its owner, routing.decide for an auto-routed read.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

HOT = ("heliosproxy.protocol.scan", "heliosproxy.protocol.messages", "heliosproxy.sql.classify",
       "heliosproxy.pool.pool", "heliosproxy.backends.connection", "heliosproxy.routing.decide",
       "heliosproxy.metrics", "heliosproxy.session.client")


def _ops() -> dict[str, Callable[[], object]]:
    from heliosproxy.backends.connection import BackendConnection
    from heliosproxy.backends.registry import NodeState, Registry
    from heliosproxy.config.schema import Config, DatabaseRoute, NodeConfig, PoolConfig, PoolMode, Role
    from heliosproxy.pool.manager import PoolManager
    from heliosproxy.pool.pool import Pool, PoolKey
    from heliosproxy.protocol import codes, messages
    from heliosproxy.protocol.scan import ReplyScanner
    from heliosproxy.routing.catalog import Catalog
    from heliosproxy.routing.consistency import ReadPlanner, SessionReads
    from heliosproxy.routing.decide import decide
    from heliosproxy.routing.router import Router
    from heliosproxy.sql import Classifier

    reply = (messages.row_description(["abalance"]) + messages.data_row(["1234"])
             + messages.command_complete("SELECT 1") + messages.ready_for_query(codes.TX_IDLE))
    scanner = ReplyScanner()

    bind = (b"B\x00\x00\x00\x1a" + b"\x00\x00" + b"\x00\x01\x00\x00" + b"\x00\x01\x00\x00\x00\x04" + b"1234"
            + b"\x00\x01\x00\x00")
    parse = messages.parse("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1")

    def msgs() -> object:
        messages.msg(codes.F_QUERY, b"SELECT 1\x00")
        messages.ready_for_query(codes.TX_IDLE)
        messages.bind_result_formats(bind, 7)
        return messages.read_cstr(parse, 6)

    classifier = Classifier()
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711"
    classifier.classify(sql)
    classifier.classify(sql.replace("4711", "4712"))
    counter = itertools.count(100_000)
    texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {next(counter)}" for _ in range(200_000)]
    it = iter(texts)

    cfg = PoolConfig()
    pool = Pool(PoolKey("p", "db", "u"), "127.0.0.1", 1, None, 20, PoolMode.TRANSACTION, cfg)
    pool.idle.extend(BackendConnection("p", "127.0.0.1", 1, "u", "db") for _ in range(20))

    def pool_cycle() -> None:
        conn = pool.try_acquire()
        assert conn is not None
        pool.release(conn)

    class Owner:
        n = 0

        def on_backend_data(self, conn: object, data: bytes) -> None:
            self.n += 1

    bconn = BackendConnection("p", "127.0.0.1", 1, "u", "db")
    bconn.owner = Owner()  # type: ignore[assignment]

    config = Config(
        nodes=(NodeConfig("p", "127.0.0.1", 1, Role.PRIMARY), NodeConfig("s", "127.0.0.1", 2, Role.STANDBY))
    )
    reg = Registry(config)
    for n in reg.nodes.values():
        n.state = NodeState.UP
    planner = ReadPlanner(config, Router(config, reg), Catalog(config, reg, PoolManager(config)))

    class Sess:
        db_route = DatabaseRoute.AUTO
        route_pref = node_pref = branch_pref = None
        mode = PoolMode.TRANSACTION
        tx_status = codes.TX_IDLE
        reads = SessionReads()
        last_write_at = 0.0
        database = "db"
        user = "u"

    sess = Sess()
    read = classifier.classify(sql)

    return {
        "scan.feed (-S reply)": lambda: scanner.feed(reply),
        "messages (4 helpers)": msgs,
        "classify exact hit": lambda: classifier.classify(sql),
        "classify new literal": lambda: classifier.classify(next(it)),
        "pool acquire+release": pool_cycle,
        "backend data_received": lambda: bconn.data_received(reply),
        "routing.decide (read)": lambda: decide(planner, sess, read, None, None, True),  # type: ignore[arg-type]
    }


def measure(number: int) -> dict[str, object]:
    compiled = {}
    for name in HOT:
        mod = importlib.import_module(name)
        compiled[name] = not str(mod.__file__).endswith(".py")
    out: dict[str, float] = {}
    for name, fn in _ops().items():
        n = number if "new literal" not in name else min(number, 150_000)
        out[name] = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e9
    return {"compiled": compiled, "ns": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compare", nargs="*", metavar="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", "--number", type=int, default=50_000)
    ap.add_argument("--json", action="store_true", help="one measurement of the importable tree, as JSON")
    a = ap.parse_args()
    if not a.compare:
        res = measure(a.number)
        if a.json:
            print(json.dumps(res))
            return
        print("compiled:", ", ".join(k for k, v in res["compiled"].items() if v) or "none")  # type: ignore[union-attr]
        for k, v in res["ns"].items():  # type: ignore[union-attr]
            print(f"{k:28s} {v:9.0f} ns")
        return
    trees = dict(x.split("=", 1) for x in a.compare)
    rows: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    compiled: dict[str, object] = {}
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for t in order:
            env = dict(os.environ, PYTHONPATH=str(Path(trees[t]).resolve()))
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "-n", str(a.number)],
                               env=env, cwd=trees[t], capture_output=True, text=True, check=True)
            res = json.loads(p.stdout)
            compiled[t] = res["compiled"]
            for k, v in res["ns"].items():
                rows[t].setdefault(k, []).append(v)
    ops = list(next(iter(rows.values())))
    print(f"median ns per operation over {a.rounds} alternating rounds (spread: min-max)")
    print(f"{'operation':28s}" + "".join(f"{t:>22s}" for t in trees))
    for op in ops:
        cells = []
        for t in trees:
            v = rows[t][op]
            cells.append(f"{statistics.median(v):8.0f} ({min(v):.0f}-{max(v):.0f})")
        print(f"{op:28s}" + "".join(f"{c:>22s}" for c in cells))
    for t, c in compiled.items():
        print(f"{t}: compiled {', '.join(k for k, v in c.items() if v) or 'none'}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
