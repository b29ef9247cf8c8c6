"""The typed, frozen configuration model: one Config built once by config.load and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class AuthMethod(str, Enum):
    TRUST = "trust"
    MD5 = "md5"
    SCRAM = "scram-sha-256"


class Role(str, Enum):
    PRIMARY = "primary"
    STANDBY = "standby"
    SHADOW = "shadow"  # a mirror target (issue 15 §4): no client traffic, never promoted


class PoolMode(str, Enum):
    TRANSACTION = "transaction"
    SESSION = "session"
    STATEMENT = "statement"  # transaction pooling that refuses multi-statement transactions (PgBouncer's)


class Policy(str, Enum):
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_CONNECTIONS = "least_connections"


class Fallback(str, Enum):
    PRIMARY = "primary"
    ERROR = "error"


class Consistency(str, Enum):
    SESSION = "session"  # a client's reads see its own acknowledged writes (by WAL position)
    EVENTUAL = "eventual"  # reads go to any usable standby (read_your_writes_ms as a time floor)
    STRONG = "strong"  # reads see every write acknowledged through the proxy before they arrived


class FailMode(str, Enum):
    OPEN = "open"
    CLOSED = "closed"


DEFAULT_WRITE_FUNCTIONS: tuple[str, ...] = (
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_open",
    "lo_write",
    "lowrite",
    "lo_truncate",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_promote",
    "pg_terminate_backend",
    "pg_cancel_backend",
)


# --- TLS and login/memory limits (issue 12 §1, §2, §4, §5) ---
class TlsMode(str, Enum):
    DISABLE = "disable"  # SSLRequest answered N
    ALLOW = "allow"  # TLS offered; plaintext clients still served
    REQUIRE = "require"  # plaintext clients get FATAL 28000 after their startup packet


class ClientCerts(str, Enum):
    NONE = "none"
    OPTIONAL = "optional"  # verified against tls.ca when the client sends one
    VERIFY = "verify"  # required, verified against tls.ca


class ServerTlsMode(str, Enum):
    DISABLE = "disable"
    PREFER = "prefer"  # TLS when the server offers it, unverified
    REQUIRE = "require"  # TLS or fail, unverified
    VERIFY_CA = "verify-ca"  # TLS, certificate chain checked against tls_ca
    VERIFY_FULL = "verify-full"  # and the host name checked against the certificate


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS to clients (`tls:`)."""

    mode: TlsMode = TlsMode.DISABLE
    cert: str | None = None  # PEM certificate (chain) file
    key: str | None = None  # PEM private key file
    ca: str | None = None  # CA bundle that client certificates are checked against
    client_certs: ClientCerts = ClientCerts.NONE
    min_version: str = "TLSv1.2"  # TLSv1.2 | TLSv1.3


@dataclass(frozen=True, slots=True)
class ServerTlsConfig:
    """TLS to servers (`server_tls:`): the default of every node's tls, tls_ca, tls_cert, tls_key."""

    tls: ServerTlsMode = ServerTlsMode.PREFER
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


# --- end of issue 12 block ---


# --- traffic control: rate limits and circuit breakers (issue 15 §2, §3) ---
class LimitKey(str, Enum):
    USER = "user"
    DATABASE = "database"
    CLIENT_ADDR = "client_addr"
    TENANT = "tenant"  # SET helios.tenant = ... (or a plugin-set attribute "tenant")
    FINGERPRINT = "fingerprint"  # the statement's normalized-text fingerprint


class LimitAction(str, Enum):
    REJECT = "reject"  # ERROR 53400 at once
    QUEUE = "queue"  # wait for a token / slot up to max_wait, then 53400
    DELAY = "delay"  # hold the statement until its (borrowed) token is due, up to max_wait


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """One entry of `limits:`: a token bucket and/or a concurrency cap per value of `key`."""

    name: str
    key: LimitKey
    rate: float | None = None  # statements per second (token refill); None = no rate limit
    burst: int | None = None  # bucket size; None = max(1, rate)
    concurrency: int | None = None  # sessions of one key value with a statement running; None = no cap
    action: LimitAction = LimitAction.REJECT
    max_wait: float = 1.0  # queue/delay: the longest a statement is held before 53400


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """`circuit_breaker:` per node: open after `failures` connection-class failures within `window`."""

    failures: int = 3
    window: float = 10.0
    open_for: float = 8.0


# --- end of issue 15 traffic block ---


@dataclass(frozen=True, slots=True)
class UserConfig:
    name: str
    password: str | None = None
    pool_mode: PoolMode | None = None  # overrides pool.mode for this user
    pool_size: int | None = None  # overrides pool.size for this user
    max_user_connections: int | None = None  # server connections of this user, all pools (None = pool's)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    host: str
    port: int = 5432
    role: Role = Role.STANDBY
    weight: int = 1  # share of reads among standbys
    priority: int = 0  # failover promotion preference (higher first)
    # TLS to this server; None = server_tls (the default for every node).
    tls: ServerTlsMode | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True, slots=True)
class BranchConfig:
    name: str
    node: str
    database: str


class DatabaseRoute(str, Enum):
    AUTO = "auto"  # read/write split as configured under routing
    PRIMARY = "primary"
    STANDBY = "standby"  # a read-only alias: every statement goes to a standby


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """One entry of `databases:`: an alias clients connect to, with its own routing and pool settings."""

    name: str
    database: str | None = None  # the server's database name; None = the alias itself
    route: DatabaseRoute = DatabaseRoute.AUTO
    pool_mode: PoolMode | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_db_connections: int | None = None

    @property
    def dbname(self) -> str:
        return self.database or self.name


DEFAULT_AUTH_QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"


@dataclass(frozen=True, slots=True)
class AuthUserConfig:
    """The user whose own connection runs auth_query (PgBouncer's auth_user)."""

    name: str
    password: str | None = None  # plaintext or an md5 hash (the proxy logs in with it; no client does)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    method: AuthMethod = AuthMethod.SCRAM
    # PgBouncer's auth_query: users not in `users` (or listed without a password) get their secret from
    # the server, looked up with auth_user's connection and cached for auth_query_ttl.
    auth_user: AuthUserConfig | None = None
    auth_query: str = DEFAULT_AUTH_QUERY
    auth_query_ttl: float = 60.0
    auth_dbname: str = "postgres"  # the database auth_query runs in


@dataclass(frozen=True, slots=True)
class PoolConfig:
    mode: PoolMode = PoolMode.TRANSACTION
    size: int = 20
    min_size: int = 0
    acquire_timeout: float = 5.0
    idle_timeout: float = 600.0
    max_lifetime: float = 3600.0
    reset_query: str = "DISCARD ALL"
    connect_timeout: float = 5.0
    prepared_statements_per_server: int = 1000  # LRU bound of proxy-named statements per backend
    strict_isolation: bool = False  # pin clients that call functions with unknown session effects
    # PgBouncer's pool controls (idle_timeout, max_lifetime, connect_timeout and acquire_timeout are also
    # accepted as server_idle_timeout, server_lifetime, server_connect_timeout and query_wait_timeout).
    reserve_pool_timeout: float = 5.0  # a client waiting this long may use a database's reserve_pool_size
    server_check_query: str = ""  # run on a connection idle longer than server_check_delay; "" = never
    server_check_delay: float = 30.0
    query_timeout: float = 0.0  # a statement running longer closes the client (08P01 "query timeout"); 0 = off
    idle_transaction_timeout: float = 0.0  # idle in transaction longer: 08P01 "idle transaction timeout"
    client_idle_timeout: float = 0.0  # a client idle (no server) longer is closed: 08P01 "client_idle_timeout"
    server_reset_query_always: bool = False  # run reset_query in transaction pooling too
    track_extra_parameters: tuple[str, ...] = ("IntervalStyle",)  # startup parameters reported back
    max_db_connections: int = 0  # server connections per database over all pools; 0 = unlimited
    max_user_connections: int = 0  # server connections per user over all pools; 0 = unlimited
    max_pools: int = 1000  # pools a worker may create; past it a login gets FATAL 53300


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    read_write_split: bool = True
    policy: Policy = Policy.ROUND_ROBIN
    max_lag_bytes: int | None = None
    max_lag_ms: float | None = None
    standby_fallback: Fallback = Fallback.PRIMARY
    read_your_writes_ms: float = 0.0
    write_functions: tuple[str, ...] = DEFAULT_WRITE_FUNCTIONS
    classify_cache_size: int = 10_000
    # issue 11: consistency of reads on standbys, function volatility, the 25006 safety net
    consistency: Consistency = Consistency.SESSION
    read_only_functions: tuple[str, ...] = ()  # volatile user functions that still may run on standbys
    function_cache_ttl: float = 60.0  # pg_proc volatility answers are kept this long (per database)
    retry_read_only_errors: bool = True  # an autocommit read refused by a standby (25006) reruns on the primary


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval: float = 1.0
    timeout: float = 1.0
    failures_before_down: int = 3
    successes_before_up: int = 2
    user: str | None = None  # checks log in as this user from `users`; None = the first with a password
    password: str | None = None  # health.user's plaintext password, so that `users` may hold only hashes
    database: str = "postgres"  # database the checks connect to
    lag_interval: float | None = 0.1  # WAL positions sampled this often (routing.consistency); null = off


# Calls that make a transaction non-replayable (their result differs on a second run); a name
# ending in "*" is a prefix.
DEFAULT_NO_REPLAY_FUNCTIONS: tuple[str, ...] = (
    "now", "current_timestamp", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
    "localtimestamp", "current_time", "localtime", "timeofday", "random", "gen_random_uuid",
    "uuid_generate_v1", "uuid_generate_v4", "nextval", "currval", "setval", "lastval", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_backend_pid",
    "inet_server_port", "inet_server_addr", "pg_advisory_*", "pg_try_advisory_*",
)


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    promote: bool = False
    primary_down_for: float = 10.0
    write_timeout: float = 5.0
    # Issue 16: transaction replay, retried reads, session moves (off by default) and SWITCHOVER.
    replay: bool = False
    replay_max_bytes: int = 1024 * 1024  # statements kept per transaction for a replay
    no_replay_functions: tuple[str, ...] = DEFAULT_NO_REPLAY_FUNCTIONS
    switchover_drain: float = 10.0  # SWITCHOVER lets running transactions finish this long


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str | None = "127.0.0.1:9187"  # HTTP admin; null disables it
    token: str | None = None
    users: tuple[str, ...] = ()  # may use the SQL console (database "heliosproxy")
    # Admin surface (issue 12 §6, issue 17): Host names accepted besides the listen address,
    # whether /metrics needs the token, and the web dashboard at /.
    allowed_hosts: tuple[str, ...] = ()
    metrics_auth: bool = False
    dashboard: bool = True


@dataclass(frozen=True, slots=True)
class PluginLimits:
    memory: int = 64 * 1024 * 1024
    fuel: int = 10_000_000
    timeout_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    enabled: bool = True
    dir: str | None = None
    trust_root: str | None = None
    max_plugins: int = 32
    disable_after: int = 10
    hot_reload: bool = False
    poll_interval: float = 1.0
    debounce: float = 0.5
    kv_max_keys: int = 1024
    kv_max_value_bytes: int = 65536
    max_events: int = 1000  # events (helios.emit_event) kept for /api/anomalies, newest first
    limits: PluginLimits = field(default_factory=PluginLimits)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # text | json
    connections: bool = True  # false: no client_connected / client_closed lines


# --- traffic: mirroring and query analytics (issue 15 §4, §5) ---
class MirrorStatements(str, Enum):
    READS = "reads"  # read-only statements only
    ALL = "all"  # writes too (the shadow gets the same changes)


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """`mirror:` a sampled copy of statements runs on a shadow node, off the client's path, and is compared."""

    node: str  # a node with role: shadow
    sample: float = 1.0  # share of eligible statements copied (0 < sample <= 1)
    statements: MirrorStatements = MirrorStatements.READS
    queue: int = 1000  # statements waiting for the shadow; past it they are dropped (counted)
    concurrency: int = 2  # statements running on the shadow at once
    timeout: float = 10.0  # a copy running longer on the shadow counts as an error
    slower_ratio: float = 1.5  # the shadow is "slower" when it takes this many times the primary's time
    max_result: int = 1024 * 1024  # replies larger than this are compared by row count only
    recent: int = 50  # mismatches and errors kept for SHOW MIRROR / /api/mirror


@dataclass(frozen=True, slots=True)
class SlowLogConfig:
    threshold: float = 1.0  # statements at least this slow are logged
    file: str | None = None  # JSON lines; None = no slow log


@dataclass(frozen=True, slots=True)
class NPlusOneConfig:
    threshold: int = 10  # the same statement this many times in one session...
    window: float = 2.0  # ...within this long


@dataclass(frozen=True, slots=True)
class BurstConfig:
    threshold: int = 200  # the same statement this many times from one client address (all its sessions)...
    window: float = 1.0  # ...within this long


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """`analytics:` per-fingerprint statistics, slow-statement log, N+1 and burst detection."""

    enabled: bool = False
    max_fingerprints: int = 5000  # statements tracked (the first seen); more are counted as untracked
    slow_log: SlowLogConfig = field(default_factory=SlowLogConfig)
    n_plus_one: NPlusOneConfig = field(default_factory=NPlusOneConfig)
    bursts: BurstConfig = field(default_factory=BurstConfig)
    max_events: int = 1000  # N+1 and burst reports kept (per client and statement)


# --- end of issue 15 §4, §5 block ---
# ---- result cache (issue 15 part 1): heliosproxy/cache/
class CacheInvalidation(str, Enum):
    PROXY = "proxy"  # writes that pass through the proxy drop what they touch
    WAL = "wal"  # ... and writes seen in the primary's WAL (a logical replication slot)


@dataclass(frozen=True, slots=True)
class CacheRule:
    """Statements whose every table is listed here are cached for `ttl` (None: cache.default_ttl)."""

    tables: tuple[str, ...]
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class CacheWalUser:
    """The user (with the REPLICATION attribute) the WAL reader logs in to the primary as."""

    name: str
    password: str | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    max_memory: int = 256 * 1024 * 1024  # bytes of cached answers (and keys) per worker
    max_result: int = 1024 * 1024  # a larger answer is not cached
    default_ttl: float = 60.0
    rules: tuple[CacheRule, ...] = ()
    invalidation: CacheInvalidation = CacheInvalidation.PROXY
    wal_user: CacheWalUser | None = None
    wal_database: str = "postgres"  # the database the slot decodes (writes to other databases are not seen)


@dataclass(frozen=True, slots=True)
class Config:
    nodes: tuple[NodeConfig, ...]
    listen: str = "127.0.0.1:6432"
    listen_unix: str | None = None  # also listen on this Unix socket (e.g. /run/heliosproxy/.s.PGSQL.6432)
    workers: int = 1  # "auto" in YAML becomes os.cpu_count()
    max_client_connections: int = 1000
    client_login_timeout: float = 5.0
    max_message_size: int = 64 * 1024 * 1024
    shutdown_timeout: float = 30.0
    auth: AuthConfig = field(default_factory=AuthConfig)
    users: tuple[UserConfig, ...] = ()
    pool: PoolConfig = field(default_factory=PoolConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    branches: tuple[BranchConfig, ...] = ()
    databases: tuple[DatabaseConfig, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    server_tls: ServerTlsConfig = field(default_factory=ServerTlsConfig)
    max_login_connections: int = 100  # clients still logging in, in total (not max_client_connections)
    max_login_connections_per_ip: int = 20  # clients still logging in, per source address
    max_client_buffer: int = 1024 * 1024  # what the proxy holds for one client before it stops reading it
    mirror: MirrorConfig | None = None  # issue 15 §4
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)  # issue 15 §5
    limits: tuple[LimitConfig, ...] = ()  # rate limits and quotas (issue 15 §2); () = off
    circuit_breaker: BreakerConfig | None = None  # per-node circuit breakers (issue 15 §3); null = off
    cache: CacheConfig = field(default_factory=CacheConfig)  # result cache (heliosproxy/cache/)
    source: str = "<memory>"  # the file this came from, for messages
    # Scalar values as written in the file, by key path ("pool.acquire_timeout" -> "15s"), for SHOW CONFIG.
    written: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def user(self, name: str) -> UserConfig | None:
        for u in self.users:
            if u.name == name:
                return u
        return None

    def node(self, name: str) -> NodeConfig | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def branch(self, name: str) -> BranchConfig | None:
        for b in self.branches:
            if b.name == name:
                return b
        return None

    def database(self, name: str) -> DatabaseConfig | None:
        for d in self.databases:
            if d.name == name:
                return d
        return None

    @property
    def listen_host(self) -> str:
        return split_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_hostport(self.listen)[1]


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:6432' -> ('127.0.0.1', 6432); '[::1]:6432' -> ('::1', 6432)."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
