"""`make bench`: pgbench -S through direct, PgBouncer and HeliosProxy targets; TPS, latency, CPU µs/txn, RSS, hook cost.

Run: .venv/bin/python bench/run.py [--quick] [--only T1,T2] [--modes simple,extended] [--clients 1,16]
     [--seconds 10] [--rounds 3] [--profile] [--no-connect] [--no-rss] [--idle-clients 5000]
Starts its own PostgreSQL 15 primary + streaming standby (tests/helpers/pgcluster.py), PgBouncer and three
HeliosProxy processes, runs every cell, prints a table and writes JSON to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

import cache_bench  # noqa: E402
import pgbouncer as pgb  # noqa: E402

USER, PASSWORD, DBNAME = "app", "apppass", "app"
ALL_TARGETS = (
    "direct", "pgbouncer", "heliosproxy", "heliosproxy-rw", "heliosproxy-rw-eventual", "heliosproxy-wasm",
    "heliosproxy-2w", "pgbouncer-tls", "heliosproxy-tls", "heliosproxy-anomaly", "heliosproxy-cache",
    "heliosproxy-traffic",
)
ALL_MODES = ("simple", "extended", "prepared")
CONNECT_TARGETS = ("direct", "pgbouncer", "heliosproxy", "pgbouncer-tls", "heliosproxy-tls")
PROXY_TARGETS = (
    "heliosproxy", "heliosproxy-rw", "heliosproxy-rw-eventual", "heliosproxy-wasm", "heliosproxy-2w", "heliosproxy-tls",
    "heliosproxy-anomaly",
    "heliosproxy-cache",
    "heliosproxy-traffic",
)
# The anomaly row: the four anomaly-detection plugins loaded (issue 15 part 6), as shipped (sqli_guard reports).
ANOMALY_PLUGINS = ("sqli_guard", "rate_spike", "novel_query", "auth_burst")
# heliosproxy-cache: the result cache on, with a rule covering pgbench's tables (pgbench -S reads random
# rows: mostly misses, so the row shows what the cache costs when it does not help).
CACHE_CONFIG: dict[str, Any] = {"enabled": True, "rules": [{"tables": ["pgbench_accounts"], "ttl": "60s"}]}
# heliosproxy-traffic: issue 15's traffic control on together (no statement is ever refused): query analytics,
# a per-user rate limit far above pgbench's rate plus a concurrency cap above its clients, circuit breakers, and
# mirroring of 10% of the reads to the standby, which this row configures as a shadow node.
TRAFFIC_CONFIG: dict[str, Any] = {
    "analytics": {"enabled": True},
    "limits": [{"name": "bench", "key": "user", "rate": 10_000_000, "burst": 10_000_000, "concurrency": 1000}],
    "circuit_breaker": {"failures": 3, "window": "10s", "open_for": "8s"},
}
# The TLS row: clients use TLS (pgbench with PGSSLMODE=require) to PgBouncer and to HeliosProxy.
TLS_TARGETS = ("pgbouncer-tls", "heliosproxy-tls")
NOOP_PLUGIN = REPO_ROOT / "plugins" / "build"
RESULTS_DIR = BENCH_DIR / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- config


def proxy_config(
    nodes: Sequence[dict[str, Any]],
    *,
    listen: str = "127.0.0.1:0",
    read_write_split: bool = False,
    plugins_dir: str | None = None,
    pool_size: int = 20,
    max_client_connections: int = 1000,
    workers: int = 1,
) -> dict[str, Any]:
    """A HeliosProxy config (YAML keys) for one bench target: transaction pooling, SCRAM clients."""
    cfg: dict[str, Any] = {
        "listen": listen,
        "max_client_connections": max_client_connections,
        "client_login_timeout": "60s",
        "auth": {"method": "scram-sha-256"},
        "users": [{"name": USER, "password": PASSWORD}],
        "nodes": [dict(n) for n in nodes],
        "pool": {"mode": "transaction", "size": pool_size},
        "routing": {"read_write_split": read_write_split},
        "admin": {"listen": None},
        # PgBouncer runs with log_connections = 0; the proxy logs connections at info level.
        "log": {"level": "warning"},
        "workers": workers,
    }
    if plugins_dir is not None:
        cfg["plugins"] = {"enabled": True, "dir": plugins_dir}
    return cfg


def dump_yaml(cfg: dict[str, Any]) -> str:
    """JSON is YAML: the config file text without importing yaml here."""
    return json.dumps(cfg, indent=2) + "\n"


def noop_plugin_dir(dest: Path, build_dir: Path = NOOP_PLUGIN, names: Sequence[str] = ("noop",)) -> Path:
    """Copy noop.wasm + noop.yaml (or the plugins `names`, from `make plugins`) into `dest`, which then holds
    only those plugins."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (f"{n}.{ext}" for n in names for ext in ("wasm", "yaml")):
        src = build_dir / name
        if not src.exists():
            raise SystemExit(f"{src} is missing: run `make plugins` first")
        shutil.copyfile(src, dest / name)
    return dest


# ------------------------------------------------------------------------------------ processes, CPU


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_times(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of `pids`, including reaped children."""
    user = sys_ = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        user += (int(f[11]) + int(f[13])) / CLK_TCK
        sys_ += (int(f[12]) + int(f[14])) / CLK_TCK
    return user, sys_


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Target:
    """Where pgbench connects, and which processes' CPU is charged to it."""

    name: str
    port: int
    pid: int | None = None  # root process of the pooler (None: direct)
    session_db: str | None = None  # database to use for -M prepared (PgBouncer's session alias)
    sslmode: str = "disable"  # PGSSLMODE for pgbench

    def db(self, mode: str) -> str:
        return self.session_db if (mode == "prepared" and self.session_db) else DBNAME

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.pid is not None else []


# -------------------------------------------------------------------------------------------- pgbench


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_ms: float
    p99_ms: float | None
    cpu_user_s: float
    cpu_sys_s: float
    wall_s: float
    cpu_measured: bool = True

    def as_dict(self) -> dict[str, Any]:
        per = 1e6 / self.transactions if self.transactions else 0.0
        cpu = self.cpu_measured and self.transactions > 0
        return {
            "tps": self.tps,
            "transactions": self.transactions,
            "failed": self.failed,
            "latency_ms": self.latency_ms,
            "p99_ms": self.p99_ms,
            "cpu_us_per_txn": (self.cpu_user_s + self.cpu_sys_s) * per if cpu else None,
            "cpu_user_us_per_txn": self.cpu_user_s * per if cpu else None,
            "cpu_sys_us_per_txn": self.cpu_sys_s * per if cpu else None,
            "wall_s": self.wall_s,
        }


def pgbench_env(sslmode: str = "disable") -> dict[str, str]:
    env = dict(os.environ)
    env.update(PGPASSWORD=PASSWORD, PGSSLMODE=sslmode, PGGSSENCMODE="disable", PGAPPNAME="bench")
    return env


def pgbench_cmd(target: Target, mode: str, clients: int, seconds: float, *, connect: bool = False,
                log_prefix: str | None = None, sampling_rate: float = 1.0) -> list[str]:
    cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(2, clients)),
           "-T", str(max(1, round(seconds))), "-h", "127.0.0.1", "-p", str(target.port), "-U", USER]
    if connect:
        cmd.append("-C")
    if log_prefix is not None:
        cmd += ["--log", f"--log-prefix={log_prefix}"]
        if sampling_rate < 1.0:
            cmd.append(f"--sampling-rate={sampling_rate}")
    cmd.append(target.db(mode))
    return cmd


def _grab(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1) if m else None


def parse_pgbench(out: str) -> tuple[float, int, int, float]:
    """(tps, transactions, failed, latency average ms) from pgbench's summary."""
    tps = _grab(r"^tps = ([\d.]+)", out)
    txns = _grab(r"^number of transactions actually processed: (\d+)", out)
    if tps is None or txns is None:
        raise RuntimeError(f"cannot parse pgbench output:\n{out}")
    failed = _grab(r"^number of failed transactions: (\d+)", out)
    lat = _grab(r"^latency average = ([\d.]+) ms", out)
    return float(tps), int(txns), int(failed or 0), float(lat or "nan")


def p99_from_logs(log_dir: Path) -> float | None:
    """p99 latency in ms over pgbench's per-transaction logs (3rd column: latency in µs)."""
    lat: list[int] = []
    for path in log_dir.iterdir():
        with path.open() as f:
            for line in f:
                parts = line.split(maxsplit=3)
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    if not lat:
        return None
    lat.sort()
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000.0


def standby_commits(cluster: Any) -> int:  # tests.helpers.pgcluster.PgCluster
    """Transactions the first standby has committed in the bench database (pg_stat_database, flushed
    by idle backends within about a second: waits that long first)."""
    time.sleep(1.5)
    node = cluster.standbys[0]
    out = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(node.port), "-U", USER, "-d", DBNAME,
                          "-c", "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"],
                         env=pgbench_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def run_pgbench(target: Target, mode: str, clients: int, seconds: float, *, connect: bool = False,
                sampling_rate: float = 1.0, during: Callable[[], None] | None = None) -> PgbenchResult:
    with tempfile.TemporaryDirectory(prefix="helios-bench-log-") as d:
        log_dir = Path(d)
        cmd = pgbench_cmd(target, mode, clients, seconds, connect=connect,
                          log_prefix=None if connect else str(log_dir / "pgbench_log"), sampling_rate=sampling_rate)
        pids = target.pids()
        u0, s0 = cpu_times(pids)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=pgbench_env(target.sslmode), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=d)
        if during is not None:
            during()
        out, err = proc.communicate(timeout=seconds + 120)
        wall = time.monotonic() - t0
        u1, s1 = cpu_times(target.pids() if target.pid is not None else pids)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
        tps, txns, failed, lat = parse_pgbench(out)
        p99 = None if connect else p99_from_logs(log_dir)
    return PgbenchResult(tps, txns, failed, lat, p99, u1 - u0, s1 - s0, wall, cpu_measured=target.pid is not None)


# --------------------------------------------------------------------------------- idle clients, SCRAM


class WireClient:
    """A raw-socket PostgreSQL client that logs in with SCRAM-SHA-256 and then just holds the connection."""

    _salted: dict[tuple[bytes, int], bytes] = {}  # class-wide: PBKDF2 once per (salt, iterations)

    def __init__(self, port: int, user: str = USER, password: str = PASSWORD, database: str = DBNAME,
                 timeout: float = 30.0):
        self.user, self.password, self.database = user, password, database
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def _recv(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack("!I", self.buf[1:5])
                if len(self.buf) >= 1 + length:
                    t, body = self.buf[:1], self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk

    def _send(self, t: bytes, body: bytes) -> None:
        self.sock.sendall(t + struct.pack("!I", len(body) + 4) + body)

    def _expect_auth(self, code: int) -> bytes:
        t, body = self._recv()
        if t == b"E":
            raise ConnectionError(f"login failed: {body!r}")
        (got,) = struct.unpack("!I", body[:4])
        if t != b"R" or got != code:
            raise ConnectionError(f"expected AuthenticationRequest {code}, got {t!r} {got}")
        return body[4:]

    def login(self) -> None:
        params = f"user\0{self.user}\0database\0{self.database}\0application_name\0idle\0\0".encode()
        self.sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        mechs = self._expect_auth(10).split(b"\0")
        if b"SCRAM-SHA-256" not in mechs:
            raise ConnectionError(f"server offers {mechs!r}, not SCRAM-SHA-256")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
        server_first = self._expect_auth(11).decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
        if not attrs["r"].startswith(nonce):
            raise ConnectionError("server nonce does not extend ours")
        key = (salt, iters)
        if key not in self._salted:
            self._salted[key] = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iters)
        salted = self._salted[key]
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        auth_msg = f"{first_bare},{server_first},{final_bare}".encode()
        sig = hmac.digest(stored_key, auth_msg, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig, strict=True))).decode()
        self._send(b"p", f"{final_bare},p={proof}".encode())
        self._expect_auth(12)
        while True:
            t, body = self._recv()
            if t == b"E":
                raise ConnectionError(f"login failed: {body!r}")
            if t == b"Z":
                return

    def query_ok(self, sql: str = "SELECT 1") -> bool:
        self._send(b"Q", sql.encode() + b"\0")
        ok = True
        while True:
            t, _ = self._recv()
            if t == b"E":
                ok = False
            if t == b"Z":
                return ok

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(b"X", b"")
        self.sock.close()


def cache_hit_row(nodes: Sequence[dict[str, Any]], direct_port: int, proxies: list[Any]) -> dict[str, Any]:
    """bench/cache_bench.py against a proxy with the result cache on (started here, closed by the caller)."""
    from tests.helpers.proxy import ProxyProcess

    cfg = proxy_config(nodes)
    cfg["cache"] = dict(CACHE_CONFIG)
    cfg.pop("listen")
    proxy = ProxyProcess(cfg)
    proxies.append(proxy)

    def connect(port: int) -> WireClient:
        c = WireClient(port)
        c.login()
        return c

    try:
        return cache_bench.measure(proxy.port, direct_port, connect)
    except Exception as exc:
        return {"error": repr(exc)}


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit (children inherit it); the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if want < needed and os.geteuid() == 0:
            hard = want = needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def idle_rss(nodes: Sequence[dict[str, Any]], n_clients: int) -> dict[str, Any]:
    """RSS of a fresh proxy before and with `n_clients` idle SCRAM-authenticated clients."""
    from tests.helpers.proxy import ProxyProcess

    raise_nofile(n_clients * 2 + 1000)
    cfg = proxy_config(nodes, max_client_connections=n_clients + 1000)
    cfg.pop("listen")
    clients: list[WireClient] = []
    with ProxyProcess(cfg) as proxy:
        warm = WireClient(proxy.port)
        warm.login()
        assert warm.query_ok()
        warm.close()
        time.sleep(1.0)
        pids = process_tree(proxy.pid)
        before = rss_bytes(pids)
        t0 = time.monotonic()
        error = None
        try:
            for _ in range(n_clients):
                c = WireClient(proxy.port)
                clients.append(c)
                c.login()
        except (OSError, ConnectionError) as exc:
            error = f"after {len(clients) - 1} clients: {exc}"
        login_s = time.monotonic() - t0
        time.sleep(2.0)
        after = rss_bytes(process_tree(proxy.pid))
        sample = clients[:: max(1, len(clients) // 10)][:10] if error is None else []
        alive = sum(1 for c in sample if c.query_ok())
        for c in clients:
            c.close()
    accepted = len(clients) - (1 if error else 0)
    return {
        "clients": n_clients,
        "accepted": accepted,
        "error": error,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_client": (after - before) / accepted if accepted else None,
        "logins_per_s": accepted / login_s if login_s > 0 else None,
        "sampled_clients_answering": f"{alive}/{len(sample)}",
    }


# ------------------------------------------------------------------------------------- WASM hook, py-spy


def wasm_hook(n: int = 20000) -> dict[str, Any] | None:
    script = BENCH_DIR / "hook_bench.py"
    if not script.exists():
        return None
    res = subprocess.run([sys.executable, str(script), "--json", "--n", str(n)], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=600)
    if res.returncode != 0:
        return {"error": (res.stdout + res.stderr)[-2000:]}
    try:
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": res.stdout[-2000:]}
    return out


def py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def summarize_raw_profile(text: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed stack) output."""
    self_s: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = []
        for fr in stack.split(";"):
            m = _FRAME.match(fr)
            name = f"{m.group(1)} ({Path(m.group(2)).name})" if m else fr
            frames.append(name)
        if frames:
            self_s[frames[-1]] = self_s.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_pct": share(self_s), "inclusive_pct": share(incl)}


def profile_cells(target: Target, modes: Sequence[str], clients: int, seconds: float,
                  out_dir: Path) -> dict[str, Any]:
    """pgbench at `clients` against `target` while py-spy samples the proxy; not counted in the medians."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not found (.venv/bin/python -m pip install py-spy)"}
    out: dict[str, Any] = {}
    for mode in modes:
        raw = out_dir / f"profile-{target.name}-{mode}-{clients}.txt"
        holder: list[subprocess.Popen[str]] = []

        def start_spy(raw: Path = raw, holder: list[subprocess.Popen[str]] = holder) -> None:
            time.sleep(0.5)
            holder.append(subprocess.Popen(
                [spy, "record", "--nonblocking", "-r", "250", "-d", str(max(1, int(seconds) - 1)), "-f", "raw",
                 "-o", str(raw), "-p", str(target.pid)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

        res = run_pgbench(target, mode, clients, seconds, during=start_spy)
        spy_out = holder[0].communicate(timeout=60)[0] if holder else ""
        entry: dict[str, Any] = {"pgbench": res.as_dict(), "raw_file": str(raw)}
        if raw.exists():
            entry.update(summarize_raw_profile(raw.read_text()))
        else:
            entry["error"] = spy_out[-1000:]
        out[mode] = entry
    return out


# ------------------------------------------------------------------------------------------ the run


@dataclass
class Plan:
    targets: list[str]
    modes: list[str]
    clients: list[int]
    seconds: float
    rounds: int
    connect: bool = True
    rss: bool = True
    idle_clients: int = 5000
    profile: bool = False
    sampling_rate: float = 1.0
    connect_clients: int = 16
    scale: int = 10
    extra: dict[str, Any] = field(default_factory=dict)
    baseline: Path | None = None  # target heliosproxy-base runs the package of this checkout
    cache_row: bool = True


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 3 s, clients 1 and 16, 1000 idle clients")
    ap.add_argument("--baseline", metavar="DIR", type=Path,
                    help="also run target heliosproxy-base: the heliosproxy package of another checkout "
                         "(e.g. a git worktree of an older commit), same config as heliosproxy")
    ap.add_argument("--only", metavar="TARGETS", help=f"comma list of targets (default all: {','.join(ALL_TARGETS)})")
    ap.add_argument("--modes", metavar="MODES",
                    help="comma list of pgbench -M modes (default simple,extended,prepared)")
    ap.add_argument("--clients", metavar="N,N", help="comma list of client counts (default 1,16,64)")
    ap.add_argument("--seconds", type=float, help="pgbench -T per cell (default 10; --quick 3)")
    ap.add_argument("--rounds", type=int, help="rounds; odd rounds run the targets in reverse order (default 3)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    ap.add_argument("--sampling-rate", type=float, default=1.0,
                    help="pgbench --sampling-rate of the per-transaction logs used for p99 (default 1.0)")
    ap.add_argument("--idle-clients", type=int, help="idle SCRAM clients for the RSS row (default 5000; --quick 1000)")
    ap.add_argument("--no-connect", action="store_true", help="skip the pgbench -C rows")
    ap.add_argument("--no-rss", action="store_true", help="skip the idle-client RSS row")
    ap.add_argument("--no-cache-row", action="store_true", help="skip the result cache hit vs server round trip row")
    ap.add_argument("--cache-only", action="store_true",
                    help="only the result cache row (no pgbench cells, RSS or hook rows)")
    ap.add_argument("--profile", action="store_true",
                    help="after the cells, py-spy the heliosproxy target at 16 clients per mode (needs py-spy)")
    a = ap.parse_args(argv)

    def csv(value: str | None, default: Sequence[str], allowed: Sequence[str] | None, what: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()] if value else list(default)
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad:
            ap.error(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed or ())})")
        return items

    targets = csv(a.only, ALL_TARGETS, ALL_TARGETS, "target")
    if a.baseline is not None:
        targets = [*targets, "heliosproxy-base"]
    modes = csv(a.modes, ALL_MODES, ALL_MODES, "mode")
    try:
        clients = [int(c) for c in csv(a.clients, ("1", "16") if a.quick else ("1", "16", "64"), None, "clients")]
    except ValueError:
        ap.error("--clients takes comma-separated integers")
    if any(c < 1 for c in clients):
        ap.error("--clients must be >= 1")
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    seconds = a.seconds if a.seconds is not None else (3.0 if a.quick else 10.0)
    if rounds < 1 or seconds < 1:
        ap.error("--rounds and --seconds must be >= 1")
    idle = a.idle_clients if a.idle_clients is not None else (1000 if a.quick else 5000)
    plan = Plan(targets=targets, modes=modes, clients=clients, seconds=seconds, rounds=rounds,
                connect=not a.no_connect, rss=not a.no_rss, idle_clients=idle, profile=a.profile,
                sampling_rate=a.sampling_rate, scale=a.scale, extra={"quick": a.quick},
                baseline=a.baseline.resolve() if a.baseline else None,
                cache_row=not a.no_cache_row)
    if a.cache_only:
        plan.targets, plan.modes, plan.connect, plan.rss, plan.cache_row = ["heliosproxy"], [], False, False, True
        plan.extra["no_hook"] = True
    return plan


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(cells: dict[tuple[str, str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over rounds per cell, and the HeliosProxy/direct, HeliosProxy/PgBouncer ratios."""
    med: dict[tuple[str, str, int], dict[str, Any]] = {}
    for key, runs in cells.items():
        m = {k: _median([r[k] for r in runs]) for k in ("tps", "latency_ms", "p99_ms", "cpu_us_per_txn",
                                                       "cpu_user_us_per_txn", "cpu_sys_us_per_txn")}
        m["failed"] = sum(r["failed"] for r in runs)
        med[key] = m
    out = []
    for (target, mode, clients), m in med.items():
        direct = med.get(("direct", mode, clients), {})
        bouncer = med.get(("pgbouncer-tls" if target in TLS_TARGETS else "pgbouncer", mode, clients), {})
        row: dict[str, Any] = {"target": target, "mode": mode, "clients": clients,
                               "rounds": cells[(target, mode, clients)], "median": m}
        if target != "direct":
            row["tps_vs_direct"] = _ratio(m["tps"], direct.get("tps"))
        if target.startswith("heliosproxy"):
            row["tps_vs_pgbouncer"] = _ratio(m["tps"], bouncer.get("tps"))
            row["cpu_vs_pgbouncer"] = _ratio(m["cpu_us_per_txn"], bouncer.get("cpu_us_per_txn"))
        out.append(row)
    return out


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group(0)) if width and width.group(0) else 1)
    return format(v, spec)


def render_table(rows: list[dict[str, Any]], targets: Sequence[str], connect: list[dict[str, Any]],
                 rss: dict[str, Any] | None, hook: dict[str, Any] | None) -> str:
    lines = []
    head = (f"{'mode':<9}{'cl':>3}  {'target':<17}{'TPS':>9}{'lat ms':>8}{'p99 ms':>8}{'cpu us/tx':>10}"
            f"{'usr':>6}{'sys':>6}{'xdirect':>8}{'xpgb':>6}{'cpu xpgb':>9}")
    lines.append(head)
    lines.append("-" * len(head))
    order = {t: i for i, t in enumerate(targets)}
    rows = sorted(rows, key=lambda r: (ALL_MODES.index(r["mode"]), r["clients"], order.get(r["target"], 99)))
    prev = None
    for r in rows:
        m = r["median"]
        if prev is not None and prev != (r["mode"], r["clients"]):
            lines.append("")
        prev = (r["mode"], r["clients"])
        name = r["target"] + ("(s)" if r["target"].startswith("pgbouncer") and r["mode"] == "prepared" else "")
        fail = f"  FAILED {m['failed']}" if m["failed"] else ""
        lines.append(
            f"{r['mode']:<9}{r['clients']:>3}  {name:<17}{_fmt(m['tps'], '9.0f')}{_fmt(m['latency_ms'], '8.3f')}"
            f"{_fmt(m['p99_ms'], '8.3f')}{_fmt(m['cpu_us_per_txn'], '10.1f')}{_fmt(m['cpu_user_us_per_txn'], '6.1f')}"
            f"{_fmt(m['cpu_sys_us_per_txn'], '6.1f')}{_fmt(r.get('tps_vs_direct'), '8.2f')}"
            f"{_fmt(r.get('tps_vs_pgbouncer'), '6.2f')}{_fmt(r.get('cpu_vs_pgbouncer'), '9.2f')}{fail}"
        )
    lines.append("(s) = PgBouncer's session-mode alias: 1.18 has no prepared statements in transaction mode.")
    if any(t in TLS_TARGETS for t in targets):
        lines.append("*-tls = clients use TLS (pgbench with PGSSLMODE=require; a test CA's certificate); "
                     "xpgb compares with pgbouncer-tls.")
    lines.append("cpu us/tx = CPU of the pooler's processes (utime+stime from /proc) / transactions; "
                 "medians over rounds.")
    if connect:
        lines.append("")
        lines.append("pgbench -C (new connection + SCRAM login per transaction), -S -M simple")
        for c in connect:
            m = c["median"]
            lines.append(f"  {c['target']:<17}{_fmt(m['tps'], '9.0f')} TPS  "
                         f"cpu {_fmt(m['cpu_us_per_txn'], '.0f')} us/tx  "
                         f"xpgb {_fmt(c.get('tps_vs_pgbouncer'), '.2f')}  "
                         f"xdirect {_fmt(c.get('tps_vs_direct'), '.2f')}")
    if rss:
        lines.append("")
        if rss.get("bytes_per_client") is not None:
            lines.append(f"idle clients: {rss['accepted']}/{rss['clients']} logged in (SCRAM); proxy RSS "
                         f"{rss['rss_before_bytes'] / 2**20:.1f} MiB -> {rss['rss_after_bytes'] / 2**20:.1f} MiB = "
                         f"{rss['bytes_per_client'] / 1024:.1f} KiB per client; {rss['logins_per_s']:.0f} logins/s; "
                         f"sampled clients answering {rss['sampled_clients_answering']}"
                         + (f"; error: {rss['error']}" if rss.get("error") else ""))
        else:
            lines.append(f"idle clients: failed: {rss.get('error')}")
    if hook:
        lines.append("")
        if "error" in hook:
            lines.append(f"WASM hook: bench/hook_bench.py failed: {hook['error'][-300:]}")
        else:
            lines.append("WASM pre_query hook, 200-byte context, median: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in hook.items() if isinstance(v, float)))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    return {"cpu": model, "cpus": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "pgbench": version(["pgbench", "--version"]),
            "pgbouncer": version([pgb.find_pgbouncer() or "pgbouncer", "--version"]),
            "loadavg_at_start": os.getloadavg()}


def bouncer_secret(cluster: Any) -> str:
    """The server's SCRAM secret for USER (what a production userlist holds: PgBouncer then verifies client
    logins without PBKDF2 and logs in to the server with the client's proof); the plain password if none."""
    secret = str(cluster.sql(cluster.primary, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'"))
    return secret if secret.startswith("SCRAM-SHA-256$") else PASSWORD


@contextlib.contextmanager
def cluster_up(scale: int) -> Iterator[Any]:
    from tests.helpers.pgcluster import PgCluster

    with PgCluster(standbys=1, settings={"max_connections": "500"}) as cluster:
        env = pgbench_env()
        res = subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p",
                              str(cluster.primary.port), "-U", USER, DBNAME], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{res.stderr}")
        cluster.sql(cluster.primary, "VACUUM ANALYZE", db=DBNAME)
        cluster.wait_replay(timeout=60)
        yield cluster


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    from tests.helpers.proxy import ProxyProcess

    started = dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"bench: {info['cpu']} x{info['cpus']}, {info['memory']}; targets {','.join(plan.targets)}; modes "
          f"{','.join(plan.modes)}; clients {plan.clients}; {plan.rounds} round(s) x {plan.seconds:g} s", flush=True)
    need_bouncer = "pgbouncer" in plan.targets
    proxies: list[ProxyProcess] = []
    bouncer: pgb.PgBouncer | None = None
    bouncers: list[pgb.PgBouncer] = []  # further PgBouncers (the TLS row)
    plugin_tmp = Path(tempfile.mkdtemp(prefix="helios-bench-plugins-"))
    try:
        with cluster_up(plan.scale) as cluster:
            nodes = cluster.node_config()
            targets: dict[str, Target] = {"direct": Target("direct", cluster.primary.port)}
            if need_bouncer or (plan.connect and "pgbouncer" in plan.targets):
                bouncer = pgb.PgBouncer(server_port=cluster.primary.port, users={USER: bouncer_secret(cluster)}).start()
                targets["pgbouncer"] = Target("pgbouncer", bouncer.port, bouncer.pid, session_db=pgb.SESSION_DB)
            tls_files = None
            if any(t in TLS_TARGETS for t in plan.targets):
                from tests.helpers.tlsca import TestCA

                tls_files = TestCA(plugin_tmp / "tls").issue("bench", ("localhost", "127.0.0.1"))
            if "pgbouncer-tls" in plan.targets:
                assert tls_files is not None
                tls_bouncer = pgb.PgBouncer(server_port=cluster.primary.port, users={USER: bouncer_secret(cluster)},
                                            tls=tls_files).start()
                bouncers.append(tls_bouncer)
                targets["pgbouncer-tls"] = Target("pgbouncer-tls", tls_bouncer.port, tls_bouncer.pid,
                                                  session_db=pgb.SESSION_DB, sslmode="require")
            for name in (*PROXY_TARGETS, "heliosproxy-base"):
                if name not in plan.targets:
                    continue
                plugins = str(noop_plugin_dir(plugin_tmp)) if name == "heliosproxy-wasm" else None
                if name == "heliosproxy-anomaly":
                    plugins = str(noop_plugin_dir(plugin_tmp / "anomaly", names=ANOMALY_PLUGINS))
                # The 2-worker row keeps 20 server connections in all: pool limits are per worker.
                two = name == "heliosproxy-2w"
                rw = name.startswith("heliosproxy-rw")
                cfg = proxy_config(nodes, read_write_split=rw, plugins_dir=plugins,
                                   workers=2 if two else 1, pool_size=10 if two else 20)
                if rw:  # -rw: routing.consistency session (the default); -rw-eventual: the old behaviour
                    cfg["routing"]["consistency"] = "eventual" if name.endswith("-eventual") else "session"
                cfg.pop("listen")  # ProxyProcess picks a free port
                if name == "heliosproxy-cache":
                    cfg["cache"] = dict(CACHE_CONFIG)
                if name == "heliosproxy-traffic":
                    cfg.update(TRAFFIC_CONFIG)
                    shadow = next((n for n in cfg["nodes"] if n["role"] == "standby"), None)
                    if shadow is not None:
                        shadow["role"] = "shadow"
                        cfg["mirror"] = {"node": shadow["name"], "sample": 0.1, "statements": "reads"}
                if name == "heliosproxy-tls":
                    assert tls_files is not None
                    cfg["tls"] = {"mode": "require", "cert": str(tls_files[0]), "key": str(tls_files[1])}
                proxy = ProxyProcess(cfg, cwd=plan.baseline if name == "heliosproxy-base" else None)
                proxies.append(proxy)
                targets[name] = Target(name, proxy.port, proxy.pid,
                                       sslmode="require" if name in TLS_TARGETS else "disable")
            cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
            conn_cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
            total = plan.rounds * len(plan.modes) * len(plan.clients) * len(plan.targets)
            done = 0
            for rnd in range(plan.rounds):
                order = plan.targets if rnd % 2 == 0 else list(reversed(plan.targets))
                for mode in plan.modes:
                    for clients in plan.clients:
                        for name in order:
                            rw_cell = name.startswith("heliosproxy-rw")
                            before = standby_commits(cluster) if rw_cell else 0
                            res = run_pgbench(targets[name], mode, clients, plan.seconds,
                                              sampling_rate=plan.sampling_rate).as_dict()
                            if rw_cell:  # -S reads only: they should all run on the standby
                                res["standby_share"] = (standby_commits(cluster) - before) / max(1, res["transactions"])
                            res["round"] = rnd
                            cells.setdefault((name, mode, clients), []).append(res)
                            done += 1
                            print(f"[{done}/{total}] round {rnd + 1} {mode:<8} c={clients:<3} {name:<17} "
                                  f"{res['tps']:9.0f} TPS  cpu {_fmt(res['cpu_us_per_txn'], '6.1f')} us/tx"
                                  + (f"  on standby {res['standby_share']:.0%}" if "standby_share" in res else "")
                                  + (f"  FAILED {res['failed']}" if res["failed"] else ""), flush=True)
                if plan.connect:
                    for name in order:
                        if name not in CONNECT_TARGETS:
                            continue
                        res = run_pgbench(targets[name], "simple", plan.connect_clients, plan.seconds,
                                          connect=True).as_dict()
                        res["round"] = rnd
                        conn_cells.setdefault((name, "simple", plan.connect_clients), []).append(res)
                        print(f"round {rnd + 1} -C {name:<17} {res['tps']:9.0f} TPS", flush=True)
            rows = summarize(cells)
            connect_rows = summarize(conn_cells)
            profile = None
            if plan.profile and "heliosproxy" in targets:
                print("profiling heliosproxy under load (py-spy) ...", flush=True)
                profile = profile_cells(targets["heliosproxy"], plan.modes, 16, plan.seconds, RESULTS_DIR)
            cache_row = None
            if plan.cache_row and any(t.startswith("heliosproxy") for t in plan.targets):
                print("result cache: hit vs server round trip ...", flush=True)
                cache_row = cache_hit_row(nodes, cluster.primary.port, proxies)
            for proxy in proxies:
                proxy.close()
            proxies.clear()
            if bouncer is not None:
                bouncer.stop()
                bouncer = None
            for b in bouncers:
                b.stop()
            bouncers.clear()
            rss = None
            if plan.rss and any(t.startswith("heliosproxy") for t in plan.targets):
                print(f"idle clients: logging {plan.idle_clients} SCRAM clients in ...", flush=True)
                rss = idle_rss(nodes, plan.idle_clients)
        hook = None
        if not plan.extra.get("no_hook"):
            print("WASM hook cost (bench/hook_bench.py) ...", flush=True)
            hook = wasm_hook()
    finally:
        for proxy in proxies:
            proxy.close()
        if bouncer is not None:
            bouncer.stop()
        for b in bouncers:
            b.stop()
        shutil.rmtree(plugin_tmp, ignore_errors=True)
    table = render_table(rows, plan.targets, connect_rows, rss, hook)
    if cache_row is not None:
        table += "\n\n" + "\n".join(cache_bench.render(cache_row))
    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "plan": {k: v for k, v in plan.__dict__.items()},
        "cells": rows,
        "connect": connect_rows,
        "idle_rss": rss,
        "wasm_hook_us": hook,
        "cache": cache_row,
        "profile": profile,
        "table": table,
    }
    out = RESULTS_DIR / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(table)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
