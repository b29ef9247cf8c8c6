"""Per-user login secrets: config users, auth_query lookups (cached for a TTL), and ClientKeys clients proved."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.registry import Registry
from heliosproxy.config.schema import Config, Role
from heliosproxy.errors import BackendAuthError, BackendUnavailable
from heliosproxy.protocol.auth import SCRAM_ITERATIONS, ClientAuth, Credential

log = logging.getLogger("heliosproxy.auth")

# The per-proxy secret unknown users' SCRAM salts are derived from. Made when this module is imported,
# before `workers: N` forks, so every worker answers an unknown name with the same salt.
PROXY_KEY = os.urandom(32)
_CACHE_MAX = 10_000


class AuthLookupError(BackendUnavailable):
    """auth_query could not be run (server down, bad query, auth_user refused)."""


class CredentialStore:
    """What the proxy knows of each user's password, for both sides of the proxy.

    Client side: `cached()`/`lookup()` give the Credential a client is verified against (None = no such
    user). Server side: `for_server()` gives what pool connections log in with; for a SCRAM verifier
    that is the verifier plus the ClientKey the last successful client of that user proved
    (pass-through), kept in memory only and never logged."""

    def __init__(self, config: Config, registry: Registry | None = None, mock_key: bytes = PROXY_KEY):
        self.config = config
        self.registry = registry
        self.mock_key = mock_key
        self._configured: dict[str, Credential] = {}
        self._cache: collections.OrderedDict[str, tuple[float, Credential | None]] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Future[Credential | None]] = {}
        self._proven: dict[str, Credential] = {}  # user -> credential with its ClientKey (or md5 hash)
        self._conn: BackendConnection | None = None
        self._lock: asyncio.Lock | None = None
        self.lookups = 0  # auth_query round trips, for tests and stats
        # Iteration count unknown users are shown: the one real verifiers use (most common in `users`,
        # else the first auth_query returned), so that it does not tell them apart either.
        self.mock_iterations = SCRAM_ITERATIONS
        self._iterations_from_config = False
        self._seen_iterations = False
        self.configure(config)

    # ------------------------------------------------------------------ config
    def configure(self, config: Config) -> None:
        old = self._configured
        self.config = config
        self._configured = {}
        for u in config.users:
            if u.password is not None:
                with contextlib.suppress(ValueError):  # config.load already refused malformed secrets
                    self._configured[u.name] = Credential.parse(u.password)
        counts = collections.Counter(c.scram.iterations for c in self._configured.values() if c.scram is not None)
        self._iterations_from_config = bool(counts)
        if counts:
            self.mock_iterations = counts.most_common(1)[0][0]
        for user in list(self._proven):
            if old.get(user) != self._configured.get(user):
                del self._proven[user]
        self._cache.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def auth_query_enabled(self) -> bool:
        return self.config.auth.auth_user is not None

    # ------------------------------------------------------------------ client side
    def client_auth(self, user: str, cred: Credential | None) -> ClientAuth:
        """The md5/SCRAM exchange for one client of `user` (cred None: no such user)."""
        return ClientAuth(self.config.auth.method.value, user, cred, self.mock_key, self.mock_iterations)

    def cached(self, user: str) -> tuple[bool, Credential | None]:
        """(True, credential-or-None) when known without I/O; (False, None) when auth_query must run."""
        cred = self._configured.get(user)
        if cred is not None or not self.auth_query_enabled:
            return True, cred
        hit = self._cache.get(user)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    async def lookup(self, user: str) -> Credential | None:
        """The credential of `user`, running auth_query on a cache miss (concurrent misses share one)."""
        known, cred = self.cached(user)
        if known:
            return cred
        fut = self._inflight.get(user)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[user] = fut
            try:
                cred = await self._fetch(user)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters (if any) get it too
                raise
            finally:
                self._inflight.pop(user, None)
            fut.set_result(cred)
            self._cache[user] = (time.monotonic() + self.config.auth.auth_query_ttl, cred)
            self._cache.move_to_end(user)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
            return cred
        return await asyncio.shield(fut)

    def authenticated(self, user: str, auth: ClientAuth) -> None:
        """A client logged in: keep what pool connections of this user need to log in to servers."""
        cred = auth.cred
        if cred is None:
            return
        if cred.scram is not None and cred.password is None:
            if auth.client_key is not None:
                self._proven[user] = cred.with_client_key(auth.client_key)
        elif user not in self._configured:
            self._proven[user] = cred  # an md5 hash (or plaintext) from auth_query

    def authenticated_cleartext(self, user: str, cred: Credential | None, client_key: bytes | None) -> None:
        """A client logged in with a cleartext password that matched `cred` (plugin auth path)."""
        if cred is None:
            return
        if cred.scram is not None and client_key:
            self._proven[user] = cred.with_client_key(client_key)
        elif user not in self._configured:
            self._proven[user] = cred

    # ------------------------------------------------------------------ server side
    def for_server(self, user: str) -> Credential | None:
        """What a new server connection of `user` logs in with (None: no password known)."""
        cred = self._configured.get(user)
        if cred is not None and (cred.password is not None or cred.md5 is not None):
            return cred
        proven = self._proven.get(user)
        if proven is not None:
            return proven
        return cred  # a verifier without a ClientKey yet: the server login says why it cannot

    # ------------------------------------------------------------------ auth_query
    def _auth_target(self) -> tuple[str, str, int]:
        node = self.registry.primary_node() if self.registry is not None else None
        if node is not None:
            return node.name, node.cfg.host, node.cfg.port
        for nc in self.config.nodes:
            if nc.role is Role.PRIMARY:
                return nc.name, nc.host, nc.port
        nc = self.config.nodes[0]
        return nc.name, nc.host, nc.port

    async def _fetch(self, user: str) -> Credential | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        auth = self.config.auth
        au = auth.auth_user
        assert au is not None
        timeout = self.config.pool.connect_timeout
        async with self._lock:
            for attempt in (1, 2):
                conn = self._conn
                try:
                    if conn is None or conn.closed:
                        name, host, port = self._auth_target()
                        secret = Credential.parse(au.password) if au.password is not None else None
                        conn = await connect(
                            name, host, port, au.name, secret, auth.auth_dbname,
                            timeout=timeout, params={"application_name": "heliosproxy-auth"},
                        )
                        self._conn = conn
                    self.lookups += 1
                    rows = await asyncio.wait_for(conn.query(auth.auth_query, (user,)), timeout)
                    break
                except QueryError as exc:
                    raise AuthLookupError(f"auth_query failed: {exc.message}", sqlstate="08006") from None
                except BackendAuthError as exc:
                    raise AuthLookupError(
                        f"auth_user {au.name!r} cannot log in for auth_query: {exc.message}", sqlstate="08006"
                    ) from None
                except (OSError, TimeoutError) as exc:
                    if conn is not None:
                        conn.abort()
                    self._conn = None
                    if attempt == 2:
                        raise AuthLookupError(f"auth_query: cannot reach the server: {exc or 'timeout'}") from None
        if not rows or len(rows[0]) < 2 or rows[0][1] is None:
            return None
        try:
            cred = Credential.parse(rows[0][1])
            if cred.scram is not None and not self._iterations_from_config and not self._seen_iterations:
                self._seen_iterations = True
                self.mock_iterations = cred.scram.iterations
            return cred
        except ValueError:
            log.warning("auth_query returned a malformed secret for user %r; refusing it", user)
            return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
