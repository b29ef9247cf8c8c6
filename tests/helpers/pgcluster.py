"""PgCluster: a throwaway PostgreSQL 15 primary plus streaming standbys on free loopback ports."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import free_port

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")

# Backend users the proxy logs in with, and how pg_hba.conf makes the server ask for them.
USERS: dict[str, str | None] = {
    "app": "apppass",  # scram-sha-256
    "md5user": "md5pass",  # md5 (stored as md5)
    "plainuser": "plainpass",  # password (cleartext)
    "trustuser": None,  # trust
}

BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
    "wal_level": "replica",
    "hot_standby": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "256MB",
    "wal_receiver_status_interval": "1s",
    "hot_standby_feedback": "on",
    "password_encryption": "scram-sha-256",
    "shared_buffers": "32MB",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "lc_messages": "C",
}

HBA = """\
# written by tests/helpers/pgcluster.py
local   all          all                       trust
local   replication  all                       trust
host    all          md5user    127.0.0.1/32   md5
host    all          plainuser  127.0.0.1/32   password
host    all          trustuser  127.0.0.1/32   trust
host    replication  all        127.0.0.1/32   trust
host    all          all        127.0.0.1/32   scram-sha-256
"""

# tls=ClusterTls(...): every TCP line becomes hostssl (plaintext TCP logins are refused by the server).
HBA_TLS = HBA.replace("\nhost ", "\nhostssl ")


@dataclass(frozen=True)
class ClusterTls:
    """Server certificate and key (PEM files); with `ca`, servers also demand a client certificate
    signed by it (clientcert=verify-ca) on every hostssl line."""

    cert: Path
    key: Path
    ca: Path | None = None


SETUP_SQL = """\
\\set ON_ERROR_STOP 1
CREATE ROLE app LOGIN PASSWORD 'apppass';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD 'md5pass';
RESET password_encryption;
CREATE ROLE plainuser LOGIN PASSWORD 'plainpass';
CREATE ROLE trustuser LOGIN;
GRANT pg_monitor TO app;
-- functions live in each database's catalog: grant in template1 too, so app and app_branch
-- (created from it below) inherit the grant.
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app;
\\connect template1
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app;
\\connect postgres
CREATE DATABASE app OWNER app;
CREATE DATABASE app_branch OWNER app;
"""

LOG_FILE = "server.log"


class PgError(RuntimeError):
    """A PostgreSQL command of the harness failed; the message carries its output and log tail."""


@dataclass
class PgNode:
    name: str
    port: int
    datadir: Path
    role: str  # "primary" | "standby"
    running: bool = False

    @property
    def log_path(self) -> Path:
        return self.datadir / LOG_FILE

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _as_root() -> bool:
    return os.geteuid() == 0


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PgCluster:
    """A primary named "primary" and standbys "standby1".."standbyN", started by start()."""

    def __init__(
        self,
        base_dir: Path | None = None,
        standbys: int = 1,
        *,
        settings: dict[str, str] | None = None,
        tls: ClusterTls | None = None,
    ) -> None:
        self._given_base = base_dir
        self.tls = tls
        self.base_dir: Path = Path(base_dir) if base_dir is not None else Path()
        self.n_standbys = standbys
        self.settings = dict(BASE_SETTINGS)
        self.settings.update(settings or {})
        self.nodes: list[PgNode] = []
        self._started = False

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> PgCluster:
        self._check_binaries()
        if self._given_base is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="helios-pg-"))
        else:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        atexit.register(self.stop)
        os.chmod(self.base_dir, 0o700)
        if _as_root():
            shutil.chown(self.base_dir, "postgres", "postgres")
        try:
            if self._run(["test", "-w", str(self.base_dir)], check=False).returncode != 0:
                raise PgError(f"the postgres OS user cannot write {self.base_dir} (is a parent "
                              "directory closed to it?)")
            primary = PgNode("primary", 0, self.base_dir / "primary", "primary")
            self.nodes.append(primary)
            self._initdb(primary)
            self._start_with_port(primary)
            self._psql_script(primary, SETUP_SQL)
            for i in range(1, self.n_standbys + 1):
                standby = PgNode(f"standby{i}", 0, self.base_dir / f"standby{i}", "standby")
                self.nodes.append(standby)
                self._basebackup(standby, primary)
                self._start_with_port(standby)
            self._wait_streaming([n.name for n in self.standbys], timeout=30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """pg_ctl stop -m fast every node (immediate if that fails), then remove the base dir."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        for node in self.nodes:
            if (node.datadir / "postmaster.pid").exists():
                res = self._run([self._bin("pg_ctl"), "-D", str(node.datadir), "-m", "fast",
                                 "-w", "-t", "30", "stop"], check=False)
                if res.returncode != 0:
                    self._run([self._bin("pg_ctl"), "-D", str(node.datadir), "-m", "immediate",
                               "-w", "-t", "30", "stop"], check=False)
            node.running = False
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------- access

    @property
    def primary(self) -> PgNode:
        for node in self.nodes:
            if node.role == "primary":
                return node
        raise PgError("the cluster has no primary")

    @property
    def standbys(self) -> list[PgNode]:
        return [n for n in self.nodes if n.role == "standby"]

    def node(self, name: str) -> PgNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def node_config(self) -> list[dict[str, object]]:
        """Node entries for a proxy config: [{"name", "host", "port", "role"}]."""
        return [
            {"name": n.name, "host": "127.0.0.1", "port": n.port, "role": n.role}
            for n in self.nodes
        ]

    def sql(self, node: PgNode, query: str, *, user: str = "postgres", db: str = "postgres") -> str:
        """Run `query` with psql -AtX over the unix socket; its output without the final newline."""
        res = self._run(
            [self._psql(), "-h", str(self.base_dir), "-p", str(node.port), "-U", user, "-d", db,
             "-AtX", "-v", "ON_ERROR_STOP=1", "-c", query],
            check=False, as_postgres=False,
        )
        if res.returncode != 0:
            raise PgError(f"psql on {node.name} ({query!r}) failed: {res.stderr.strip()}")
        return res.stdout.rstrip("\n")

    def dsn(self, node: PgNode, user: str = "app", password: str | None = "apppass",
            dbname: str = "app") -> str:
        """A libpq URI straight to `node` over TCP (bypassing the proxy)."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{node.port}/{dbname}"

    # ----------------------------------------------------------- node control

    def stop_node(self, node: PgNode, mode: str = "immediate") -> None:
        self._run([self._bin("pg_ctl"), "-D", str(node.datadir), "-m", mode, "-w", "-t", "60",
                   "stop"], node=node)
        node.running = False

    def start_node(self, node: PgNode) -> None:
        self._pg_ctl_start(node)

    def promote(self, node: PgNode, timeout: float = 30.0) -> None:
        """pg_ctl promote `node` and wait until it left recovery; it becomes the primary."""
        self._run([self._bin("pg_ctl"), "-D", str(node.datadir), "-w", "-t", str(int(timeout)),
                   "promote"], node=node)
        deadline = time.monotonic() + timeout
        while self.sql(node, "SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise PgError(f"{node.name} still in recovery {timeout}s after promote\n"
                              + node.log_tail())
            time.sleep(0.05)
        for other in self.nodes:
            if other.role == "primary" and other is not node:
                other.role = "standby"
        node.role = "primary"

    def follow(self, standby: PgNode, primary: PgNode | None = None) -> None:
        """Point a running standby's primary_conninfo at `primary` (default: the current one)."""
        target = primary or self.primary
        conninfo = (f"host={self.base_dir} port={target.port} user=postgres "
                    f"application_name={standby.name}")
        self.sql(standby, f"ALTER SYSTEM SET primary_conninfo = {_conf_value(conninfo)}")
        self.sql(standby, "SELECT pg_reload_conf()")

    def wait_replay(self, timeout: float = 10.0) -> None:
        """Wait until every running standby replayed the primary's current WAL LSN."""
        # synchronous_commit is off, so recent commits may sit unflushed (and unsent). A synchronous
        # commit of a transaction that wrote WAL flushes everything before it.
        primary = self.primary
        self.sql(primary, "BEGIN; SET LOCAL synchronous_commit = on; "
                          "SELECT pg_logical_emit_message(true, 'pgcluster', 'sync'); COMMIT")
        lsn = self.sql(primary, "SELECT pg_current_wal_flush_lsn()")
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            while True:
                done = self.sql(
                    node,
                    "SELECT NOT pg_is_in_recovery() OR "
                    f"coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)",
                )
                if done == "t":
                    break
                if time.monotonic() > deadline:
                    replayed = self.sql(node, "SELECT pg_last_wal_replay_lsn()")
                    raise PgError(f"{node.name} replayed {replayed}, not {lsn}, within {timeout}s\n"
                                  + node.log_tail())
                time.sleep(0.02)

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until every running standby streams from the current primary."""
        self._wait_streaming([n.name for n in self.standbys if n.running], timeout)

    # ---------------------------------------------------------------- internals

    def _check_binaries(self) -> None:
        missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup", "postgres")
                   if not os.access(self._bin(b), os.X_OK)]
        if missing:
            raise PgError(f"PostgreSQL 15 binaries missing in PG_BIN={PG_BIN}: "
                          f"{', '.join(missing)} (run `make sysdeps`)")

    @staticmethod
    def _bin(name: str) -> str:
        return os.path.join(PG_BIN, name)

    def _psql(self) -> str:
        candidate = self._bin("psql")
        return candidate if os.access(candidate, os.X_OK) else "psql"

    def _run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        as_postgres: bool = True,
        node: PgNode | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if as_postgres and _as_root():
            argv = ["runuser", "-u", "postgres", "--", *argv]
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env["LC_ALL"] = "C.UTF-8"
        try:
            res = subprocess.run(argv, cwd=self.base_dir, env=env, input=stdin, text=True,
                                 capture_output=True, timeout=120)
        except FileNotFoundError as exc:
            raise PgError(f"cannot run {argv[0]}: {exc} (run `make sysdeps`)") from exc
        if check and res.returncode != 0:
            msg = f"{' '.join(argv)} exited {res.returncode}\n{res.stdout}{res.stderr}"
            if node is not None:
                msg += f"\n--- {node.log_path} (tail) ---\n{node.log_tail()}"
            raise PgError(msg)
        return res

    def _initdb(self, node: PgNode) -> None:
        self._run([self._bin("initdb"), "-D", str(node.datadir), "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync", "--no-instructions"], node=node)
        conf = "\n# --- tests/helpers/pgcluster.py ---\n"
        conf += f"unix_socket_directories = {_conf_value(str(self.base_dir))}\n"
        for key, value in self.settings.items():
            conf += f"{key} = {_conf_value(value)}\n"
        hba = HBA
        if self.tls is not None:
            conf += self._tls_files(node)
            hba = HBA_TLS
            if self.tls.ca is not None:
                hba = "\n".join(
                    line + "   clientcert=verify-ca" if line.startswith("hostssl") and "trust" not in line else line
                    for line in hba.splitlines()
                ) + "\n"
        self._append(node.datadir / "postgresql.conf", conf)
        self._write(node.datadir / "pg_hba.conf", hba)

    def _tls_files(self, node: PgNode) -> str:
        """Copy the TLS files into the data directory (the server wants its key private); the conf lines."""
        assert self.tls is not None
        conf = "ssl = on\n"
        for setting, src, mode in (("ssl_cert_file", self.tls.cert, 0o644), ("ssl_key_file", self.tls.key, 0o600),
                                   ("ssl_ca_file", self.tls.ca, 0o644)):
            if src is None:
                continue
            dst = node.datadir / f"helios-{setting}.pem"
            self._write(dst, Path(src).read_text())
            dst.chmod(mode)
            conf += f"{setting} = {_conf_value(str(dst))}\n"
        return conf

    def _basebackup(self, standby: PgNode, primary: PgNode) -> None:
        conninfo = (f"host={self.base_dir} port={primary.port} user=postgres "
                    f"application_name={standby.name}")
        self._run([self._bin("pg_basebackup"), "-d", conninfo, "-D", str(standby.datadir),
                   "-R", "-X", "stream", "-c", "fast", "--no-sync"], node=primary)

    def _start_with_port(self, node: PgNode, attempts: int = 3) -> None:
        """Give `node` a free port and start it; retry with another port if it was taken."""
        for attempt in range(attempts):
            node.port = free_port()
            self._append(node.datadir / "postgresql.conf",
                         f"port = {node.port}\ncluster_name = {_conf_value(node.name)}\n")
            try:
                self._pg_ctl_start(node)
                return
            except PgError:
                tail = node.log_tail()
                if attempt + 1 == attempts or not (
                    "could not bind" in tail or "could not create any TCP/IP" in tail
                ):
                    raise

    def _pg_ctl_start(self, node: PgNode) -> None:
        self._run([self._bin("pg_ctl"), "-D", str(node.datadir), "-l", str(node.log_path),
                   "-w", "-t", "60", "start"], node=node)
        node.running = True

    def _psql_script(self, node: PgNode, script: str) -> None:
        res = self._run([self._psql(), "-h", str(self.base_dir), "-p", str(node.port),
                         "-U", "postgres", "-d", "postgres", "-AtXq", "-f", "-"],
                        check=False, as_postgres=False, stdin=script)
        if res.returncode != 0:
            raise PgError(f"setup SQL on {node.name} failed: {res.stderr.strip()}")

    def _wait_streaming(self, names: list[str], timeout: float) -> None:
        if not names:
            return
        wanted = ", ".join(_conf_value(n) for n in names)
        query = ("SELECT count(*) FROM pg_stat_replication "
                 f"WHERE state = 'streaming' AND application_name IN ({wanted})")
        deadline = time.monotonic() + timeout
        while int(self.sql(self.primary, query)) < len(names):
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n} ---\n{self.node(n).log_tail()}" for n in names)
                raise PgError(f"standbys {names} not streaming after {timeout}s\n{tails}")
            time.sleep(0.05)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if _as_root():
            shutil.chown(path, "postgres", "postgres")

    def _append(self, path: Path, text: str) -> None:
        with path.open("a") as f:
            f.write(text)
