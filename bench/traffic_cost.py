"""Cost of mirroring and query analytics (issue 15 §4, §5): pgbench -S through a proxy with each off and on.

Run: .venv/bin/python bench/traffic_cost.py [--seconds 5] [--clients 8] [--rounds 2] [--modes simple,prepared]
Starts a primary + standby and a shadow cluster (tests/helpers/pgcluster.py), one proxy per configuration,
and prints TPS and the proxy's CPU µs per transaction for each (rounds alternate the order).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import run as bench  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {},
    "analytics": {"analytics": {"enabled": True}},
    "mirror-0.1": {"mirror": {"node": "shadow", "sample": 0.1}},
    "mirror-1.0": {"mirror": {"node": "shadow", "sample": 1.0}},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--only", default=",".join(CONFIGS))
    args = ap.parse_args()
    from tests.helpers.pgcluster import PgCluster
    from tests.helpers.proxy import ProxyProcess

    names = [n for n in args.only.split(",") if n]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with bench.cluster_up(1) as cluster, PgCluster(standbys=0) as shadow:
        res = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(shadow.primary.port),
                              "-U", bench.USER, bench.DBNAME], env=bench.pgbench_env(), capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"pgbench -i on the shadow failed:\n{res.stderr}")
        nodes = [*cluster.node_config(),
                 {"name": "shadow", "host": "127.0.0.1", "port": shadow.primary.port, "role": "shadow"}]
        proxies: dict[str, ProxyProcess] = {}
        try:
            for name in names:
                cfg = bench.proxy_config(nodes)
                cfg.pop("listen")
                cfg.update(CONFIGS[name])
                proxies[name] = ProxyProcess(cfg)
            for r in range(args.rounds):
                order = names if r % 2 == 0 else list(reversed(names))
                for mode in args.modes.split(","):
                    for name in order:
                        p = proxies[name]
                        target = bench.Target(name, p.port, p.pid)
                        out = bench.run_pgbench(target, mode, args.clients, args.seconds).as_dict()
                        results.setdefault((name, mode), []).append(out)
                        print(f"round {r + 1} {mode:9} {name:11} tps {out['tps']:9.0f}  cpu "
                              f"{out['cpu_us_per_txn']:6.1f} µs/txn", flush=True)
        finally:
            for p in proxies.values():
                p.close()
    print(f"\nmedians and minimums, pgbench -S -c {args.clients}, {args.seconds:g} s x {args.rounds} rounds")
    print(f"{'mode':9} {'config':11} {'tps':>9} {'cpu µs/txn':>11} {'vs off':>7} {'min cpu':>8} {'vs off':>7}")
    for mode in args.modes.split(","):
        offs = results.get(("off", mode), [{"cpu_us_per_txn": 0}])
        base = statistics.median(x["cpu_us_per_txn"] for x in offs)
        base_min = min(x["cpu_us_per_txn"] for x in offs)
        for name in names:
            rows = results[(name, mode)]
            tps = statistics.median(x["tps"] for x in rows)
            cpu = statistics.median(x["cpu_us_per_txn"] for x in rows)
            low = min(x["cpu_us_per_txn"] for x in rows)
            rel = f"{(cpu / base - 1) * 100:+.0f}%" if base else "-"
            rel_min = f"{(low / base_min - 1) * 100:+.0f}%" if base_min else "-"
            print(f"{mode:9} {name:11} {tps:9.0f} {cpu:11.1f} {rel:>7} {low:8.1f} {rel_min:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
