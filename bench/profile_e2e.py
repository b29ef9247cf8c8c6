"""End-to-end A/B of two proxy versions: pgbench -S through each, alternating, TPS and proxy CPU µs/tx.

    .venv/bin/python bench/profile_e2e.py --old REV [--new REV] [--modes simple,extended]
        [--clients 16,64] [--seconds 8] [--rounds 3] [--spy] [--perf]
    .venv/bin/python bench/profile_e2e.py --tree pure=DIR --tree mypyc=DIR [...]   # built trees, no git

`--tree NAME=DIR` (repeatable, instead of --old/--new) runs the `heliosproxy/` package found in
DIR as is, e.g. copies of the source with compiled extension modules built next to it (see
bench/compiled_bench.py); the rounds rotate the order of the trees.

Starts its own PostgreSQL primary (tests/helpers/pgcluster.py), `pgbench -i -s 5`, then exports
`heliosproxy/` of both revisions (git archive; the new one defaults to HEAD, i.e. committed code)
into a temp dir and runs each as `python -m heliosproxy run` from there (transaction pooling, size
20, read/write split off), alternating A/B per round. CPU is utime+stime of the proxy process from
/proc divided by pgbench's transactions. `--spy` records a py-spy profile of the new version at the
first mode/client count and prints the top self-time frames (needs `pip install py-spy`). `--perf`
records the same run with Linux `perf` (C level: where the proxy's CPU goes by shared object and by
symbol: the interpreter, uvloop, the compiled hot modules, the kernel) into bench/results/perf-*.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

import run as benchrun  # noqa: E402

from tests.helpers import free_port, wait_for_tcp  # noqa: E402
from tests.helpers.pgcluster import PgCluster  # noqa: E402


def export(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "heliosproxy"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def start_proxy(
    tree: Path, nodes: list[dict[str, object]], tmp: Path, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = benchrun.proxy_config(nodes, listen=f"127.0.0.1:{port}")
    path = tmp / f"{name}.yaml"
    path.write_text(benchrun.dump_yaml(cfg))
    log = (tmp / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "heliosproxy", "run", "--config", str(path)], cwd=tree,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 30
    while not wait_for_tcp("127.0.0.1", port, timeout=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"proxy {name} did not start:\n{(tmp / f'{name}.log').read_text()}")
    return proc, port


def spy(pid: int, seconds: float, out: Path) -> None:
    exe = Path(sys.executable).parent / "py-spy"
    subprocess.run([str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                    "--nonblocking", "--format", "raw", "--output", str(out)], capture_output=True, check=False)


def perf_profile(target: Any, pid: int, mode: str, clients: int, seconds: float, tmp: Path) -> None:
    """`perf record` of the proxy during one pgbench run; the shares by object and by symbol."""
    data = tmp / "perf.data"
    graph = ["--call-graph", "dwarf,16384"] if os.environ.get("PERF_CALLERS") else []
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock:u", "-F", "997", *graph, "-p", str(pid),
                            "-o", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = benchrun.run_pgbench(target, mode, clients, seconds).as_dict()
    rec.send_signal(2)
    rec.wait(30)
    out = BENCH_DIR / "results"
    out.mkdir(exist_ok=True)
    print(f"\nperf, {mode} c={clients}: {res['tps']:.0f} TPS, cpu {res['cpu_us_per_txn']:.1f} us/tx")
    if graph:
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "sym",
                              "-G", "--percent-limit", "1.5"], capture_output=True, text=True).stdout
        (out / f"perf-{mode}-{clients}-callers.txt").write_text(rep)
        print(f"callers: {out / f'perf-{mode}-{clients}-callers.txt'}")
    for key in ("dso", "dso,sym"):
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", key,
                              "--percent-limit", "0.15"], capture_output=True, text=True).stdout
        name = out / f"perf-{mode}-{clients}-{key.replace(',', '-')}.txt"
        name.write_text(rep)
        lines = [ln for ln in rep.splitlines() if ln.strip() and not ln.startswith("#")]
        print(f"-- by {key} (full: {name})")
        for ln in lines[:70]:
            print("  " + ln.strip())


def top_self(raw: Path, n: int = 25) -> list[tuple[str, float]]:
    self_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frame = stack.split(";")[-1]
        func, _, where = frame.partition(" (")
        self_counts[f"{func} ({where.rsplit(':', 1)[0]})" if where else func] += c  # per function, not line
    return [(frame, 100.0 * c / total) for frame, c in self_counts.most_common(n)] if total else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--old")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--modes", default="simple,extended")
    ap.add_argument("--clients", default="16,64")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spy", action="store_true")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    a = ap.parse_args()
    if not a.tree and not a.old:
        ap.error("give --old REV or --tree NAME=DIR")
    modes = a.modes.split(",")
    clients = [int(c) for c in a.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="helios-e2e-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if a.tree:
            trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in a.tree)}
        else:
            trees = {"old": export(a.old, tmp / "old"), "new": export(a.new, tmp / "new")}
        with PgCluster(standbys=0, settings={"max_connections": "200"}) as cluster:
            env = benchrun.pgbench_env()
            subprocess.run(["pgbench", "-i", "-q", "-s", "5", "-h", "127.0.0.1", "-p", str(cluster.primary.port),
                            "-U", benchrun.USER, benchrun.DBNAME], env=env, check=True, capture_output=True)
            nodes = [n for n in cluster.node_config() if n.get("role") == "primary"]
            targets = {}
            for name, tree in trees.items():
                proc, port = start_proxy(tree, nodes, tmp, name)
                procs.append(proc)
                targets[name] = benchrun.Target(name, port, proc.pid)
            results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
            for r in range(a.rounds):
                names = list(trees)
                order = names[r % len(names):] + names[:r % len(names)]
                if r % 2:
                    order.reverse()
                for mode in modes:
                    for c in clients:
                        for name in order:
                            res = benchrun.run_pgbench(targets[name], mode, c, a.seconds).as_dict()
                            results.setdefault((mode, c, name), []).append(res)
                            print(f"round {r + 1} {mode:8s} c={c:<3d} {name}: {res['tps']:8.0f} TPS "
                                  f"cpu {res['cpu_us_per_txn']:6.1f} us/tx (usr {res['cpu_user_us_per_txn']:5.1f})"
                                  f" failed {res['failed']}", flush=True)
            print(f"\nmedians over {a.rounds} rounds ({', '.join(f'{k} = {v}' for k, v in trees.items())})")
            print(f"{'mode':9s}{'cl':>4s}  {'version':8s}{'TPS':>8s}{'cpu us/tx':>11s}{'usr':>7s}{'sys':>7s}")
            for (mode, c, name), runs in sorted(results.items()):
                def med(k: str, runs: list[dict[str, Any]] = runs) -> float:
                    return float(statistics.median(x[k] for x in runs))
                print(f"{mode:9s}{c:>4d}  {name:8s}{med('tps'):8.0f}{med('cpu_us_per_txn'):11.1f}"
                      f"{med('cpu_user_us_per_txn'):7.1f}{med('cpu_sys_us_per_txn'):7.1f}")
            if a.spy:
                raw = tmp / "spy.txt"
                spied = "new" if "new" in targets else list(targets)[-1]
                pid = targets[spied].pid
                assert pid is not None
                import threading

                t = threading.Thread(target=spy, args=(pid, a.seconds - 2, raw))
                t.start()
                benchrun.run_pgbench(targets[spied], modes[0], clients[0], a.seconds)
                t.join()
                if raw.exists():
                    print(f"\npy-spy self time, new, {modes[0]} c={clients[0]}:")
                    for frame, pct in top_self(raw):
                        print(f"  {pct:5.1f}%  {frame}")
                    shutil.copy(raw, BENCH_DIR / "results" / "profile-e2e-new.txt")
            if a.perf:
                spied = "new" if "new" in targets else list(targets)[-1]
                pid = targets[spied].pid
                assert pid is not None
                perf_profile(targets[spied], pid, modes[0], clients[0], a.seconds, tmp)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
