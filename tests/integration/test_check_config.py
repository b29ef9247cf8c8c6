"""`heliosproxy check-config --connect` against a real cluster: every node logged in, every plugin loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import base_config, dump_config
from tests.unit.plugins.helpers import install

pytestmark = pytest.mark.timeout(120)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heliosproxy", "check-config", "--connect", str(path)],
                          capture_output=True, text=True, timeout=100, cwd=REPO_ROOT)


def test_connect_reports_every_node_and_plugin(cluster: PgCluster, tmp_path: Path) -> None:
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    shutil.copy(REPO_ROOT / "plugins" / "build" / "noop.wasm", pdir / "noop.wasm")
    shutil.copy(REPO_ROOT / "plugins" / "build" / "noop.yaml", pdir / "noop.yaml")
    install(pdir, "future", "abi_v2")
    config = base_config(cluster.node_config())
    ghost_port = free_port()
    config["nodes"].append({"name": "ghost", "host": "127.0.0.1", "port": ghost_port, "role": "standby"})
    config["plugins"] = {"dir": str(pdir)}
    path = tmp_path / "proxy.yaml"
    path.write_text(dump_config(config))

    result = check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for n in cluster.nodes:
        assert any(ln.startswith(f"  ok   node {n.name} (127.0.0.1:{n.port}): ok ({n.role},") for ln in lines), lines
    assert any(ln.startswith(f"  FAIL node ghost (127.0.0.1:{ghost_port}): cannot connect") for ln in lines), lines
    assert any(ln.startswith("  ok   plugin noop: ok (") for ln in lines), lines
    assert "  FAIL plugin future: refused: unsupported plugin ABI version 2 (this host speaks ABI v1)" in lines
    assert result.stderr == f"{path}: 2 check(s) failed\n"

    # a wrong role and a wrong password are named too
    config = base_config(cluster.node_config())
    for n in config["nodes"]:
        n["role"] = "standby" if n["role"] == "primary" else n["role"]
    config["nodes"][-1]["role"] = "primary"
    config["users"] = [{"name": "app", "password": "not-the-password"}]
    path.write_text(dump_config(config))
    result = check(path)
    assert result.returncode == 1
    assert "login as 'app' to database 'postgres' failed: password authentication failed" in result.stdout


def test_connect_all_good(cluster: PgCluster, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(dump_config(base_config(cluster.node_config())))
    result = check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith(f"{path}: ok ({len(cluster.nodes)} nodes, 4 users)\n")
