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


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    promote: bool = False
    primary_down_for: float = 10.0
    write_timeout: float = 5.0


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
    limits: PluginLimits = field(default_factory=PluginLimits)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # text | json
    connections: bool = True  # false: no client_connected / client_closed lines


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
    cache: CacheConfig = field(default_factory=CacheConfig)  # result cache (heliosproxy/cache/)
    source: str = "<memory>"  # the file this came from, for messages

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
