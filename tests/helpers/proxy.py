"""ProxyProcess: runs `python -m heliosproxy run --config FILE` as a subprocess for tests."""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

from . import REPO_ROOT, free_port, wait_for_tcp

if TYPE_CHECKING:
    from .pgcluster import PgCluster


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text. JSON is YAML, so json.dumps keeps yaml out of the test helpers."""
    return json.dumps(config, indent=2, default=str) + "\n"


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: nested dicts merge, anything else (lists too) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ProxyProcess:
    """One proxy subprocess; `config` has the YAML keys (heliosproxy/config/schema.py names)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        start: bool = True,
        start_timeout: float = 15.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="helios-proxy-"))
        self.config_path = self.tmpdir / "heliosproxy.yaml"
        self.log_path = self.tmpdir / "proxy.log"
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self.cwd = cwd or REPO_ROOT  # the checkout whose heliosproxy package runs (bench --baseline: another)
        self.config = self._fill(dict(config))
        self._write(self.config)
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_output: str | None = None
        if start:
            self.start()

    # ------------------------------------------------------------------ config

    def _fill(self, config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(config)
        if "listen" not in config:
            config["listen"] = f"127.0.0.1:{free_port()}"
        if "admin" in config and config["admin"] is None:
            return config  # an explicit `admin: null` is kept as is
        admin = dict(config.get("admin") or {})
        admin.setdefault("listen", f"127.0.0.1:{free_port()}")
        config["admin"] = admin
        return config

    def _write(self, config: Mapping[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(dump_config(config))
        os.replace(tmp, self.config_path)

    def rewrite_config(self, config: Mapping[str, Any]) -> None:
        """Replace the config file (for reload tests); listen/admin.listen are kept unless given."""
        new = copy.deepcopy(dict(config))
        new.setdefault("listen", self.config["listen"])
        admin_old = self.config.get("admin")
        if isinstance(admin_old, Mapping) and "admin" not in config:
            new["admin"] = copy.deepcopy(dict(admin_old))
        elif isinstance(admin_old, Mapping) and isinstance(new.get("admin"), Mapping):
            new["admin"] = dict(new["admin"])
            new["admin"].setdefault("listen", admin_old.get("listen"))
        self.config = new
        self._write(new)

    @property
    def host(self) -> str:
        return _hostport(str(self.config["listen"]))[0]

    @property
    def port(self) -> int:
        return _hostport(str(self.config["listen"]))[1]

    @property
    def admin_port(self) -> int | None:
        admin = self.config.get("admin")
        if not isinstance(admin, Mapping) or not admin.get("listen"):
            return None
        return _hostport(str(admin["listen"]))[1]

    @property
    def admin_url(self) -> str:
        """Base URL of the HTTP admin API, e.g. http://127.0.0.1:PORT."""
        if self.admin_port is None:
            raise RuntimeError("this proxy has no admin.listen")
        return f"http://127.0.0.1:{self.admin_port}"

    def dsn(self, user: str = "app", password: str | None = "apppass", dbname: str = "app",
            **params: str | int) -> str:
        """A libpq URI to the proxy, e.g. postgresql://app:apppass@127.0.0.1:PORT/app?sslmode=disable."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        query = {"sslmode": "disable", **{k: str(v) for k, v in params.items()}}
        return (f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
                f"?{urlencode(query, quote_via=quote)}")

    # ---------------------------------------------------------------- process

    def start(self) -> ProxyProcess:
        """Start the proxy and wait until its port accepts TCP; raise with its output if not."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("proxy already running")
        if self._final_output is not None:
            raise RuntimeError("proxy closed")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "heliosproxy", "run", "--config", str(self.config_path)],
                cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # its workers are killed with it
            )
        finally:
            log.close()
        atexit.register(self._kill)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"proxy exited with {self.proc.returncode} before listening on "
                    f"{self.config['listen']}\n--- config ---\n{dump_config(self.config)}"
                    f"--- output ---\n{self.output()}"
                )
            if wait_for_tcp(self.host, self.port, timeout=0.1):
                # with workers, another worker may listen before worker 0 (the HTTP admin) has started
                workers = self.config.get("workers", 1)
                if self.admin_port is None or workers == 1 or wait_for_tcp(
                    "127.0.0.1", self.admin_port, timeout=max(0.1, deadline - time.monotonic())
                ):
                    return self
            if time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(
                    f"proxy not listening on {self.config['listen']} after {self.start_timeout}s"
                    f"\n--- output ---\n{out}"
                )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("proxy not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the proxy wrote to stdout and stderr so far."""
        if self._final_output is not None:
            return self._final_output
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_output(self, text: str, timeout: float = 5.0) -> str:
        """Wait until `text` appears in the output; return the output (raise on timeout)."""
        deadline = time.monotonic() + timeout
        while text not in (out := self.output()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in proxy output after {timeout}s:\n{out}")
            time.sleep(0.05)
        return out

    def signal(self, sig: int) -> None:
        if self.proc is None:
            raise RuntimeError("proxy not started")
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit code."""
        if self.proc is None:
            raise RuntimeError("proxy not started")
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; the exit code. start() may be called again."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                self.proc.wait()
        atexit.unregister(self._kill)
        return self.proc.returncode

    def close(self) -> None:
        """stop() and remove the temp dir (output() stays readable)."""
        self.stop()
        if self._final_output is None:
            self._final_output = self.output()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if "Traceback (most recent call last)" in self._final_output:
            # Bad input never crashes the proxy: every error must end as a clear message, not a traceback.
            raise AssertionError("the proxy logged a traceback:\n" + self._final_output[-4000:])

    def _kill(self) -> None:
        """SIGKILL the proxy and every process of its session (workers a hung supervisor left)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()

    def __enter__(self) -> ProxyProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# The backend users of tests/helpers/pgcluster.py with their passwords. trustuser logs in to the
# backend with `trust`; the proxy still needs a password to authenticate the client by SCRAM/md5.
TEST_USERS: tuple[dict[str, str], ...] = (
    {"name": "app", "password": "apppass"},
    {"name": "md5user", "password": "md5pass"},
    {"name": "plainuser", "password": "plainpass"},
    {"name": "trustuser", "password": "trustpass"},
)


def base_config(nodes: list[dict[str, object]]) -> dict[str, Any]:
    """A proxy config for a PgCluster's node_config(): the test users, SCRAM client auth."""
    return {
        "nodes": copy.deepcopy(nodes),
        "users": [dict(u) for u in TEST_USERS],
        "auth": {"method": "scram-sha-256"},
    }


class ProxyFactory(Protocol):
    """The type of the `proxy_factory` fixture (tests/conftest.py)."""

    def __call__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        cluster: PgCluster | None = None,
        start: bool = True,
        env: Mapping[str, str] | None = None,
        **top_level: Any,
    ) -> ProxyProcess: ...
