"""Plugin authentication at login through the running proxy: api_key_auth accept / deny / defer, fail modes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.wat_e2e.kit import install_example, install_wat, plugin_config, plugin_log_lines, wait_until

pytestmark = pytest.mark.timeout(60)

KEYS = {"hk_live_alice": "alice", "hk_live_bob": "bob"}


@pytest.fixture
def auth_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    d = tmp_path / "p"
    install_example(d, "api_key_auth", config={"keys": KEYS})
    install_wat(d, "watcher")
    return proxy_factory(plugin_config(d))


def _identities(proxy: ProxyProcess) -> dict[str, Any]:
    """query text -> hook_context.identity, from the watcher plugin's post_query log lines."""
    out = {}
    for line in plugin_log_lines(proxy, "watcher"):
        ctx, _outcome = json.loads(line)
        out[ctx["query"]] = ctx["hook_context"]["identity"]
    return out


async def _login_error(proxy: ProxyProcess, password: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as exc:
        conn = await asyncpg.connect(proxy.dsn(password=password), timeout=10)
        await conn.close()
    return exc.value


def test_api_key_logs_in_as_its_identity(auth_proxy: ProxyProcess) -> None:
    with psycopg.connect(auth_proxy.dsn(password="hk_live_alice"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, 'as-alice'").fetchone() == ("app", "as-alice")
        assert conn.execute("SELECT %s::text /* alice-ext */", ["x"]).fetchone() == ("x",)

    async def run() -> None:
        conn = await asyncpg.connect(auth_proxy.dsn(password="hk_live_bob"), timeout=10)
        try:
            assert await conn.fetchval("SELECT $1::text /* bob-ext */", "y") == "y"
        finally:
            await conn.close()

    asyncio.run(run())
    ids = wait_until(lambda: len(_identities(auth_proxy)) >= 3 and _identities(auth_proxy),
                     what=f"3 watcher lines in:\n{auth_proxy.output()[-3000:]}")
    # the plugin's identity is what every later hook sees, not the login user "app"
    assert ids["SELECT current_user, 'as-alice'"] == "alice"
    assert ids["SELECT $1::text /* alice-ext */"] == "alice"
    assert ids["SELECT $1::text /* bob-ext */"] == "bob"


def test_unknown_api_key_is_denied_28000(auth_proxy: ProxyProcess) -> None:
    err = asyncio.run(_login_error(auth_proxy, "hk_live_mallory"))
    assert err.sqlstate == "28000"
    assert err.severity == "FATAL"
    res = subprocess.run(["psql", auth_proxy.dsn(password="hk_nope"), "-X", "-c", "SELECT 1"],
                         capture_output=True, text=True, timeout=15, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    assert res.returncode != 0
    assert "FATAL" in res.stderr, res.stderr
    # the proxy keeps serving
    with psycopg.connect(auth_proxy.dsn(password="hk_live_alice"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_other_passwords_defer_to_configured_method(auth_proxy: ProxyProcess) -> None:
    with psycopg.connect(auth_proxy.dsn(password="apppass"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, 'as-app'").fetchone() == ("app", "as-app")
    with psycopg.connect(auth_proxy.dsn(user="md5user", password="md5pass", dbname="app"),
                         autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5user",)
    err = asyncio.run(_login_error(auth_proxy, "wrong-password"))
    assert err.sqlstate == "28P01"
    assert err.severity == "FATAL"
    ids = wait_until(lambda: _identities(auth_proxy).get("SELECT current_user, 'as-app'"), what="watcher line")
    assert ids == "app"


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_failing_auth_plugin_fail_mode(proxy_factory: ProxyFactory, tmp_path: Path, fail_mode: str) -> None:
    d = tmp_path / "p"
    install_wat(d, "authtrap", fail_mode=fail_mode)
    proxy = proxy_factory(plugin_config(d, disable_after=100_000))
    if fail_mode == "open":
        # skipped: the configured method decides
        with psycopg.connect(proxy.dsn(password="apppass"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        err = asyncio.run(_login_error(proxy, "wrong-password"))
        assert err.sqlstate == "28P01"
    else:
        # an auth plugin that fails closed lets nobody in, even with the right password
        err = asyncio.run(_login_error(proxy, "apppass"))
        assert err.sqlstate == "28000"
        assert err.severity == "FATAL"
    assert "plugin authtrap authenticate failed (trap)" in proxy.output()
    assert proxy.running()
