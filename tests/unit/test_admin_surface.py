"""The HTTP admin's Host (DNS rebinding) and Origin (CSRF) rules, and the admin config keys they read."""

from __future__ import annotations

import pytest

from heliosproxy.admin.http import host_allowed, same_origin
from heliosproxy.config.load import parse_config
from heliosproxy.errors import ConfigError

NODES = "nodes: [{name: p, host: 127.0.0.1, role: primary}]\n"


@pytest.mark.parametrize(
    ("host", "listen", "allowed", "ok"),
    [
        ("127.0.0.1:9187", "127.0.0.1:9187", (), True),
        ("localhost:9187", "127.0.0.1:9187", (), True),
        ("[::1]:9187", "127.0.0.1:9187", (), True),
        ("evil.example:9187", "127.0.0.1:9187", (), False),
        ("evil.example", "127.0.0.1:9187", (), False),
        ("10.0.0.5:9187", "127.0.0.1:9187", (), False),
        ("10.0.0.5:9187", "10.0.0.5:9187", (), True),
        ("192.0.2.1", "0.0.0.0:9187", (), True),  # wildcard: any IP literal (cannot be rebound)
        ("[2001:db8::1]:9187", "[::]:9187", (), True),
        ("proxy.example:9187", "0.0.0.0:9187", (), False),
        ("proxy.example:9187", "0.0.0.0:9187", ("proxy.example",), True),
        ("PROXY.Example.", "0.0.0.0:9187", ("proxy.example",), True),
        ("proxy.example:9187", "0.0.0.0:9187", ("proxy.example:9187",), True),
    ],
)
def test_host_allowed(host: str, listen: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, listen, allowed) is ok


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:9187", "127.0.0.1:9187")
    assert not same_origin("http://evil.example", "127.0.0.1:9187")
    assert not same_origin("http://127.0.0.1:9999", "127.0.0.1:9187")
    assert not same_origin("null", "127.0.0.1:9187")
    assert not same_origin("http://127.0.0.1:9187", None)


def test_admin_keys_parse() -> None:
    cfg = parse_config(NODES + "admin: {token: t, allowed_hosts: [a.example], metrics_auth: true}\n", "x.yaml")
    assert cfg.admin.allowed_hosts == ("a.example",) and cfg.admin.metrics_auth and cfg.admin.dashboard
    assert parse_config(NODES + "admin: {dashboard: false}\n", "x.yaml").admin.dashboard is False


def test_metrics_auth_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"admin.metrics_auth: needs admin.token"):
        parse_config(NODES + "admin: {metrics_auth: true}\n", "x.yaml")
