"""Prometheus metrics computed at scrape time from the proxy's plain counters (the hot path never touches this).

| metric | type | labels | meaning |
|---|---|---|---|
| heliosproxy_info | gauge | version, worker | always 1 |
| heliosproxy_client_connections | gauge | state: active, idle, idle_in_transaction, waiting, login | clients now |
| heliosproxy_client_connections_accepted_total | counter | | client connections accepted |
| heliosproxy_client_connections_refused_total | counter | | refused (limit reached, shutting down) |
| heliosproxy_login_failures_total | counter | | failed client logins |
| heliosproxy_protocol_errors_total | counter | | client protocol violations |
| heliosproxy_server_connections | gauge | node, database, user, state: active/idle/connecting | backend conns |
| heliosproxy_pool_size | gauge | node, database, user | the pool's size limit |
| heliosproxy_pool_waiting_clients | gauge | node, database, user | clients waiting for a server connection |
| heliosproxy_pool_acquires_total | counter | node, database, user | server connections handed out |
| heliosproxy_pool_wait_seconds | summary | node, database, user | time waiting for a server connection |
| heliosproxy_pool_timeouts_total | counter | node, database, user | acquire timeouts (53300) |
| heliosproxy_pool_connect_errors_total | counter | node, database, user | failed backend connects |
| heliosproxy_queries_total | counter | node, route, result (ok, error) | statements completed |
| heliosproxy_reads_on_primary_total | counter | reason | reads moved to the primary: no standby fresh enough |
| heliosproxy_read_only_retries_total | counter | | autocommit reads refused by a standby (25006), rerun |
| heliosproxy_query_duration_seconds | histogram | | statement duration, proxy to last reply |
| heliosproxy_client_received_bytes_total | counter | | bytes received from clients |
| heliosproxy_client_sent_bytes_total | counter | | bytes sent to clients |
| heliosproxy_node_up | gauge | node | 1 when the last checks succeeded (up or lagging) |
| heliosproxy_node_state | gauge | node, state (unknown, up, down, lagging, conflict) | 1 for the node's state |
| heliosproxy_node_role | gauge | node, role (primary, standby) | 1 for the role the server reports |
| heliosproxy_node_write_target | gauge | node | 1 for the node writes go to |
| heliosproxy_node_disabled | gauge | node | 1 when disabled by an admin |
| heliosproxy_node_replication_lag_bytes | gauge | node | primary WAL LSN minus replayed LSN |
| heliosproxy_node_replication_lag_seconds | gauge | node | replay delay (0 when caught up) |
| heliosproxy_node_timeline | gauge | node | the node's timeline |
| heliosproxy_health_checks_total | counter | result (ok, failed) | health checks run |
| heliosproxy_failovers_total | counter | | changes of the write target |
| heliosproxy_primary_conflicts_total | counter | | nodes fenced off for claiming primary beside a newer one |
| heliosproxy_promotions_total | counter | result (ok, failed) | promotions run by the proxy (failover.promote) |
| heliosproxy_switchover_pause_seconds | gauge | | how long the last SWITCHOVER held new statements |
| heliosproxy_switchovers_total | counter | result (ok, failed) | SWITCHOVER runs |
| heliosproxy_failover_replays_total | counter | kind | replays, 40001s, retried reads, resolved COMMITs |
| heliosproxy_paused | gauge | | 1 while PAUSE is in effect for some database |
| heliosproxy_plugin_calls_total | counter | plugin, hook | plugin hook calls |
| heliosproxy_plugin_errors_total | counter | plugin, hook | failed plugin hook calls |
| heliosproxy_plugin_duration_seconds_total | counter | plugin, hook | time spent in plugin hook calls |
| heliosproxy_plugin_disabled | gauge | plugin | 1 when disabled after repeated errors |
| heliosproxy_plugin_metric_total | counter | plugin, name, labels | values added with helios.metric_add(_labels) |
| heliosproxy_plugin_gauge | gauge | plugin, name, labels | values set with helios.metric_set(_labels) |
| heliosproxy_plugin_metric_dropped_total | counter | plugin | plugin metric samples refused |
| heliosproxy_plugin_misroutes_total | counter | plugin | writes a route hook sent to a standby (run on the primary) |
| heliosproxy_config_reloads_total | counter | result (ok, failed) | config reloads |
| heliosproxy_database_queries_total | counter | database | statements (PgBouncer's total_query_count) |
| heliosproxy_database_transactions_total | counter | database | transactions (total_xact_count) |
| heliosproxy_database_received_bytes_total | counter | database | bytes from clients (total_received) |
| heliosproxy_database_sent_bytes_total | counter | database | bytes to clients (total_sent) |
| heliosproxy_database_query_time_seconds_total | counter | database | time in statements (total_query_time) |
| heliosproxy_database_xact_time_seconds_total | counter | database | time in transactions (total_xact_time) |
| heliosproxy_database_wait_time_seconds_total | counter | database | time clients waited for a server |
| heliosproxy_database_server_assignments_total | counter | database | server connections assigned to clients |
| heliosproxy_database_client_logins_total | counter | database | client logins |
| heliosproxy_pool_clients | gauge | database, user, state (active, waiting) | SHOW POOLS' cl_active, cl_waiting |
| heliosproxy_pool_maxwait_seconds | gauge | database, user | SHOW POOLS' maxwait: the oldest waiting client |
| heliosproxy_node_breaker_state | gauge | node, state (closed, open, half_open) | 1 for the breaker's state |
| heliosproxy_node_breaker_opened_total | counter | node | times the node's circuit breaker opened |
| heliosproxy_node_breaker_rejected_total | counter | node | statements refused (08006) by it |
| heliosproxy_limit_statements_total | counter | limit, key, value, result | allowed/rejected/queued (worker 0) |
| heliosproxy_limit_active | gauge | limit, key, value | sessions with a statement running |
| heliosproxy_cache_hits_total | counter | | statements answered from the result cache |
| heliosproxy_cache_misses_total | counter | | cacheable statements sent to a server |
| heliosproxy_cache_stores_total | counter | | answers stored |
| heliosproxy_cache_evictions_total | counter | | entries dropped to stay under cache.max_memory |
| heliosproxy_cache_invalidations_total | counter | | entries dropped by writes (proxy or WAL) and CACHE CLEAR |
| heliosproxy_cache_bytes | gauge | | bytes of cached answers |
| heliosproxy_cache_entries | gauge | | cached answers |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from heliosproxy import __version__
from heliosproxy.admin.pgbouncer import pool_rows
from heliosproxy.backends.registry import NodeState
from heliosproxy.config.schema import Role
from heliosproxy.histogram import DurationHistogram
from heliosproxy.session import pgcompat

PREFIX = "heliosproxy_"
# Statement durations are bucketed as they are recorded (heliosproxy/histogram.py, ctx.counters.durations).


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_worker_expositions(parts: list[tuple[int, bytes]]) -> bytes:
    """One exposition from several workers' texts: each sample gets a `worker` label."""
    families: dict[str, Metric] = {}
    for worker, text in parts:
        for fam in text_string_to_metric_families(text.decode()):
            target = families.get(fam.name)
            if target is None:
                target = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for sample in fam.samples:
                labels = dict(sample.labels)
                labels.setdefault("worker", str(worker))
                target.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


def _fmt(v: float) -> str:
    return repr(float(v))


class ProxyCollector(Collector):
    """Reads the server's counters, pools, registry and plugin stats on every scrape."""

    def __init__(self, server: Any, failover: Any = None, health: Any = None):
        self.server = server  # heliosproxy.server.Server (admin.ServerControl)
        self.failover = failover  # backends.failover.FailoverManager
        self.health = health  # backends.health.HealthMonitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ lifecycle (a Server extra)
    async def start(self) -> None:
        return None  # nothing runs in the background: durations are bucketed when recorded

    async def stop(self) -> None:
        return None

    @property
    def durations(self) -> DurationHistogram:
        """The statement-duration histogram, filled by the sessions as statements finish."""
        return self.server.ctx.counters.durations  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ exposition
    def exposition(self, peers: list[tuple[int, bytes]] | None = None) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format; with `peers` (other workers' expositions),
        every worker's samples, labelled `worker`."""
        own = generate_latest(self.registry)
        if not peers:
            return own, CONTENT_TYPE_LATEST
        return merge_worker_expositions([(self.server.ctx.worker_id, own), *peers]), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Metric]:
        server = self.server
        ctx = server.ctx
        c = ctx.counters
        p = PREFIX

        info = GaugeMetricFamily(p + "info", "HeliosProxy version", labels=["version", "worker"])
        info.add_metric([__version__, str(ctx.worker_id)], 1)
        yield info

        # clients
        states = {"active": 0, "idle": 0, "idle_in_transaction": 0, "waiting": 0, "login": 0}
        for client in list(ctx.clients):
            if getattr(client, "phase", 3) >= 3 and pgcompat.is_waiting(client):
                states["waiting"] += 1
                continue
            state = client.describe()["state"]
            key = state.replace(" ", "_")
            states[key] = states.get(key, 0) + 1
        g = GaugeMetricFamily(p + "client_connections", "Client connections by state", labels=["state"])
        for k, v in states.items():
            g.add_metric([k], v)
        yield g
        yield _counter(p + "client_connections_accepted_total", "Client connections accepted", c.clients_total)
        yield _counter(p + "client_connections_refused_total", "Client connections refused", c.clients_refused)
        yield _counter(p + "login_failures_total", "Failed client logins", c.login_failures)
        yield _counter(p + "protocol_errors_total", "Client protocol violations", c.protocol_errors)
        yield _counter(p + "client_received_bytes_total", "Bytes received from clients", c.bytes_in)
        yield _counter(p + "client_sent_bytes_total", "Bytes sent to clients", c.bytes_out)

        # pools
        pl = ["node", "database", "user"]
        sconn = GaugeMetricFamily(p + "server_connections", "Backend connections by state", labels=[*pl, "state"])
        size = GaugeMetricFamily(p + "pool_size", "Pool size limit", labels=pl)
        waiting = GaugeMetricFamily(p + "pool_waiting_clients", "Clients waiting for a server connection", labels=pl)
        acq = CounterMetricFamily(p + "pool_acquires", "Server connections handed out", labels=pl)
        wait = SummaryMetricFamily(p + "pool_wait_seconds", "Time spent waiting for a server connection", labels=pl)
        tmo = CounterMetricFamily(p + "pool_timeouts", "Acquire timeouts", labels=pl)
        cerr = CounterMetricFamily(p + "pool_connect_errors", "Failed backend connects", labels=pl)
        for pool in list(ctx.pools.pools.values()):
            lv = [pool.key.node, pool.key.database, pool.key.user]
            sconn.add_metric([*lv, "active"], len(pool.active))
            sconn.add_metric([*lv, "idle"], len(pool.idle))
            sconn.add_metric([*lv, "connecting"], pool.connecting)
            size.add_metric(lv, pool.size)
            waiting.add_metric(lv, len(pool.waiters))
            acq.add_metric(lv, pool.acquired_total)
            wait.add_metric(lv, count_value=pool.waited_count, sum_value=pool.wait_total_s)
            tmo.add_metric(lv, pool.timeouts)
            cerr.add_metric(lv, pool.connect_errors)
        yield from (sconn, size, waiting, acq, wait, tmo, cerr)

        # queries
        q = CounterMetricFamily(p + "queries", "Statements completed", labels=["node", "route", "result"])
        for (node, route, result), n in list(c.queries.items()):
            q.add_metric([node, route, result], n)
        yield q
        moved = CounterMetricFamily(
            p + "reads_on_primary", "Reads sent to the primary because no standby was fresh enough", labels=["reason"]
        )
        for reason, n in list(ctx.reads.moved.items()):
            moved.add_metric([reason], n)
        yield moved
        yield _counter(p + "read_only_retries", "Reads refused by a standby (25006) rerun on the primary",
                       ctx.reads.retried_read_only)
        h = HistogramMetricFamily(p + "query_duration_seconds", "Statement duration")
        h.add_metric([], self.durations.cumulative(), sum_value=self.durations.sum)
        yield h

        # nodes
        reg = ctx.registry
        up = GaugeMetricFamily(p + "node_up", "1 when the node's checks succeed", labels=["node"])
        st = GaugeMetricFamily(p + "node_state", "1 for the node's state", labels=["node", "state"])
        role = GaugeMetricFamily(p + "node_role", "1 for the role the server reports", labels=["node", "role"])
        wt = GaugeMetricFamily(p + "node_write_target", "1 for the node writes go to", labels=["node"])
        dis = GaugeMetricFamily(p + "node_disabled", "1 when disabled by an admin", labels=["node"])
        lagb = GaugeMetricFamily(p + "node_replication_lag_bytes", "Replication lag in bytes", labels=["node"])
        lags = GaugeMetricFamily(p + "node_replication_lag_seconds", "Replay delay in seconds", labels=["node"])
        tl = GaugeMetricFamily(p + "node_timeline", "Timeline of the node", labels=["node"])
        for n in list(reg.nodes.values()):
            up.add_metric([n.name], 1 if n.state in (NodeState.UP, NodeState.LAGGING) else 0)
            for s in NodeState:
                st.add_metric([n.name, s.value], 1 if n.state is s else 0)
            for r in Role:
                role.add_metric([n.name, r.value], 1 if n.role is r else 0)
            wt.add_metric([n.name], 1 if n.name == reg.primary else 0)
            dis.add_metric([n.name], 1 if n.disabled else 0)
            if n.lag_bytes is not None:
                lagb.add_metric([n.name], n.lag_bytes)
            if n.lag_ms is not None:
                lags.add_metric([n.name], n.lag_ms / 1000.0)
            if n.timeline is not None:
                tl.add_metric([n.name], n.timeline)
        yield from (up, st, role, wt, dis, lagb, lags, tl)
        yield from self._traffic(ctx)

        hc = CounterMetricFamily(p + "health_checks", "Health checks run", labels=["result"])
        if self.health is not None:
            hc.add_metric(["ok"], self.health.checks_total - self.health.check_failures_total)
            hc.add_metric(["failed"], self.health.check_failures_total)
        yield hc
        yield _counter(p + "failovers_total", "Changes of the write target", reg.failovers)
        fo = self.failover
        yield _counter(p + "primary_conflicts_total", "Nodes fenced off for claiming primary beside a newer one",
                       fo.conflicts_total if fo is not None else 0)
        pr = CounterMetricFamily(p + "promotions", "Promotions run by the proxy", labels=["result"])
        pr.add_metric(["ok"], fo.promotions_ok if fo is not None else 0)
        pr.add_metric(["failed"], fo.promotions_failed if fo is not None else 0)
        yield pr
        yield GaugeMetricFamily(p + "paused", "1 while PAUSE is in effect", value=1 if ctx.paused else 0)
        sw = getattr(ctx, "switchover", None)  # admin/switchover.SwitchoverStats (issue 16)
        yield GaugeMetricFamily(p + "switchover_pause_seconds", "How long the last SWITCHOVER held clients",
                                value=sw.last_pause if sw is not None and sw.last_pause is not None else 0.0)
        swt = CounterMetricFamily(p + "switchovers", "SWITCHOVER runs", labels=["result"])
        swt.add_metric(["ok"], sw.total if sw is not None else 0)
        swt.add_metric(["failed"], sw.failed if sw is not None else 0)
        yield swt
        rp = CounterMetricFamily(p + "failover_replays", "Work redone after a lost server (failover.replay)",
                                 labels=["kind"])
        rp.add_metric(["transaction_replayed"], getattr(ctx, "replays_ok", 0))
        rp.add_metric(["transaction_refused"], getattr(ctx, "replays_failed", 0))
        rp.add_metric(["read_retried"], getattr(ctx, "reads_retried", 0))
        rp.add_metric(["commit_resolved"], getattr(ctx, "commits_resolved", 0))
        rp.add_metric(["session_moved"], getattr(ctx, "sessions_moved", 0))
        yield rp

        # plugins
        pc = CounterMetricFamily(p + "plugin_calls", "Plugin hook calls", labels=["plugin", "hook"])
        pe = CounterMetricFamily(p + "plugin_errors", "Failed plugin hook calls", labels=["plugin", "hook"])
        pd = CounterMetricFamily(p + "plugin_duration_seconds", "Time in plugin hook calls", labels=["plugin", "hook"])
        pdis = GaugeMetricFamily(p + "plugin_disabled", "1 when disabled after repeated errors", labels=["plugin"])
        pm = CounterMetricFamily(p + "plugin_metric", "Values added by plugins (helios.metric_add)",
                                 labels=["plugin", "name"])
        pg = GaugeMetricFamily(p + "plugin_gauge", "Values set by plugins (helios.metric_set)",
                               labels=["plugin", "name"])
        pdrop = CounterMetricFamily(p + "plugin_metric_dropped", "Plugin metric samples refused (bad name or labels,"
                                    " too many series)", labels=["plugin"])
        pmr = CounterMetricFamily(p + "plugin_misroutes", "Writes a route hook sent to a standby (run on the primary)",
                                  labels=["plugin"])
        for plugin in ctx.plugins.stats():
            name = plugin["name"]
            for hook, s in plugin.get("calls", {}).items():
                pc.add_metric([name, hook], s["calls"])
                pe.add_metric([name, hook], s["errors"])
                pd.add_metric([name, hook], s["total_us"] / 1e6)
            pdis.add_metric([name], 1 if plugin.get("disabled") else 0)
            for series in plugin.get("metric_series", ()):
                labels = {"plugin": name, "name": series["name"], **series["labels"]}
                if series["type"] == "counter":
                    pm.add_sample(pm.name + "_total", labels, series["value"])
                else:
                    pg.add_sample(pg.name, labels, series["value"])
            pdrop.add_metric([name], plugin.get("metrics_dropped", 0))
            pmr.add_metric([name], plugin.get("misroutes", 0))
        yield from (pc, pe, pd, pdis, pm, pg, pdrop, pmr)

        yield from self._pgbouncer(ctx)
        yield from self._traffic(ctx)

        rl = CounterMetricFamily(p + "config_reloads", "Config reloads", labels=["result"])
        rl.add_metric(["ok"], server.reloads_ok)
        rl.add_metric(["failed"], server.reloads_failed)
        yield rl


    def _traffic(self, ctx: Any) -> Iterator[Metric]:
        """Mirroring and analytics (issue 15 §4, §5), only while configured."""
        p = PREFIX
        m = ctx.mirror
        if m is not None:
            mc = CounterMetricFamily(p + "mirror_statements", "Statement copies sent to the shadow node, by outcome",
                                     labels=["node", "result"])
            for result in ("mirrored", "mismatches", "slower", "errors", "dropped"):
                mc.add_metric([m.cfg.node, result], getattr(m, result))
            yield mc
            yield GaugeMetricFamily(p + "mirror_queued", "Copies waiting for the shadow node", value=m.queue.qsize())
        a = ctx.analytics
        if a is not None:
            yield _counter(p + "analytics_slow_statements", "Statements at least analytics.slow_log.threshold slow",
                           a.slow)
            yield GaugeMetricFamily(p + "analytics_fingerprints", "Statements tracked by analytics", value=len(a.stats))
            yield _counter(p + "analytics_untracked_statements", "Statements past analytics.max_fingerprints",
                           a.untracked)
            ev = GaugeMetricFamily(p + "analytics_patterns", "N+1 and burst reports kept (per client and statement)",
                                   labels=["kind"])
            ev.add_metric(["n_plus_one"], len(a.n_plus_one))
            ev.add_metric(["burst"], len(a.bursts))
            yield ev
        """Circuit breakers per node and rate-limit counters per (limit, key value); nothing when off."""
        p = PREFIX
        br = ctx.breakers
        if br is not None:
            st = GaugeMetricFamily(p + "node_breaker_state", "1 for the node's circuit breaker state",
                                   labels=["node", "state"])
            op = CounterMetricFamily(p + "node_breaker_opened", "Times the node's circuit breaker opened",
                                     labels=["node"])
            ff = CounterMetricFamily(p + "node_breaker_rejected", "Statements refused with 08006 while the node's"
                                     " breaker was not closed", labels=["node"])
            for n in list(ctx.registry.nodes.values()):
                for state in ("closed", "open", "half_open"):
                    st.add_metric([n.name, state], 1 if n.breaker == state else 0)
                b = br.breakers.get(n.name)
                op.add_metric([n.name], b.opened if b is not None else 0)
                ff.add_metric([n.name], br.fast_fails.get(n.name, 0))
            yield from (st, op, ff)
        lim = ctx.limits
        if lim is not None and ctx.worker_id == 0:  # one shared table: worker 0 reports it for all
            ls = CounterMetricFamily(p + "limit_statements", "Statements per limit and key value",
                                     labels=["limit", "key", "value", "result"])
            la = GaugeMetricFamily(p + "limit_active", "Sessions of the key value with a statement running",
                                   labels=["limit", "key", "value"])
            for r in lim.rows():
                lv = [str(r["name"]), str(r["key"]), str(r["value"])]
                for result in ("allowed", "rejected", "queued"):
                    ls.add_metric([*lv, result], r[result])
                la.add_metric(lv, r["active"])
            yield from (ls, la)

    def _pgbouncer(self, ctx: Any) -> Iterator[Metric]:
        """The per-database counters and per-(database, user) client counts SHOW STATS/POOLS show."""
        p = PREFIX
        spec = (
            ("queries", "query_count", "Statements (total_query_count)", 1),
            ("transactions", "xact_count", "Transactions (total_xact_count)", 1),
            ("received_bytes", "received", "Bytes received from clients (total_received)", 1),
            ("sent_bytes", "sent", "Bytes sent to clients (total_sent)", 1),
            ("query_time_seconds", "query_time", "Time in statements (total_query_time)", 1e-6),
            ("xact_time_seconds", "xact_time", "Time in transactions (total_xact_time)", 1e-6),
            ("wait_time_seconds", "wait_time", "Time clients waited for a server (total_wait_time)", 1e-6),
            ("server_assignments", "server_assignment_count", "Server connections assigned to clients", 1),
            ("client_logins", "client_login_count", "Client logins", 1),
        )
        fams = [(CounterMetricFamily(p + "database_" + name, doc, labels=["database"]), attr, scale)
                for name, attr, doc, scale in spec]
        for db, st in sorted(ctx.pg_stats.dbs.items()):
            for fam, attr, scale in fams:
                fam.add_metric([db], getattr(st, attr) * scale)
        yield from (f for f, _a, _s in fams)
        pc = GaugeMetricFamily(p + "pool_clients", "Clients per pool (cl_active, cl_waiting)",
                               labels=["database", "user", "state"])
        mw = GaugeMetricFamily(p + "pool_maxwait_seconds", "Wait of the oldest waiting client",
                               labels=["database", "user"])
        for r in pool_rows(ctx):
            pc.add_metric([r["database"], r["user"], "active"], r["cl_active"])
            pc.add_metric([r["database"], r["user"], "waiting"], r["cl_waiting"])
            mw.add_metric([r["database"], r["user"]], r["maxwait"] + r["maxwait_us"] / 1e6)
        yield from (pc, mw)
        yield from _cache_metrics(ctx.cache, p)


def _cache_metrics(cache: Any, p: str) -> Iterator[Metric]:
    """The result cache's counters (heliosproxy/cache/store.py CacheStats); nothing when it is off."""
    if cache is None:
        return
    st = cache.stats
    yield _counter(p + "cache_hits", "Statements answered from the result cache", st.hits)
    yield _counter(p + "cache_misses", "Cacheable statements sent to a server", st.misses)
    yield _counter(p + "cache_stores", "Answers stored in the result cache", st.stores)
    yield _counter(p + "cache_evictions", "Entries dropped to stay under cache.max_memory", st.evictions)
    yield _counter(p + "cache_invalidations", "Entries dropped by writes and CACHE CLEAR", st.invalidations)
    yield GaugeMetricFamily(p + "cache_bytes", "Bytes of cached answers", value=st.bytes)
    yield GaugeMetricFamily(p + "cache_entries", "Cached answers", value=len(cache))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
