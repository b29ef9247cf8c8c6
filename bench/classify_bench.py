"""Micro-benchmark of Classifier.classify: µs per call for exact hit, fingerprint hit and miss."""

from __future__ import annotations

import argparse
import itertools
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from heliosproxy.sql import Classifier, parse_hints

QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {}"


def _per_call_us(fn: object, number: int, repeat: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--number", type=int, default=20_000, help="calls per timing run")
    ap.add_argument("-r", "--repeat", type=int, default=5, help="timing runs (best is kept)")
    args = ap.parse_args()
    n, r = args.number, args.repeat

    c = Classifier(cache_size=10_000)
    c.classify(QUERY.format(1))
    exact = _per_call_us(lambda: c.classify(QUERY.format(1)), n, r)
    fmt = _per_call_us(lambda: QUERY.format(1), n, r)  # the cost of building the text itself

    counter = itertools.count(2)
    fp = _per_call_us(lambda: c.classify(QUERY.format(next(counter))), n, r)

    miss_n = max(1, n // 10)
    misses = itertools.count()
    miss = _per_call_us(lambda: Classifier(cache_size=1).classify(UPDATE.format(1, next(misses))), miss_n, r)
    hint_none = _per_call_us(lambda: parse_hints(QUERY.format(1)), n, r)
    hinted = "/*helios:route=standby,lag=500*/ " + QUERY.format(1)
    hint_some = _per_call_us(lambda: parse_hints(hinted), n, r)

    print(f"classify exact hit       {exact - fmt:8.2f} µs/call  ({exact:.2f} incl. str.format)")
    print(f"classify fingerprint hit {fp - fmt:8.2f} µs/call")
    print(f"classify miss (parse)    {miss - fmt:8.2f} µs/call")
    print(f"parse_hints, no marker   {hint_none - fmt:8.2f} µs/call")
    print(f"parse_hints, one comment {hint_some:8.2f} µs/call")
    print(f"stats: {c.stats}")


if __name__ == "__main__":
    main()
