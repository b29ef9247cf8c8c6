"""Structured JSON logs from a running proxy: fields, events, auth failures, reloads, log.connections."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from heliosproxy.logsetup import EVENTS, SHORT
from tests.helpers.proxy import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.timeout(60)
JSON_LOG = {"log": {"format": "json"}, "admin": {"users": ["app"]}}
HOSTPORT = re.compile(r"^127\.0\.0\.1:\d+$")


def records(proxy: ProxyProcess) -> list[dict[str, Any]]:
    out = []
    for line in proxy.output().splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def wait_for(proxy: ProxyProcess, event: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(proxy) if r["event"] == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_line_is_json_with_ts_level_event(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(JSON_LOG)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    lines = [ln for ln in proxy.output().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") for ln in lines), lines
    recs = records(proxy)
    assert all({"ts", "level", "event", "msg"} <= set(r) for r in recs)
    listening = [r for r in recs if r["msg"].startswith("listening on ")]
    assert listening and re.match(r"^listening on 127\.0\.0\.1:\d+$", listening[0]["msg"])

    (connected,) = wait_for(proxy, "client_connected")
    assert connected["level"] == "info"
    assert HOSTPORT.match(connected["client"])
    assert (connected["user"], connected["database"]) == ("app", "app")
    (closed,) = wait_for(proxy, "client_closed")
    assert closed["client"] == connected["client"]
    assert isinstance(closed["duration_ms"], int) and closed["duration_ms"] >= 0
    assert {r["event"] for r in recs} - {"log"} <= set(EVENTS)  # every event is documented


def test_wrong_password_is_one_warning_with_the_address(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(JSON_LOG)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(password="wrong"))
    assert "password authentication failed" in str(info.value)
    (failed,) = wait_for(proxy, "auth_failed")
    assert failed["level"] == "warning"
    assert HOSTPORT.match(failed["client"])
    assert (failed["user"], failed["sqlstate"]) == ("app", "28P01")
    time.sleep(0.2)
    mine = [r for r in records(proxy) if r.get("client") == failed["client"]]
    assert [r["event"] for r in mine if r["level"] != "info"] == ["auth_failed"]  # once per client


def test_reload_logs_who_asked_and_the_outcome(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"log": {"format": "json"}, "admin": {"users": ["app"], "token": "t0ken"}})
    # POSTs need the admin token and a non-form content type (issue 12)
    auth = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
    req = urllib.request.Request(proxy.admin_url + "/api/reload", method="POST", data=b"", headers=auth)
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    (ok,) = wait_for(proxy, "reload")
    assert ok["outcome"] == "ok" and ok["level"] == "info"
    assert re.match(r"^HTTP 127\.0\.0\.1:\d+$", ok["requested_by"]), ok

    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as adm:
        adm.execute("RELOAD")
    console = wait_for(proxy, "reload", 2)[1]
    assert re.match(r"^console app@127\.0\.0\.1:\d+$", console["requested_by"]), console
    assert console["outcome"] == "ok"

    proxy.config_path.write_text("nodes: [")  # a broken file: the reload fails, the old config stays
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(
            urllib.request.Request(proxy.admin_url + "/api/reload", method="POST", data=b"", headers=auth), timeout=5
        )
    assert err.value.code == 422
    failed = wait_for(proxy, "reload", 3)[2]
    assert (failed["outcome"], failed["level"]) == ("failed", "error")
    assert "invalid YAML" in failed["error"] and failed["msg"] == "reload failed"
    assert ok["msg"] == "reload ok" and console["msg"] == "reload ok"


def test_log_connections_false_drops_per_connection_lines(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(JSON_LOG, log={"format": "json", "connections": False})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(password="wrong"))
    wait_for(proxy, "auth_failed")  # other events are still logged
    events = {r["event"] for r in records(proxy)}
    assert "auth_failed" in events
    assert not events & {"client_connected", "client_closed"}


def test_messages_are_short_and_details_are_fields(proxy_factory: ProxyFactory) -> None:
    """The JSON msg of an event does not repeat its fields: client, user, database, sqlstate are keys."""
    proxy = proxy_factory(JSON_LOG)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(password="wrong"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(dbname="no_such_db"))
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as adm:
        adm.execute("RECONNECT")
    (connected,) = wait_for(proxy, "client_connected", 3)[:1]
    assert connected["msg"] == "client connected" and connected["pool_mode"] == "transaction"
    (failed,) = wait_for(proxy, "auth_failed")
    assert failed["msg"] == "authentication failed"
    assert "password authentication failed" in failed["error"]
    fatal = [r for r in wait_for(proxy, "client_fatal") if r.get("database") == "no_such_db"]
    assert fatal and fatal[0]["sqlstate"] == "3D000" and "no_such_db" in fatal[0]["error"]
    (command,) = wait_for(proxy, "admin_command")
    assert (command["msg"], command["command"], command["user"]) == ("admin command", "RECONNECT", "app")
    assert HOSTPORT.match(command["client"])
    for r in records(proxy):
        if r["event"] in SHORT:
            assert r["msg"] == SHORT[r["event"]], r
        for key in ("client", "user", "database", "sqlstate"):
            if r["event"] != "log" and isinstance(r.get(key), str) and len(r[key]) > 4:
                assert r[key] not in r["msg"], (key, r)
