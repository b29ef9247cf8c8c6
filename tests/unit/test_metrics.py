"""The Prometheus collector: every family is exposed, parsed by prometheus-client, and follows the counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from heliosproxy.backends.registry import NodeState
from heliosproxy.config.load import parse_config
from heliosproxy.server import Server

CONFIG = """\
listen: 127.0.0.1:0
users:
  - {name: app, password: apppass}
nodes:
  - {name: p, host: 127.0.0.1, port: 1, role: primary}
  - {name: s, host: 127.0.0.1, port: 2, role: standby}
"""


def _scrape(server: Server) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    body, ctype = server.metrics.exposition()
    assert ctype.startswith("text/plain")
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        assert fam.name.startswith("heliosproxy_"), fam.name
        fam_out = out.setdefault(fam.name, {})
        for s in fam.samples:
            fam_out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_family_is_present_and_prefixed() -> None:
    body, _ = Server(parse_config(CONFIG, "t.yaml")).metrics.exposition()
    names = [line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), "a metric family is exposed twice"
    m = _scrape(Server(parse_config(CONFIG, "t.yaml")))
    for name in (
        "heliosproxy_info", "heliosproxy_client_connections", "heliosproxy_client_connections_accepted",
        "heliosproxy_server_connections", "heliosproxy_queries", "heliosproxy_query_duration_seconds",
        "heliosproxy_pool_wait_seconds", "heliosproxy_client_received_bytes", "heliosproxy_client_sent_bytes",
        "heliosproxy_node_up", "heliosproxy_node_role", "heliosproxy_node_replication_lag_bytes",
        "heliosproxy_failovers", "heliosproxy_primary_conflicts", "heliosproxy_plugin_calls",
        "heliosproxy_plugin_errors", "heliosproxy_plugin_duration_seconds", "heliosproxy_config_reloads",
    ):
        assert name in m, name


def test_values_follow_counters_registry_and_reloads() -> None:
    server = Server(parse_config(CONFIG, "t.yaml"))
    ctx = server.ctx
    ctx.counters.queries[("s", "standby", "ok")] = 5
    ctx.counters.queries[("p", "primary", "error")] = 2
    ctx.counters.bytes_in = 1234
    for d in (0.0002, 0.003, 0.003, 2.0):
        ctx.counters.durations.observe(d)
    node = ctx.registry.nodes["s"]
    node.state, node.lag_bytes, node.lag_ms = NodeState.LAGGING, 4096, 1500.0
    ctx.registry.nodes["p"].state = NodeState.DOWN
    ctx.registry.set_primary("s")
    server.reloads_ok, server.reloads_failed = 3, 1

    m = _scrape(server)
    q = m["heliosproxy_queries"]
    assert q[("heliosproxy_queries_total", (("node", "s"), ("result", "ok"), ("route", "standby")))] == 5
    assert q[("heliosproxy_queries_total", (("node", "p"), ("result", "error"), ("route", "primary")))] == 2
    assert m["heliosproxy_client_received_bytes"][("heliosproxy_client_received_bytes_total", ())] == 1234
    h = m["heliosproxy_query_duration_seconds"]
    assert h[("heliosproxy_query_duration_seconds_count", ())] == 4
    assert h[("heliosproxy_query_duration_seconds_bucket", (("le", "0.0005"),))] == 1
    assert h[("heliosproxy_query_duration_seconds_bucket", (("le", "0.005"),))] == 3
    assert h[("heliosproxy_query_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert abs(h[("heliosproxy_query_duration_seconds_sum", ())] - 2.0062) < 1e-9
    # Bucketed when recorded: the counts are there before any scrape, nothing is kept per sample.
    assert ctx.counters.durations.counts[:4] == [1, 0, 0, 2] and ctx.counters.durations.count == 4

    # Cumulative across scrapes.
    ctx.counters.durations.observe(0.02)
    h = _scrape(server)["heliosproxy_query_duration_seconds"]
    assert h[("heliosproxy_query_duration_seconds_count", ())] == 5

    m = _scrape(server)
    assert m["heliosproxy_node_up"][("heliosproxy_node_up", (("node", "s"),))] == 1
    assert m["heliosproxy_node_up"][("heliosproxy_node_up", (("node", "p"),))] == 0
    assert m["heliosproxy_node_state"][("heliosproxy_node_state", (("node", "s"), ("state", "lagging")))] == 1
    lag = m["heliosproxy_node_replication_lag_bytes"]
    assert lag[("heliosproxy_node_replication_lag_bytes", (("node", "s"),))] == 4096
    assert m["heliosproxy_node_replication_lag_seconds"][
        ("heliosproxy_node_replication_lag_seconds", (("node", "s"),))] == 1.5
    assert m["heliosproxy_node_write_target"][("heliosproxy_node_write_target", (("node", "s"),))] == 1
    assert m["heliosproxy_failovers"][("heliosproxy_failovers_total", ())] == 1
    r = m["heliosproxy_config_reloads"]
    assert r[("heliosproxy_config_reloads_total", (("result", "ok"),))] == 3
    assert r[("heliosproxy_config_reloads_total", (("result", "failed"),))] == 1
