"""The YAML config loader: each bad input gives exactly `file:line: key: reason`; examples load."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosproxy.config.load import (
    load_config,
    load_yaml_file,
    parse_config,
    parse_duration,
    parse_size,
)
from heliosproxy.config.schema import (
    DEFAULT_WRITE_FUNCTIONS,
    AdminConfig,
    AuthMethod,
    BranchConfig,
    Config,
    FailoverConfig,
    HealthConfig,
    LogConfig,
    NodeConfig,
    PluginLimits,
    PluginsConfig,
    PoolConfig,
    PoolMode,
    Role,
    RoutingConfig,
    UserConfig,
)
from heliosproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"

# Nine lines; cases append from line 10 on.
BASE = """\
listen: 127.0.0.1:6432
auth:
  method: scram-sha-256
users:
  - name: app
    password: apppass
nodes:
  - {name: primary,  host: 127.0.0.1, port: 5432, role: primary}
  - {name: standby1, host: 127.0.0.1, port: 5433, role: standby}
"""

HOSTPORT = "(e.g. 127.0.0.1:6432 or [::1]:6432; port 0..65535)"

NODES = """\
nodes:
  - name: primary
    host: 127.0.0.1
    role: primary
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml")
    return str(info.value)


# --------------------------------------------------------------------------- good configs


def test_contract_keys_build_the_expected_config() -> None:
    config = parse_config(BASE, "good.yaml")
    assert config.source == "good.yaml"
    assert config.listen == "127.0.0.1:6432"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 6432)
    assert config.auth.method is AuthMethod.SCRAM
    assert config.users == (UserConfig(name="app", password="apppass"),)
    assert config.nodes == (
        NodeConfig(name="primary", host="127.0.0.1", port=5432, role=Role.PRIMARY),
        NodeConfig(name="standby1", host="127.0.0.1", port=5433, role=Role.STANDBY),
    )
    # everything not written keeps the schema's defaults
    assert config.pool == PoolConfig()
    assert config.routing == RoutingConfig()
    assert config.plugins == PluginsConfig()
    assert config.branches == ()


def test_every_section_is_read() -> None:
    text = (
        BASE
        + """\
workers: 3
max_client_connections: 50
client_login_timeout: 2s
max_message_size: 1MiB
shutdown_timeout: 1m30s
pool: {mode: session, size: 4, min_size: 1, acquire_timeout: 250ms, idle_timeout: 1h,
       max_lifetime: 2d, reset_query: "", connect_timeout: 3, prepared_statements_per_server: 7}
routing:
  read_write_split: false
  policy: least_connections
  max_lag_bytes: 16MB
  max_lag_ms: 2s
  standby_fallback: error
  read_your_writes_ms: 500
  write_functions: [NextVal, my_func]
  classify_cache_size: 9
branches:
  dev: {node: standby1, database: app_dev}
health: {interval: 500ms, timeout: 0.25, failures_before_down: 5, successes_before_up: 1}
failover: {promote: true, primary_down_for: 3s, write_timeout: 0}
admin: {listen: "[::1]:0", token: secret, users: [app]}
plugins:
  enabled: false
  dir: plugins/build
  trust_root: keys
  max_plugins: 2
  disable_after: 3
  hot_reload: true
  poll_interval: 100ms
  debounce: 0
  kv_max_keys: 5
  kv_max_value_bytes: 1kB
  limits: {memory: 1MiB, fuel: 1000, timeout_ms: 1s}
log: {level: DEBUG, format: json}
"""
    )
    config = parse_config(text, "all.yaml")
    assert config.workers == 3
    assert config.max_client_connections == 50
    assert config.client_login_timeout == 2.0
    assert config.max_message_size == 1024 * 1024
    assert config.shutdown_timeout == 90.0
    assert config.pool == PoolConfig(
        mode=PoolMode.SESSION,
        size=4,
        min_size=1,
        acquire_timeout=0.25,
        idle_timeout=3600.0,
        max_lifetime=172800.0,
        reset_query="",
        connect_timeout=3.0,
        prepared_statements_per_server=7,
    )
    assert config.routing.read_write_split is False
    assert config.routing.policy.value == "least_connections"
    assert config.routing.max_lag_bytes == 16_000_000
    assert config.routing.max_lag_ms == 2000.0
    assert config.routing.standby_fallback.value == "error"
    assert config.routing.read_your_writes_ms == 500.0
    assert config.routing.write_functions == ("nextval", "my_func")
    assert config.routing.classify_cache_size == 9
    assert config.branches == (BranchConfig(name="dev", node="standby1", database="app_dev"),)
    assert config.branch("dev") == config.branches[0]
    assert config.health == HealthConfig(0.5, 0.25, 5, 1)
    assert config.failover == FailoverConfig(True, 3.0, 0.0)
    assert config.admin == AdminConfig(listen="[::1]:0", token="secret", users=("app",))
    assert config.plugins == PluginsConfig(
        enabled=False,
        dir="plugins/build",
        trust_root="keys",
        max_plugins=2,
        disable_after=3,
        hot_reload=True,
        poll_interval=0.1,
        debounce=0.0,
        kv_max_keys=5,
        kv_max_value_bytes=1000,
        limits=PluginLimits(memory=1024 * 1024, fuel=1000, timeout_ms=1000.0),
    )
    assert config.log == LogConfig(level="debug", format="json")


def test_workers_auto_is_the_cpu_count() -> None:
    config = parse_config(BASE + "workers: auto\n", "w.yaml")
    assert config.workers == (os.cpu_count() or 1)


def test_user_overrides_and_optional_nulls() -> None:
    text = (
        """\
auth: {method: trust}
users:
  - {name: batch, pool_mode: session, pool_size: 3}
  - {name: web, password: null, pool_mode: null}
routing: {max_lag_bytes: null}
admin: {listen: null}
"""
        + NODES
    )
    config = parse_config(text, "u.yaml")
    assert config.users == (
        UserConfig(name="batch", password=None, pool_mode=PoolMode.SESSION, pool_size=3),
        UserConfig(name="web"),
    )
    assert config.user("batch") is config.users[0]
    assert config.routing.max_lag_bytes is None
    assert config.admin.listen is None
    assert config.nodes == (NodeConfig(name="primary", host="127.0.0.1", role=Role.PRIMARY),)


def test_empty_sections_mean_defaults_and_merge_keys_work() -> None:
    text = """\
auth: {method: trust}
pool:
routing:
nodes:
  - &base {name: a, host: 10.0.0.1, port: 6000, role: primary}
  - {<<: *base, name: b, role: standby}
"""
    config = parse_config(text, "m.yaml")
    assert config.pool == PoolConfig()
    assert config.routing == RoutingConfig()
    assert config.nodes[1] == NodeConfig(name="b", host="10.0.0.1", port=6000, role=Role.STANDBY)


# --------------------------------------------------------------------------- env substitution


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HP_TEST_PASSWORD", "s3cret")
    monkeypatch.setenv("HP_TEST_PORT", "6543")
    monkeypatch.setenv("HP_TEST_EMPTY", "")
    monkeypatch.delenv("HP_TEST_UNSET", raising=False)
    text = """\
users:
  - {name: a, password: "${HP_TEST_PASSWORD}"}
  - {name: b, password: "pre-${HP_TEST_UNSET:-fallback}-${HP_TEST_PASSWORD}"}
  - {name: c, password: "${HP_TEST_EMPTY:-used-when-empty}"}
  - {name: d, password: "literal $${HP_TEST_PASSWORD} and $5"}
  - name: e
    password: ${HP_TEST_PASSWORD}
admin:
  token: ${HP_TEST_UNSET:-}
nodes:
  - name: p
    host: ${HP_TEST_UNSET:-db.internal}
    port: ${HP_TEST_PORT}
    role: primary
"""
    config = parse_config(text, "env.yaml")
    assert [u.password for u in config.users] == [
        "s3cret",
        "pre-fallback-s3cret",
        "used-when-empty",
        "literal ${HP_TEST_PASSWORD} and $5",
        "s3cret",
    ]
    assert config.admin.token is None  # an empty unquoted value is null
    assert config.nodes[0].host == "db.internal"
    assert config.nodes[0].port == 6543  # unquoted ${VAR} is re-read as YAML: an integer


def test_env_values_are_checked_like_written_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HP_TEST_PORT", "54x")
    text = BASE + "  - name: s2\n    host: h\n    port: ${HP_TEST_PORT}\n"
    assert error_of(text) == "bad.yaml:12: nodes[2].port: expected an integer, got string '54x'"
    monkeypatch.setenv("HP_TEST_PORT", "0")
    assert error_of(text) == "bad.yaml:12: nodes[2].port: must be between 1 and 65535, got 0"


# --------------------------------------------------------------------------- bad configs

BAD_CASES: list[tuple[str, str, str]] = [
    # (id, YAML text, exact error)
    (
        "empty file",
        "",
        "bad.yaml:1: the config is empty; it must be a mapping with at least `nodes`",
    ),
    (
        "comments only",
        "# nothing\n",
        "bad.yaml:1: the config is empty; it must be a mapping with at least `nodes`",
    ),
    (
        "top level list",
        "- a\n- b\n",
        "bad.yaml:1: the top level must be a mapping of keys, got a list",
    ),
    (
        "top level scalar",
        "hello\n",
        "bad.yaml:1: the top level must be a mapping of keys, got a scalar",
    ),
    (
        "yaml syntax error",
        "listen: 127.0.0.1:6432\nauth:\n  method: [trust\nnodes: []\n",
        "bad.yaml:4: invalid YAML: expected ',' or ']', but got ':'",
    ),
    (
        "yaml bad indentation",
        "listen: a\n  pool: 3\n",
        "bad.yaml:2: invalid YAML: mapping values are not allowed here",
    ),
    (
        "two documents",
        BASE + "---\nlisten: x\n",
        "bad.yaml:10: invalid YAML: but found another document",
    ),
    (
        "unknown top key with suggestion",
        BASE + "lisen: 127.0.0.1:1\n",
        "bad.yaml:10: lisen: unknown key (did you mean 'listen'?)",
    ),
    (
        "unknown nested key with suggestion",
        BASE + "pool:\n  size: 3\n  acquire_timout: 1s\n",
        "bad.yaml:12: pool.acquire_timout: unknown key (did you mean 'acquire_timeout'?)",
    ),
    (
        "unknown node key",
        BASE + "  - {name: s2, host: h, prot: 1}\n",
        "bad.yaml:10: nodes[2].prot: unknown key (did you mean 'port'?)",
    ),
    (
        "unknown key without a close match",
        BASE + "zzzzz: 1\n",
        "bad.yaml:10: zzzzz: unknown key (known keys: admin, analytics, auth, branches, cache,"
        " circuit_breaker,"
        " client_login_timeout, databases, failover, health, limits, listen, listen_unix, log, max_client_buffer,"
        " max_client_connections, max_login_connections, max_login_connections_per_ip, max_message_size,"
        " mirror, nodes, plugins, pool, routing, server_tls, shutdown_timeout, tls, users, workers)",
    ),
    (
        "source is not a key",
        BASE + "source: x\n",
        "bad.yaml:10: source: unknown key (known keys: admin, analytics, auth, branches, cache,"
        " circuit_breaker,"
        " client_login_timeout, databases, failover, health, limits, listen, listen_unix, log, max_client_buffer,"
        " max_client_connections, max_login_connections, max_login_connections_per_ip, max_message_size,"
        " mirror, nodes, plugins, pool, routing, server_tls, shutdown_timeout, tls, users, workers)",
    ),
    (
        "duplicate key",
        BASE + "listen: 127.0.0.1:1\n",
        "bad.yaml:10: listen: duplicate key (first given at line 1)",
    ),
    ("non-string key", BASE + "1: x\n", "bad.yaml:10: keys must be strings, got integer 1"),
    (
        "bool is not int",
        BASE.replace("port: 5433", "port: true"),
        "bad.yaml:9: nodes[1].port: expected an integer, got boolean true",
    ),
    (
        "string is not int",
        BASE.replace("port: 5433", "port: '5433'"),
        "bad.yaml:9: nodes[1].port: expected an integer, got string '5433'",
    ),
    (
        "float is not int",
        BASE + "pool: {size: 2.5}\n",
        "bad.yaml:10: pool.size: expected an integer, got number 2.5",
    ),
    (
        "int is not bool",
        BASE + "routing:\n  read_write_split: 1\n",
        "bad.yaml:11: routing.read_write_split: expected true or false, got integer 1",
    ),
    (
        "int is not string",
        BASE.replace("password: apppass", "password: 12345"),
        "bad.yaml:6: users[0].password: expected a string, got integer (quote it)",
    ),
    (
        "token is not echoed",
        BASE + "admin: {token: 1.5}\n",
        "bad.yaml:10: admin.token: expected a string, got number (quote it)",
    ),
    (
        "section not a mapping",
        BASE + "pool: 5\n",
        "bad.yaml:10: pool: expected a mapping, got integer 5",
    ),
    (
        "users not a list",
        "users: app\n" + NODES,
        "bad.yaml:1: users: expected a list, got string 'app'",
    ),
    (
        "nodes not a list",
        "auth: {method: trust}\nnodes: {name: p}\n",
        "bad.yaml:2: nodes: expected a list, got a mapping",
    ),
    (
        "list item not a mapping",
        "auth: {method: trust}\nnodes:\n  - primary\n",
        "bad.yaml:3: nodes[0]: expected a mapping, got string 'primary'",
    ),
    (
        "scalar where a scalar list item is expected",
        BASE + "routing:\n  write_functions: [nextval, [x]]\n",
        "bad.yaml:11: routing.write_functions[1]: expected a name (a non-empty string), got a list",
    ),
    (
        "bad auth method",
        BASE.replace("scram-sha-256", "sha1"),
        "bad.yaml:3: auth.method: 'sha1' is not one of trust, md5, scram-sha-256",
    ),
    (
        "bad role",
        BASE.replace("role: standby", "role: replica"),
        "bad.yaml:9: nodes[1].role: 'replica' is not one of primary, standby, shadow",
    ),
    (
        "bad pool mode",
        BASE + "pool: {mode: statements}\n",
        "bad.yaml:10: pool.mode: 'statements' is not one of transaction, session, statement",
    ),
    (
        "bad policy",
        BASE + "routing: {policy: fastest}\n",
        "bad.yaml:10: routing.policy: 'fastest' is not one of round_robin, random,"
        " least_connections",
    ),
    (
        "bad standby_fallback",
        BASE + "routing: {standby_fallback: 3}\n",
        "bad.yaml:10: routing.standby_fallback: integer 3 is not one of primary, error",
    ),
    (
        "bad user pool_mode",
        BASE.replace("password: apppass", "password: apppass\n    pool_mode: sessions"),
        "bad.yaml:7: users[0].pool_mode: 'sessions' is not one of transaction, session, statement",
    ),
    (
        "bad log level",
        BASE + "log: {level: loud}\n",
        "bad.yaml:10: log.level: 'loud' is not one of debug, info, warning, error, critical",
    ),
    (
        "bad log format",
        BASE + "log:\n  format: xml\n",
        "bad.yaml:11: log.format: 'xml' is not one of text, json",
    ),
    (
        "log level not a string",
        BASE + "log: {level: 1}\n",
        "bad.yaml:10: log.level: integer 1 is not one of debug, info, warning, error, critical",
    ),
    (
        "port zero",
        BASE.replace("port: 5432", "port: 0"),
        "bad.yaml:8: nodes[0].port: must be between 1 and 65535, got 0",
    ),
    (
        "port too big",
        BASE.replace("port: 5433", "port: 70000"),
        "bad.yaml:9: nodes[1].port: must be between 1 and 65535, got 70000",
    ),
    (
        "negative weight",
        BASE.replace("role: standby", "role: standby, weight: -1"),
        "bad.yaml:9: nodes[1].weight: must be >= 0, got -1",
    ),
    ("pool size zero", BASE + "pool: {size: 0}\n", "bad.yaml:10: pool.size: must be >= 1, got 0"),
    (
        "negative min_size",
        BASE + "pool: {min_size: -1}\n",
        "bad.yaml:10: pool.min_size: must be >= 0, got -1",
    ),
    (
        "min_size above size",
        BASE + "pool:\n  size: 2\n  min_size: 3\n",
        "bad.yaml:12: pool.min_size: must be <= pool.size (2), got 3",
    ),
    (
        "user pool_size zero",
        BASE.replace("password: apppass", "password: apppass\n    pool_size: 0"),
        "bad.yaml:7: users[0].pool_size: must be >= 1, got 0",
    ),
    (
        "zero acquire_timeout",
        BASE + "pool: {acquire_timeout: 0s}\n",
        "bad.yaml:10: pool.acquire_timeout: must be > 0, got 0s",
    ),
    (
        "zero health interval",
        BASE + "health: {interval: 0}\n",
        "bad.yaml:10: health.interval: must be > 0, got 0",
    ),
    (
        "zero failures_before_down",
        BASE + "health: {failures_before_down: 0}\n",
        "bad.yaml:10: health.failures_before_down: must be >= 1, got 0",
    ),
    ("zero workers", BASE + "workers: 0\n", "bad.yaml:10: workers: must be >= 1, got 0"),
    (
        "workers word",
        BASE + "workers: many\n",
        "bad.yaml:10: workers: expected an integer or auto, got string 'many'",
    ),
    (
        "zero max_client_connections",
        BASE + "max_client_connections: 0\n",
        "bad.yaml:10: max_client_connections: must be >= 1, got 0",
    ),
    (
        "plugin memory below a page",
        BASE + "plugins: {limits: {memory: 1kB}}\n",
        "bad.yaml:10: plugins.limits.memory: must be >= 65536, got 1kB",
    ),
    (
        "bad duration",
        BASE + "pool: {acquire_timeout: 5 seconds}\n",
        "bad.yaml:10: pool.acquire_timeout: bad duration '5 seconds' (use a number or a number"
        " with a unit: us, ms, s, m, h, d; e.g. 500ms, 1s, 1m30s)",
    ),
    (
        "negative duration string",
        BASE + "shutdown_timeout: -1s\n",
        "bad.yaml:10: shutdown_timeout: bad duration '-1s' (use a number or a number"
        " with a unit: us, ms, s, m, h, d; e.g. 500ms, 1s, 1m30s)",
    ),
    (
        "negative duration number",
        BASE + "shutdown_timeout: -1\n",
        "bad.yaml:10: shutdown_timeout: must be >= 0, got -1",
    ),
    (
        "duration of wrong type",
        BASE + "client_login_timeout: true\n",
        "bad.yaml:10: client_login_timeout: expected a duration like 500ms, 1s, 10m or a number,"
        " got boolean true",
    ),
    (
        "bad size",
        BASE + "max_message_size: 64 megs\n",
        "bad.yaml:10: max_message_size: bad size '64 megs' (use a number of bytes or a number with"
        " a unit: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB; e.g. 64MiB)",
    ),
    (
        "fractional bytes",
        BASE + "max_message_size: 0.5B\n",
        "bad.yaml:10: max_message_size: bad size '0.5B': not a whole number of bytes",
    ),
    (
        "size zero",
        BASE + "max_message_size: 0\n",
        "bad.yaml:10: max_message_size: must be >= 1, got 0",
    ),
    ("missing nodes", "auth: {method: trust}\n", "bad.yaml:1: nodes: required key is missing"),
    (
        "empty nodes",
        "auth: {method: trust}\nnodes: []\n",
        "bad.yaml:2: nodes: at least one node is required",
    ),
    (
        "null nodes",
        "auth: {method: trust}\nnodes:\n",
        "bad.yaml:2: nodes: at least one node is required",
    ),
    (
        "node without host",
        "auth: {method: trust}\nnodes:\n  - name: p\n    role: primary\n",
        "bad.yaml:3: nodes[0].host: required key is missing",
    ),
    (
        "node with empty name",
        "auth: {method: trust}\nnodes:\n  - {name: '', host: h, role: primary}\n",
        "bad.yaml:3: nodes[0].name: must not be empty",
    ),
    (
        "no primary",
        BASE.replace("role: primary", "role: standby"),
        "bad.yaml:8: nodes: no node has role primary (exactly one is required)",
    ),
    (
        "two primaries",
        BASE.replace("role: standby", "role: primary"),
        "bad.yaml:9: nodes[1].role: more than one node has role primary ('primary' and"
        " 'standby1'); exactly one is required",
    ),
    (
        "duplicate node name",
        BASE + "  - {name: standby1, host: 127.0.0.1, port: 5434}\n",
        "bad.yaml:10: nodes[2].name: duplicate node name 'standby1' (nodes[1])",
    ),
    (
        "duplicate user name",
        BASE.replace("users:\n", "users:\n  - {name: app, password: x}\n"),
        "bad.yaml:6: users[1].name: duplicate user name 'app' (users[0])",
    ),
    (
        "duplicate branch name",
        BASE
        + "branches:\n  dev: {node: primary, database: a}\n  dev: {node: primary, database: b}\n",
        "bad.yaml:12: branches.dev: duplicate key (first given at line 11)",
    ),
    (
        "branch with unknown node",
        BASE + "branches:\n  dev:\n    node: primry\n    database: app_dev\n",
        "bad.yaml:12: branches.dev.node: unknown node 'primry' (nodes: primary, standby1)",
    ),
    (
        "branch without database",
        BASE + "branches:\n  dev: {node: primary}\n",
        "bad.yaml:11: branches.dev.database: required key is missing",
    ),
    (
        "branch with unknown key",
        BASE + "branches:\n  dev: {node: primary, database: d, db: x}\n",
        "bad.yaml:11: branches.dev.db: unknown key (known keys: database, node)",
    ),
    (
        "branches as a list",
        BASE + "branches:\n  - dev\n",
        "bad.yaml:11: branches: expected a mapping of branch name -> {node, database}, got a list",
    ),
    (
        "admin user not in users",
        BASE + "admin:\n  users: [app, root]\n",
        "bad.yaml:11: admin.users[1]: unknown user 'root' (not listed in users)",
    ),
    (
        "listen without port",
        BASE.replace("listen: 127.0.0.1:6432", "listen: localhost"),
        f"bad.yaml:1: listen: expected host:port {HOSTPORT}, got 'localhost'",
    ),
    (
        "listen bad port",
        BASE.replace("listen: 127.0.0.1:6432", "listen: 'h:99999'"),
        f"bad.yaml:1: listen: expected host:port {HOSTPORT}, got 'h:99999'",
    ),
    (
        "listen without host",
        BASE.replace("listen: 127.0.0.1:6432", "listen: ':6432'"),
        f"bad.yaml:1: listen: expected host:port {HOSTPORT}, got ':6432'",
    ),
    (
        "admin listen bad",
        BASE + "admin:\n  listen: 9187\n",
        "bad.yaml:11: admin.listen: expected a string, got integer 9187 (quote it)",
    ),
    (
        "admin listen no port",
        BASE + "admin:\n  listen: 'localhost:'\n",
        f"bad.yaml:11: admin.listen: expected host:port {HOSTPORT}, got 'localhost:'",
    ),
    (
        "scram user without password",
        BASE.replace("    password: apppass\n", ""),
        "bad.yaml:5: users[0].password: user 'app' needs a password when auth.method is"
        " scram-sha-256",
    ),
    (
        "md5 user without password",
        BASE.replace("scram-sha-256", "md5").replace("password: apppass", "pool_size: 2"),
        "bad.yaml:5: users[0].password: user 'app' needs a password when auth.method is md5",
    ),
    (
        "unset env var",
        BASE.replace("password: apppass", "password: ${HP_TEST_SURELY_UNSET}"),
        "bad.yaml:6: users[0].password: environment variable HP_TEST_SURELY_UNSET is not set"
        " (write ${HP_TEST_SURELY_UNSET:-default} to give a default)",
    ),
    (
        "bad env reference",
        BASE.replace("password: apppass", "password: ${not a name}"),
        "bad.yaml:6: users[0].password: bad variable reference: write ${NAME} or"
        " ${NAME:-default} ($${ for a literal ${)",
    ),
    (
        "unsafe YAML tag",
        BASE + "shutdown_timeout: !!python/name:os.system x\n",
        "bad.yaml:10: shutdown_timeout: bad value: could not determine a constructor for the tag"
        " 'tag:yaml.org,2002:python/name:os.system'",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_config(text: str, expected: str) -> None:
    os.environ.pop("HP_TEST_SURELY_UNSET", None)
    assert error_of(text) == expected


def test_config_error_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.replace("port: 5433", "port: 0"), "x.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("x.yaml", 9, "nodes[1].port")
    assert err.reason == "must be between 1 and 65535, got 0"


# --------------------------------------------------------------------------- files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.replace("apppass", "caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: not UTF-8 text (invalid continuation byte)"


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(BASE + "pool: {size: -3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}:10: pool.size: must be >= 1, got -3"
    path.write_text(BASE)
    assert load_config(path).source == str(path)


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        (" 2 s ", 2.0),
        ("1.5", 1.5),  # a number in a string (e.g. from "${VAR}") is seconds too
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "s",
        "5 seconds",
        "1y",
        "-1s",
        "1s-",
        "1e3s",
        "9" * 400 + "d",
        float("inf"),
        True,
        None,
        [1],
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "pool.acquire_timeout")
    assert info.value.key == "pool.acquire_timeout"
    assert str(info.value).startswith("<config>: pool.acquire_timeout: ")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("64MiB", 64 * 1024 * 1024),
        ("64MB", 64_000_000),
        ("512kB", 512_000),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("1.5kB", 1500),
        ("100", 100),
        ("100B", 100),
        ("2 TiB", 2 * 1024**4),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value, "x") == size


@pytest.mark.parametrize("value", ["", "MiB", "64 megs", "1.5B", "64Mi", "-1", 1.5, True])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "max_message_size", file="f.yaml", line=3)
    assert str(info.value).startswith("f.yaml:3: max_message_size: ")


# --------------------------------------------------------------------------- shipped configs

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def test_shipped_configs_are_there() -> None:
    expected = {
        "heliosproxy.yaml",
        "reference.yaml",
        "primary-standby.yaml",
        "branches.yaml",
        "plugins.yaml",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name: str) -> None:
    config = load_config(CONFIG_DIR / name)
    assert config.nodes
    assert sum(1 for n in config.nodes if n.role is Role.PRIMARY) == 1


def test_contract_example() -> None:
    config = load_config(CONFIG_DIR / "heliosproxy.yaml")
    assert config.listen == "127.0.0.1:6432"
    assert config.auth.method is AuthMethod.SCRAM
    assert config.user("app") == UserConfig(name="app", password="apppass")
    assert config.user("admin") == UserConfig(name="admin", password="adminpass")
    assert config.admin.users == ("admin",)
    assert config.nodes == (
        NodeConfig(name="primary", host="127.0.0.1", port=5432, role=Role.PRIMARY),
        NodeConfig(name="standby1", host="127.0.0.1", port=5433, role=Role.STANDBY),
    )


def test_plugins_example() -> None:
    config = load_config(CONFIG_DIR / "plugins.yaml")
    assert config.plugins.dir == "plugins/build"
    assert config.plugins.trust_root is None
    assert config.plugins.hot_reload is True
    assert "# trust_root:" in (CONFIG_DIR / "plugins.yaml").read_text()


def test_reference_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_PASSWORD", raising=False)
    config = load_config(CONFIG_DIR / "reference.yaml")
    defaults = Config(nodes=())
    for section in (
        "listen",
        "workers",
        "max_client_connections",
        "client_login_timeout",
        "max_message_size",
        "shutdown_timeout",
        "auth",
        "pool",
        "routing",
        "health",
        "failover",
        "admin",
        "plugins",
        "log",
        "tls",
        "server_tls",
        "max_login_connections",
        "max_login_connections_per_ip",
        "max_client_buffer",
    ):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.routing.write_functions == DEFAULT_WRITE_FUNCTIONS
    assert config.users == (UserConfig(name="app", password="apppass"),)
    assert config.nodes[0] == NodeConfig(name="primary", host="127.0.0.1", role=Role.PRIMARY)
    assert config.nodes[1] == NodeConfig(name="standby1", host="127.0.0.1", port=5433)


def _keys(cls: type) -> set[str]:
    names = set()
    for f in dataclasses.fields(cls):
        if cls is Config and f.name in ("source", "written"):
            continue
        names.add(f.name)
    return names


@pytest.mark.parametrize(
    "cls",
    [
        Config,
        UserConfig,
        NodeConfig,
        AdminConfig,
        PoolConfig,
        RoutingConfig,
        HealthConfig,
        FailoverConfig,
        PluginsConfig,
        PluginLimits,
        LogConfig,
    ],
)
def test_reference_documents_every_key(cls: type) -> None:
    text = (CONFIG_DIR / "reference.yaml").read_text()
    sections = {
        f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING
    }
    for name in sorted(_keys(cls)):
        if name in sections:  # a nested mapping: its own keys carry the comments
            assert re.search(rf"^\s*{name}:", text, re.MULTILINE), f"{cls.__name__}.{name} missing"
            continue
        line = re.search(rf"^\s*(?:- )?{name}:.*#\s*\S", text, re.MULTILINE)
        assert line, f"{cls.__name__}.{name} is not documented (with a comment) in reference.yaml"
    for name in ("node", "database"):
        assert re.search(rf"^\s*{name}:.*#\s*\S", text, re.MULTILINE)


# --------------------------------------------------------------------------- never a traceback


def test_recursive_merge_key_is_an_error() -> None:
    text = "auth: &a {method: trust, <<: *a}\n" + NODES
    assert error_of(text).startswith("bad.yaml:1: ")


def test_huge_size_is_exact() -> None:
    assert parse_size("9" * 30 + "B", "x") == int("9" * 30)


_FRAGMENTS = [
    "listen: ",
    "nodes:",
    "  - ",
    "{name: p, host: h, role: primary}",
    "port: ",
    "pool:",
    "  size: ",
    "users:",
    "name: ",
    "password: ",
    "${X}",
    "${",
    "&a ",
    "*a",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    "-1",
    "1e400",
    "true",
    "null",
    "'",
    '"',
    "\t",
    ":",
    "\n",
    "auto",
    "0.5B",
    "9" * 50 + "d",
    "!!int x",
    "branches:",
    "  dev: ",
    "admin:",
    "  users: [x]",
    "log: {level: x}",
    "---",
    "?",
    "#",
    "%YAML 1.1",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=30) | st.text(max_size=200))
def test_any_input_gives_a_config_or_a_config_error(parts: list[str] | str) -> None:
    text = parts if isinstance(parts, str) else "".join(parts)
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
    else:
        assert config.nodes


def test_load_yaml_file_for_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("name: hello\nhooks: [pre_query]\nlimits: {memory: 16MiB}\n")
    assert load_yaml_file(path) == {
        "name": "hello",
        "hooks": ["pre_query"],
        "limits": {"memory": "16MiB"},
    }
    path.write_text("name: hello\nhooks: [pre_query\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path)
    assert str(info.value).startswith(f"{path}:3: invalid YAML: ")
    path.write_text("x: !!python/name:os.system y\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path)
    assert str(info.value).startswith(f"{path}:1: invalid YAML: could not determine a constructor")
    with pytest.raises(FileNotFoundError):
        load_yaml_file(tmp_path / "missing.yaml")


def test_pgbouncer_names_of_pool_keys() -> None:
    """server_lifetime, server_idle_timeout, server_connect_timeout and query_wait_timeout are aliases."""
    from heliosproxy.config.load import parse_config

    base = "nodes: [{name: p, host: h, role: primary}]\n"
    c = parse_config(base + "pool: {server_lifetime: 10s, server_idle_timeout: 1m, server_connect_timeout: 2s,"
                            " query_wait_timeout: 3s}\n", "x.yaml")
    assert (c.pool.max_lifetime, c.pool.idle_timeout, c.pool.connect_timeout, c.pool.acquire_timeout) == (
        10.0, 60.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"pool\.max_lifetime: max_lifetime is given twice"):
        parse_config(base + "pool: {server_lifetime: 10s, max_lifetime: 5s}\n", "x.yaml")
