"""Protocol fidelity with node-postgres (issue 10): what `pg` from npm sees through the proxy is what it sees direct."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import TEST_USERS, ProxyFactory, ProxyProcess

pytestmark = pytest.mark.timeout(180)
NODE_DIR = REPO_ROOT / "tests" / "node"
NINE = "IX-\u2168"  # 'IX-Ⅸ': SASLprep (NFKC) makes it 'IX-IX'; node-postgres sends it unprepared
UMLAUT = "p\u00e4ss-w\u00f6rd"  # non-ASCII that SASLprep leaves as it is
ROLES = {"node_nine": NINE, "node_umlaut": UMLAUT}
MODES = ["transaction", "session"]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """This module's own cluster (it adds roles with non-ASCII passwords): a primary only."""
    with PgCluster(standbys=0) as c:
        for role, password in ROLES.items():
            c.sql(c.primary, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            c.sql(c.primary, f"GRANT ALL ON DATABASE app TO {role}")
        yield c


def _proxy(proxy_factory: ProxyFactory, pg: PgCluster, mode: str) -> ProxyProcess:
    users = [dict(u) for u in TEST_USERS] + [{"name": r, "password": p} for r, p in ROLES.items()]
    return proxy_factory({"pool": {"size": 4, "mode": mode}, "routing": {"read_write_split": False},
                          "users": users}, cluster=pg)


def node(scenario: str, config: dict[str, Any]) -> dict[str, Any]:
    exe = shutil.which("node") or "/usr/bin/node"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run `make install` (npm ci in tests/node)"
    res = subprocess.run([exe, str(NODE_DIR / "fidelity.js"), scenario, json.dumps(config)],
                         text=True, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def via_proxy(proxy: ProxyProcess, user: str = "app", password: str = "apppass", **extra: Any) -> dict[str, Any]:
    return {"host": proxy.host, "port": proxy.port, "user": user, "password": password, "database": "app", **extra}


def direct(pg: PgCluster, user: str = "app", password: str = "apppass", **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": pg.primary.port, "user": user, "password": password, "database": "app",
            **extra}


@pytest.mark.parametrize("mode", MODES)
def test_own_notification_carries_the_clients_pid(pg: PgCluster, proxy_factory: ProxyFactory, mode: str) -> None:
    proxy = _proxy(proxy_factory, pg, mode)
    for cfg in (direct(pg), via_proxy(proxy)):
        out = node("notify", cfg)
        assert "error" not in out, out
        assert out["notifications"] == [{"channel": "fid_node", "payload": "mine", "pid": out["processID"]}]


@pytest.mark.parametrize("mode", MODES)
def test_client_encoding_is_reported_in_the_servers_spelling(
    pg: PgCluster, proxy_factory: ProxyFactory, mode: str
) -> None:
    proxy = _proxy(proxy_factory, pg, mode)
    options = {"options": "-c client_encoding=utf-8"}
    want = node("params", direct(pg, **options))
    got = node("params", via_proxy(proxy, **options))
    assert "error" not in want and "error" not in got, (want, got)
    assert want["atLogin"]["client_encoding"] == "UTF8"
    for name in ("client_encoding", "server_encoding", "DateStyle", "TimeZone", "integer_datetimes",
                 "standard_conforming_strings", "IntervalStyle", "is_superuser", "session_authorization"):
        assert got["atLogin"].get(name) == want["atLogin"].get(name), name
    assert (got["afterSet"], got["afterUtf8"]) == (want["afterSet"], want["afterUtf8"]) == ("LATIN1", "UTF8")


@pytest.mark.parametrize("mode", MODES)
def test_scram_passwords_with_non_ascii_characters(pg: PgCluster, proxy_factory: ProxyFactory, mode: str) -> None:
    """The same login outcome as direct: node-postgres does no SASLprep itself, so 'IX-Ⅸ' fails
    against PostgreSQL (which stores the prepared 'IX-IX') and must fail the same way through the
    proxy; 'IX-IX' and a password SASLprep leaves unchanged log in."""
    proxy = _proxy(proxy_factory, pg, mode)
    for role, password in (("node_nine", NINE), ("node_nine", "IX-IX"), ("node_umlaut", UMLAUT)):
        want = node("login", direct(pg, role, password))
        got = node("login", via_proxy(proxy, role, password))
        if "error" in want:
            assert got.get("error", {}).get("code") == want["error"]["code"] == "28P01", (role, password, got)
        else:
            assert got == want == {"user": role}, (role, password)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("literal", [False, True], ids=["parameter", "literal"])
def test_terminate_by_pid_gives_the_victim_one_fatal(
    pg: PgCluster, proxy_factory: ProxyFactory, mode: str, literal: bool
) -> None:
    proxy = _proxy(proxy_factory, pg, mode)
    want = node("terminate", direct(pg, literal=literal))
    got = node("terminate", via_proxy(proxy, literal=literal))
    assert "error" not in want and "error" not in got, (want, got)
    assert want["result"] is True and want["ended"] is True
    fatal = {"code": "57P01", "severity": "FATAL", "message": "terminating connection due to administrator command"}
    # node-postgres reports the server's FATAL, then its own "Connection terminated unexpectedly".
    assert want["victimErrors"][0] == fatal and all(e["code"] is None for e in want["victimErrors"][1:])
    assert got == want


@pytest.mark.parametrize("mode", MODES)
def test_cancel_by_pid_cancels_the_running_query(pg: PgCluster, proxy_factory: ProxyFactory, mode: str) -> None:
    proxy = _proxy(proxy_factory, pg, mode)
    want = node("cancel", direct(pg))
    got = node("cancel", via_proxy(proxy))
    assert want["result"] is True and want["victimError"]["code"] == "57014", want
    assert got == want
