"""Python calls per transaction of two proxy versions (cProfile, deterministic), pgbench -S through each.

    .venv/bin/python bench/call_counts.py --old REV [--mode simple|extended|prepared] [--tx 3000]

Starts its own PostgreSQL primary, exports `heliosproxy/` of REV (git archive) next to the working tree's,
runs each proxy under cProfile for `pgbench -n -S -c 4 -t TX`, stops it and prints calls per transaction and
the functions whose call counts differ most. Unlike CPU time, call counts do not depend on machine load.
"""

from __future__ import annotations

import argparse
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

import profile_e2e as pe  # noqa: E402
import run as benchrun  # noqa: E402

from tests.helpers import free_port, wait_for_tcp  # noqa: E402
from tests.helpers.pgcluster import PgCluster  # noqa: E402


def counts(path: Path) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for (f, _line, fn), (_cc, nc, _tt, _ct, _callers) in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
        key = (f.split("/heliosproxy/")[-1] if "/heliosproxy/" in f else f.rsplit("/", 1)[-1], fn)
        out[key] = out.get(key, 0) + nc
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision to compare with the working tree")
    ap.add_argument("--mode", default="extended", choices=("simple", "extended", "prepared"))
    ap.add_argument("--tx", type=int, default=3000, help="transactions per pgbench client (4 clients)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="helios-calls-"))
    trees = {"old": pe.export(a.old, tmp / "old"), "new": ROOT}
    total = 4 * a.tx
    with PgCluster(standbys=0, settings={"max_connections": "200"}) as cluster:
        env = benchrun.pgbench_env()
        subprocess.run(["pgbench", "-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p", str(cluster.primary.port),
                        "-U", "app", "app"], env=env, check=True, capture_output=True)
        nodes = [{"name": "primary", "host": "127.0.0.1", "port": cluster.primary.port, "role": "primary"}]
        result: dict[str, dict[tuple[str, str], int]] = {}
        for name, tree in trees.items():
            port = free_port()
            cfg_path = tmp / f"{name}.yaml"
            cfg_path.write_text(benchrun.dump_yaml(benchrun.proxy_config(nodes, listen=f"127.0.0.1:{port}")))
            prof = tmp / f"{name}.prof"
            with (tmp / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "heliosproxy",
                                         "run", "--config", str(cfg_path)], cwd=tree, stdout=log,
                                        stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while not wait_for_tcp("127.0.0.1", port, timeout=0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"proxy {name} did not start: {(tmp / f'{name}.log').read_text()}")
            subprocess.run(["pgbench", "-n", "-S", "-M", a.mode, "-c", "4", "-t", str(a.tx), "-h", "127.0.0.1",
                            "-p", str(port), "-U", "app", "app"], env=env, check=True, capture_output=True)
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            result[name] = counts(prof)
    old, new = result["old"], result["new"]
    print(f"{a.mode}: calls per transaction old {sum(old.values()) / total:.1f}, new {sum(new.values()) / total:.1f}")
    keys = sorted(set(old) | set(new), key=lambda k: -abs(new.get(k, 0) - old.get(k, 0)))
    for k in keys[:25]:
        print(f"{(new.get(k, 0) - old.get(k, 0)) / total:+7.2f}  {k[0]}:{k[1]}")


if __name__ == "__main__":
    main()
