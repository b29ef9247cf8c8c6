"""bench/run.py and bench/pgbouncer.py: --help, arguments, generated configs, output parsing (no pgbench run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from heliosproxy.config.load import parse_config
from heliosproxy.config.schema import PoolMode

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_run = _load("bench_run", BENCH / "run.py")
bench_pgb = _load("bench_pgbouncer", BENCH / "pgbouncer.py")

NODES = [
    {"name": "primary", "host": "127.0.0.1", "port": 5432, "role": "primary"},
    {"name": "standby1", "host": "127.0.0.1", "port": 5433, "role": "standby"},
]


def test_help_runs_and_names_every_flag() -> None:
    res = subprocess.run([sys.executable, str(BENCH / "run.py"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    for flag in ("--quick", "--only", "--modes", "--clients", "--seconds", "--rounds", "--profile"):
        assert flag in res.stdout


def test_defaults_and_quick_plan() -> None:
    full = bench_run.parse_args([])
    assert full.targets == [
        "direct", "pgbouncer", "heliosproxy", "heliosproxy-rw", "heliosproxy-rw-eventual", "heliosproxy-wasm",
        "heliosproxy-2w", "pgbouncer-tls", "heliosproxy-tls", "heliosproxy-anomaly",
        "heliosproxy-cache", "heliosproxy-traffic",
    ]
    assert full.cache_row and not bench_run.parse_args(["--no-cache-row"]).cache_row
    cache_only = bench_run.parse_args(["--cache-only"])
    assert (cache_only.modes, cache_only.connect, cache_only.rss, cache_only.cache_row) == ([], False, False, True)
    assert full.modes == ["simple", "extended", "prepared"]
    assert (full.clients, full.seconds, full.rounds, full.idle_clients) == ([1, 16, 64], 10.0, 3, 5000)
    quick = bench_run.parse_args(["--quick"])
    assert (quick.clients, quick.seconds, quick.rounds) == ([1, 16], 3.0, 1)
    some = bench_run.parse_args(["--only", "direct,heliosproxy", "--modes", "prepared", "--clients", "8",
                                 "--seconds", "5", "--rounds", "2"])
    assert (some.targets, some.modes, some.clients, some.seconds, some.rounds) == (
        ["direct", "heliosproxy"], ["prepared"], [8], 5.0, 2)


@pytest.mark.parametrize("argv", [["--only", "nginx"], ["--modes", "turbo"], ["--clients", "x"], ["--rounds", "0"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_run.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("split", [False, True])
def test_proxy_config_is_valid(split: bool, tmp_path: Path) -> None:
    cfg = bench_run.proxy_config(NODES, listen="127.0.0.1:7001", read_write_split=split,
                                 plugins_dir=str(tmp_path), max_client_connections=6000)
    config = parse_config(bench_run.dump_yaml(cfg), "bench.yaml")
    assert config.routing.read_write_split is split
    assert config.pool.mode is PoolMode.TRANSACTION and config.pool.size == 20
    assert config.max_client_connections == 6000
    assert config.plugins.dir == str(tmp_path)
    assert [n.port for n in config.nodes] == [5432, 5433]
    assert config.user("app") is not None and config.user("app").password == "apppass"  # type: ignore[union-attr]


def test_noop_plugin_dir_holds_only_noop(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    for name in ("noop.wasm", "noop.yaml", "block_ddl.wasm", "block_ddl.yaml"):
        (build / name).write_bytes(name.encode())
    dest = tmp_path / "dest"
    dest.mkdir()
    bench_run.noop_plugin_dir(dest, build)
    assert sorted(os.listdir(dest)) == ["noop.wasm", "noop.yaml"]
    with pytest.raises(SystemExit, match="make plugins"):
        bench_run.noop_plugin_dir(dest, tmp_path / "missing")


def test_pgbouncer_ini_has_txn_and_session_aliases(tmp_path: Path) -> None:
    text = bench_pgb.render_ini(listen_port=7002, server_port=5432, workdir=tmp_path, pool_size=20)
    ini = bench_pgb.parse_ini(text)
    assert ini["databases"]["app"] == "host=127.0.0.1 port=5432 dbname=app pool_mode=transaction pool_size=20"
    assert "pool_mode=session" in ini["databases"]["app_session"]
    main = ini["pgbouncer"]
    assert (main["listen_port"], main["auth_type"], main["pool_mode"]) == ("7002", "scram-sha-256", "transaction")
    assert main["auth_file"] == str(tmp_path / "userlist.txt")
    assert bench_pgb.userlist({"app": "apppass", 'we"ird': "p"}) == '"app" "apppass"\n"we""ird" "p"\n'


def test_pgbench_command_and_output_parsing() -> None:
    target = bench_run.Target("pgbouncer", 7003, None, session_db="app_session")
    cmd = bench_run.pgbench_cmd(target, "prepared", 64, 10, log_prefix="/tmp/x/log", sampling_rate=0.5)
    assert cmd[:12] == ["pgbench", "-n", "-S", "-M", "prepared", "-c", "64", "-j", "2", "-T", "10", "-h"]
    assert cmd[-1] == "app_session" and "--sampling-rate=0.5" in cmd
    one = bench_run.pgbench_cmd(target, "simple", 1, 3, connect=True)
    assert one[-1] == "app" and "-C" in one and one[one.index("-j") + 1] == "1"
    out = ("number of transactions actually processed: 12345\nnumber of failed transactions: 0 (0.000%)\n"
           "latency average = 1.296 ms\ninitial connection time = 5.1 ms\n"
           "tps = 12345.678901 (without initial connection time)\n")
    assert bench_run.parse_pgbench(out) == (12345.678901, 12345, 0, 1.296)
    with pytest.raises(RuntimeError, match="cannot parse"):
        bench_run.parse_pgbench("connection refused")


def test_p99_from_logs(tmp_path: Path) -> None:
    (tmp_path / "log.1").write_text("".join(f"0 {i} {i * 10} 0 1700000000 0\n" for i in range(1, 101)))
    (tmp_path / "log.1.1").write_text("1 0 5000 0 1700000000 0\n")
    # 101 latencies: 10..1000 µs and one 5000 µs; the 99th percentile is index 99 = 1000 µs
    assert bench_run.p99_from_logs(tmp_path) == 1.0


def test_summary_medians_and_ratios() -> None:
    def run(tps: float, cpu: float | None) -> dict[str, object]:
        return {"tps": tps, "latency_ms": 1.0, "p99_ms": 2.0, "cpu_us_per_txn": cpu, "cpu_user_us_per_txn": cpu,
                "cpu_sys_us_per_txn": 0.0 if cpu is not None else None, "failed": 0}

    cells = {
        ("direct", "simple", 16): [run(100, None), run(120, None), run(110, None)],
        ("pgbouncer", "simple", 16): [run(80, 20), run(60, 22), run(70, 21)],
        ("heliosproxy", "simple", 16): [run(35, 42), run(40, 40), run(30, 44)],
    }
    rows = {r["target"]: r for r in bench_run.summarize(cells)}
    assert rows["heliosproxy"]["median"]["tps"] == 35
    assert rows["heliosproxy"]["tps_vs_direct"] == pytest.approx(35 / 110)
    assert rows["heliosproxy"]["tps_vs_pgbouncer"] == pytest.approx(0.5)
    assert rows["heliosproxy"]["cpu_vs_pgbouncer"] == pytest.approx(2.0)
    assert "tps_vs_pgbouncer" not in rows["pgbouncer"] and rows["direct"]["median"]["cpu_us_per_txn"] is None
    table = bench_run.render_table(list(rows.values()), ["direct", "pgbouncer", "heliosproxy"], [], None, None)
    assert "heliosproxy" in table and "0.50" in table and "2.00" in table


def test_profile_summary_from_raw_stacks() -> None:
    raw = ("run (asyncio/runners.py:118);data_received (heliosproxy/session/client.py:192) 30\n"
           "run (asyncio/runners.py:118);data_received (heliosproxy/session/client.py:200);"
           "_on_query (heliosproxy/session/client.py:688) 70\n")
    prof = bench_run.summarize_raw_profile(raw)
    assert prof["samples"] == 100
    assert prof["self_pct"][0] == ("_on_query (client.py)", 70.0)
    assert dict(prof["inclusive_pct"])["data_received (client.py)"] == 100.0


def test_tls_row_pgbouncer_ini_and_ratio(tmp_path: Path) -> None:
    cert, key = tmp_path / "s.crt", tmp_path / "s.key"
    ini = bench_pgb.parse_ini(bench_pgb.render_ini(listen_port=7002, server_port=5432, workdir=tmp_path,
                                                   tls_cert=cert, tls_key=key))
    assert ini["pgbouncer"]["client_tls_sslmode"] == "require"
    assert ini["pgbouncer"]["client_tls_cert_file"] == str(cert)
    assert "client_tls_sslmode" not in bench_pgb.parse_ini(
        bench_pgb.render_ini(listen_port=7002, server_port=5432, workdir=tmp_path))["pgbouncer"]
    assert bench_run.pgbench_env("require")["PGSSLMODE"] == "require"
    run = {"tps": 0.0, "latency_ms": 1.0, "p99_ms": 1.0, "cpu_us_per_txn": 1.0, "cpu_user_us_per_txn": 1.0,
           "cpu_sys_us_per_txn": 0.0, "failed": 0}
    cells = {("pgbouncer", "simple", 1): [{**run, "tps": 100.0}],
             ("pgbouncer-tls", "simple", 1): [{**run, "tps": 50.0}],
             ("heliosproxy-tls", "simple", 1): [{**run, "tps": 40.0}]}
    rows = {r["target"]: r for r in bench_run.summarize(cells)}
    assert rows["heliosproxy-tls"]["tps_vs_pgbouncer"] == 0.8  # against PgBouncer with TLS
