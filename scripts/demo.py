"""`make demo`: a throwaway PostgreSQL primary + standby with HeliosProxy in front, until Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import first_free_port, wait_for_tcp  # noqa: E402
from tests.helpers.pgcluster import PgCluster, PgError  # noqa: E402
from tests.helpers.proxy import dump_config  # noqa: E402

PROXY_PORT = 6432
ADMIN_PORT = 9187


class _Stop(Exception):
    """Raised from the signal handler to leave the foreground wait."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _banner(port: int, admin_port: int, cluster: PgCluster, config_path: Path) -> str:
    app = f"postgresql://app:apppass@127.0.0.1:{port}/app"
    admin = f"postgresql://admin:adminpass@127.0.0.1:{port}/heliosproxy"
    nodes = ", ".join(f"{n.name} 127.0.0.1:{n.port}" for n in cluster.nodes)
    line = "=" * 78
    return f"""
{line}
 HeliosProxy demo is running  (PostgreSQL 15: {nodes})

 Connect with psql:
     psql "{app}"

 Run pgbench through the proxy:
     pgbench -i -s 1 "{app}"
     pgbench -c 8 -j 2 -T 10 -M extended "{app}"

 Admin console (SHOW POOLS, SHOW NODES, SHOW STATS, ...):
     psql "{admin}"

 Metrics and HTTP admin:
     http://127.0.0.1:{admin_port}/            (the dashboard, in a browser)
     http://127.0.0.1:{admin_port}/metrics     (also /health, /api/nodes)

 Config: {config_path}
 Press Ctrl-C to stop the proxy and the servers and remove the temp dirs.
{line}
"""


def main() -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="helios-demo-"))
    workdir.chmod(0o711)  # the postgres OS user must reach its data dirs inside
    cluster = PgCluster(workdir / "pg", standbys=1)
    proxy: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        print("starting a PostgreSQL 15 primary and a streaming standby ...", flush=True)
        try:
            cluster.start()
        except PgError as exc:
            print(f"could not start PostgreSQL: {exc}", file=sys.stderr)
            return 1
        port = first_free_port(PROXY_PORT)
        admin_port = first_free_port(ADMIN_PORT)
        if admin_port == port:
            admin_port = first_free_port(port + 1)
        config = {
            "listen": f"127.0.0.1:{port}",
            "auth": {"method": "scram-sha-256"},
            "users": [
                {"name": "app", "password": "apppass"},
                {"name": "admin", "password": "adminpass"},
            ],
            "nodes": cluster.node_config(),
            "admin": {"listen": f"127.0.0.1:{admin_port}", "users": ["admin"]},
            "shutdown_timeout": 5,
        }
        config_path = workdir / "heliosproxy.yaml"
        config_path.write_text(dump_config(config))
        print(f"starting HeliosProxy on 127.0.0.1:{port} ...", flush=True)
        # Its own session: Ctrl-C reaches this script only, which then stops the proxy cleanly.
        proxy = subprocess.Popen(
            [sys.executable, "-m", "heliosproxy", "run", "--config", str(config_path)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while not wait_for_tcp("127.0.0.1", port, timeout=0.2):
            if proxy.poll() is not None:
                print(f"the proxy exited with {proxy.returncode} before listening",
                      file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"the proxy did not listen on 127.0.0.1:{port} within 15 s",
                      file=sys.stderr)
                return 1
        print(_banner(port, admin_port, cluster, config_path), flush=True)
        code = proxy.wait()
        print(f"the proxy exited with {code}", file=sys.stderr)
    except _Stop as stop:
        print(f"\n{stop}: stopping ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proxy is not None and proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("stopped the proxy and PostgreSQL; removed " + str(workdir), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
