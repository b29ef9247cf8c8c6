"""`make install`'s system step never stops, starts or reconfigures a PostgreSQL cluster it did not create."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import REPO_ROOT, free_port

PG_VERSION = "15"


def _clusters() -> dict[str, str]:
    """name -> status ("online" / "down") of the Debian clusters of PG_VERSION."""
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout
    return {f[1]: f[3] for f in (line.split() for line in out.splitlines()) if len(f) >= 4 and f[0] == PG_VERSION}


@pytest.fixture
def system_cluster() -> Iterator[tuple[str, int]]:
    """A Debian cluster standing in for one the machine's owner runs (this test creates and drops it)."""
    assert os.geteuid() == 0, "pg_createcluster needs root (this test stands in a system cluster)"
    name, port = f"hp_sys_test_{os.getpid()}", free_port()
    res = subprocess.run(["pg_createcluster", PG_VERSION, name, "--port", str(port), "--start"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        yield name, port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, name], capture_output=True, text=True, timeout=120)


def test_sysdeps_leaves_a_running_system_cluster_running(system_cluster: tuple[str, int]) -> None:
    name, port = system_cluster
    assert _clusters()[name] == "online"
    before = _clusters()
    res = subprocess.run(["bash", "scripts/sysdeps.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _clusters() == before  # every cluster as it was: ours still online, others untouched
    ready = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stdout + ready.stderr


def test_install_steps_never_control_clusters() -> None:
    """No make target's script calls the tools that stop/start/reconfigure system clusters."""
    banned = re.compile(
        r"\b(pg_ctlcluster|pg_dropcluster|pg_conftool|systemctl\s+\S+\s+postgresql|service\s+postgresql)"
    )
    files = [REPO_ROOT / "Makefile", *sorted((REPO_ROOT / "scripts").iterdir())]
    hits = [f"{p.name}: {m.group(0)}" for p in files if p.is_file() for m in banned.finditer(p.read_text())]
    assert not hits, hits
