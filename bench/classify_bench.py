"""Micro-benchmark of Classifier.classify: µs per call for exact hit, pre-key hit, normalize hit and miss."""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import timeit
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from heliosproxy.sql import Classifier, parse_hints

QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {}"


def _per_call_us(fn: object, number: int, repeat: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def _old_classifier(rev: str) -> type:
    """Classifier as of git revision `rev` (for an interleaved A/B on a noisy machine)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:heliosproxy/sql/classify.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("old_classify")
    sys.modules["old_classify"] = mod
    exec(compile(src, f"{rev}:classify.py", "exec"), mod.__dict__)
    return mod.Classifier  # type: ignore[no-any-return]


def ab(rev: str, n: int, rounds: int) -> None:
    """New integer literal per call (pgbench -M simple): this checkout vs `rev`, interleaved."""
    rows: dict[str, list[float]] = {"now": [], rev: []}
    kinds = {"now": Classifier, rev: _old_classifier(rev)}
    for _ in range(rounds):
        for name, cls in kinds.items():
            c = cls(cache_size=10_000)
            c.classify(QUERY.format(1))
            c.classify(QUERY.format(2))
            counter = itertools.count(100_000)
            fmt_counter = itertools.count(100_000)
            t = _per_call_us(lambda c=c, k=counter: c.classify(QUERY.format(next(k))), n, 1)
            f = _per_call_us(lambda k=fmt_counter: QUERY.format(next(k)), n, 1)
            rows[name].append(t - f)
    for name, v in rows.items():
        each = ", ".join(f"{x:.2f}" for x in v)
        print(f"new integer literal, {name:8s} median {statistics.median(v):6.2f} µs/call  ({each})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--number", type=int, default=20_000, help="calls per timing run")
    ap.add_argument("-r", "--repeat", type=int, default=5, help="timing runs (best is kept)")
    ap.add_argument("--old", default=None, help="also compare a new-literal classify with git revision OLD")
    args = ap.parse_args()
    n, r = args.number, args.repeat
    if args.old:
        ab(args.old, n, max(r, 5))

    c = Classifier(cache_size=10_000)
    c.classify(QUERY.format(1))
    exact = _per_call_us(lambda: c.classify(QUERY.format(1)), n, r)
    fmt = _per_call_us(lambda: QUERY.format(1), n, r)  # the cost of building the text itself

    counter = itertools.count(100_000)  # same width: answered by the literal pre-key
    fp = _per_call_us(lambda: c.classify(QUERY.format(next(counter))), n, r)
    strs = itertools.count(100_000)  # string literals have no pre-key: normalize() each time
    c.classify(QUERY.format("'x'"))
    norm = _per_call_us(lambda: c.classify(QUERY.format(f"'{next(strs)}'")), n, r)
    fmt_s = _per_call_us(lambda: QUERY.format(f"'{next(strs)}'"), n, r)

    miss_n = max(1, n // 10)
    misses = itertools.count()
    miss = _per_call_us(lambda: Classifier(cache_size=1).classify(UPDATE.format(1, next(misses))), miss_n, r)
    hint_none = _per_call_us(lambda: parse_hints(QUERY.format(1)), n, r)
    hinted = "/*helios:route=standby,lag=500*/ " + QUERY.format(1)
    hint_some = _per_call_us(lambda: parse_hints(hinted), n, r)

    print(f"classify exact hit       {exact - fmt:8.2f} µs/call  ({exact:.2f} incl. str.format)")
    print(f"classify pre-key hit     {fp - fmt:8.2f} µs/call  (new integer of the same width)")
    print(f"classify normalize hit   {norm - fmt_s:8.2f} µs/call  (new string literal: pglast normalize)")
    print(f"classify miss (parse)    {miss - fmt:8.2f} µs/call")
    print(f"parse_hints, no marker   {hint_none - fmt:8.2f} µs/call")
    print(f"parse_hints, one comment {hint_some:8.2f} µs/call")
    print(f"stats: {c.stats}")


if __name__ == "__main__":
    main()
