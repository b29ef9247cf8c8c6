"""Everything a client session needs from the rest of the process, built once by server.py and passed down."""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heliosproxy.backends.registry import Registry
from heliosproxy.cache import ResultCache
from heliosproxy.config.schema import Config
from heliosproxy.histogram import DurationHistogram
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.pool.manager import PoolManager
from heliosproxy.routing.breaker import Breakers
from heliosproxy.routing.consistency import ReadPlanner
from heliosproxy.routing.router import Router
from heliosproxy.session.admission import LoginGate
from heliosproxy.session.pgcompat import StatsBook
from heliosproxy.sql.classify import Classifier
from heliosproxy.traffic.analytics import Analytics
from heliosproxy.traffic.limits import Limiter
from heliosproxy.traffic.mirror import Mirror

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession


@dataclass(slots=True)
class QueryStat:
    normalized: str
    calls: int = 0
    total_us: int = 0
    errors: int = 0


@dataclass(slots=True)
class Counters:
    """Plain integers bumped on the hot path; metrics read them when scraped."""

    clients_total: int = 0
    clients_refused: int = 0
    login_failures: int = 0
    protocol_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    queries: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (node, route, result) -> n
    durations: DurationHistogram = field(default_factory=DurationHistogram)  # statement seconds, bucketed


@dataclass(slots=True)
class ProxyContext:
    config: Config
    registry: Registry
    pools: PoolManager
    router: Router
    classifier: Classifier
    plugins: PluginManager
    reads: ReadPlanner  # auto-routed reads: consistency, function volatility, catalog checks
    worker_id: int = 0
    clients: set[ClientSession] = field(default_factory=set)
    cancel_keys: dict[tuple[int, int], ClientSession] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    query_stats: dict[str, QueryStat] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)  # databases paused by the admin (PAUSE db); "*" = all
    admin: Any = None  # admin console (heliosproxy.admin.console.AdminConsole) set by server.py
    on_cancel_miss: Callable[[int, int], None] | None = None  # multi-worker cancel forwarding
    # Multi-worker: ask the other workers to close their idle connections to a database.
    close_idle_elsewhere: Callable[[str], Awaitable[None]] | None = None
    # Multi-worker: (worker, pid, action) -> what that worker answers about a PID it issued (session/pidmap.py).
    ask_pid: Callable[[int, int, int], Awaitable[bytes | None]] | None = None
    known_statements: dict[str, None] = field(default_factory=dict)  # server names some backend accepted
    # Bumped when DDL passes through the proxy or a server reports a stale plan: shared server
    # statements prepared from then on get new names, so nobody reuses a plan made before it.
    schema_epoch: int = 0
    # (pool key, startup settings) -> the ParameterStatus values a server reports with those
    # settings applied (validated once: a setting the server refuses fails the login instead).
    login_views: dict[tuple[Any, tuple[tuple[str, str], ...]], dict[str, str]] = field(default_factory=dict)
    shutting_down: bool = False
    pg_stats: StatsBook = field(default_factory=StatsBook)  # PgBouncer's per-database SHOW STATS counters
    disabled_databases: set[str] = field(default_factory=set)  # DISABLE db: new clients refused
    logins: LoginGate = field(default_factory=LoginGate)  # login slots (session/admission.py)
    tls_context: ssl.SSLContext | None = None  # TLS to clients (tls:), rebuilt on every reload
    # issue 15 §4, §5 (heliosproxy/traffic/control.py): None while not configured
    mirror: Mirror | None = None
    analytics: Analytics | None = None
    # Issue 16: SWITCHOVER state (admin/switchover.SwitchoverStats) and replay counters (session/replay.py).
    switchover: Any = None
    replays_ok: int = 0
    replays_failed: int = 0
    reads_retried: int = 0
    commits_resolved: int = 0
    sessions_moved: int = 0
    # issue 15: rate limits and circuit breakers (session/traffic.py gates statements when `gates`)
    limits: Limiter | None = None
    breakers: Breakers | None = None
    gates: bool = False
    cache: ResultCache | None = None  # result cache (cache.enabled); None costs the data path one check
    _pid_counter: int = 0
    # config values read per message (set by adopt(), with `config`)
    max_message_size: int = 0
    max_client_buffer: int = 0

    def adopt(self, config: Config) -> None:
        """Use this configuration (at start and at every reload)."""
        self.config = config
        self.max_message_size = config.max_message_size
        self.max_client_buffer = config.max_client_buffer

    def remember_statement(self, server_name: str) -> None:
        known = self.known_statements
        if server_name not in known:
            if len(known) >= 50_000:
                known.pop(next(iter(known)))
            known[server_name] = None

    def new_key(self) -> tuple[int, int]:
        """A proxy-issued (pid, secret) pair; the worker id sits in the low byte of the secret."""
        self._pid_counter += 1
        pid = 0x40000000 | (self.worker_id << 24) | (self._pid_counter & 0xFFFFFF)
        secret = (struct.unpack("!I", os.urandom(4))[0] & 0xFFFFFF00) | (self.worker_id & 0xFF)
        return pid, secret
