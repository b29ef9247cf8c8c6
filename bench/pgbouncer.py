"""PgBouncer for the benchmark: find or install it, write its config and userlist, run it in the foreground."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
TXN_DB = "app"  # transaction-mode alias
SESSION_DB = "app_session"  # session-mode alias (pgbench -M prepared; 1.18 has no prepared statements in txn mode)


class PgBouncerError(RuntimeError):
    """PgBouncer could not be found, installed or started; the message says why."""


def find_pgbouncer() -> str | None:
    """The pgbouncer binary's path, or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for cand in CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return None


def ensure_pgbouncer() -> str:
    """The pgbouncer binary; installs Debian's package (root only) when it is missing."""
    found = find_pgbouncer()
    if found:
        return found
    if os.geteuid() != 0:
        raise PgBouncerError("pgbouncer is not installed and this is not root: run `apt-get install -y pgbouncer`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True, text=True)
    if res.returncode != 0:  # the package lists may be missing or stale on a fresh machine
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        res = subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True, text=True)
    # Debian's package starts a system service on 6432; the bench runs its own instance.
    subprocess.run(["systemctl", "stop", "pgbouncer"], capture_output=True, text=True, check=False)
    found = find_pgbouncer()
    if res.returncode != 0 or not found:
        raise PgBouncerError(f"apt-get install -y pgbouncer failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return found


def quote_userlist(value: str) -> str:
    """A userlist.txt field: double-quoted, with " doubled."""
    return '"' + value.replace('"', '""') + '"'


def userlist(users: dict[str, str]) -> str:
    """userlist.txt text with plain passwords (PgBouncer then does SCRAM both to clients and to servers)."""
    return "".join(f"{quote_userlist(u)} {quote_userlist(p)}\n" for u, p in users.items())


def render_ini(
    *,
    listen_port: int,
    server_port: int,
    workdir: Path,
    dbname: str = "app",
    pool_size: int = 20,
    session_pool_size: int = 80,
    max_client_conn: int = 2000,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> str:
    """pgbouncer.ini: `app` in transaction mode (pool_size), `app_session` in session mode, SCRAM clients;
    with tls_cert/tls_key, clients must use TLS (client_tls_sslmode = require)."""
    server = f"host=127.0.0.1 port={server_port} dbname={dbname}"
    tls = ""
    if tls_cert is not None and tls_key is not None:
        tls = (f"client_tls_sslmode = require\nclient_tls_cert_file = {tls_cert}\n"
               f"client_tls_key_file = {tls_key}\n")
    return f"""\
;; written by bench/pgbouncer.py
[databases]
{TXN_DB} = {server} pool_mode=transaction pool_size={pool_size}
{SESSION_DB} = {server} pool_mode=session pool_size={session_pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
max_db_connections = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
{tls}"""


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """A minimal reader of the generated ini (sections of key = value), for checks and tests."""
    out: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"bad ini line: {raw!r}")
        key, _, value = line.partition("=")
        section[key.strip()] = value.strip()
    return out


@dataclass
class PgBouncer:
    """One PgBouncer process in front of a server port; start() writes its files into a temp dir."""

    server_port: int
    users: dict[str, str]
    pool_size: int = 20
    session_pool_size: int = 80
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): clients must use TLS

    def start(self, timeout: float = 10.0) -> PgBouncer:
        binary = ensure_pgbouncer()
        self.workdir = Path(tempfile.mkdtemp(prefix="helios-bench-pgbouncer-"))
        as_root = os.geteuid() == 0
        self.port = _free_port()
        (self.workdir / "userlist.txt").write_text(userlist(self.users))
        cert = key = None
        if self.tls is not None:  # copied next to the config: readable by the user pgbouncer runs as
            cert, key = self.workdir / "server.crt", self.workdir / "server.key"
            shutil.copyfile(self.tls[0], cert)
            shutil.copyfile(self.tls[1], key)
            key.chmod(0o600)
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(render_ini(listen_port=self.port, server_port=self.server_port, workdir=self.workdir,
                                  pool_size=self.pool_size, session_pool_size=self.session_pool_size,
                                  tls_cert=cert, tls_key=key))
        user: str | None = None
        if as_root:  # pgbouncer refuses to run as root
            user = "postgres"
            for path in (self.workdir, *self.workdir.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        os.chmod(self.workdir, 0o700)
        log = (self.workdir / "stdout.log").open("ab")
        try:
            self.proc = subprocess.Popen([binary, str(ini)], user=user, group=user, extra_groups=[] if user else None,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                out = self.output()
                self.stop()
                raise PgBouncerError(f"pgbouncer exited with {self.proc.returncode}:\n{out}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    out = self.output()
                    self.stop()
                    raise PgBouncerError(f"pgbouncer not listening on {self.port} after {timeout}s:\n{out}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise PgBouncerError("pgbouncer not started")
        return self.proc.pid

    def output(self) -> str:
        if self.workdir is None:
            return ""
        parts = []
        for name in ("stdout.log", "pgbouncer.log"):
            with contextlib.suppress(OSError):
                parts.append((self.workdir / name).read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # 1.18: SIGTERM = immediate shutdown, SIGINT = safe
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
