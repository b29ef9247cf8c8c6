"""Process lifecycle: builds every component from one Config, serves, reloads on SIGHUP, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from heliosproxy.admin import pgbouncer
from heliosproxy.admin.console import AdminConsole
from heliosproxy.admin.http import AdminHttp
from heliosproxy.backends.credentials import CredentialStore
from heliosproxy.backends.failover import FailoverManager
from heliosproxy.backends.health import HealthMonitor
from heliosproxy.backends.registry import Registry
from heliosproxy.backends.tls import reload_certificates
from heliosproxy.config.load import load_config
from heliosproxy.config.schema import Config
from heliosproxy.errors import ConfigError
from heliosproxy.listener import start_listener, start_unix_listener
from heliosproxy.logsetup import setup_logging
from heliosproxy.metrics import ProxyCollector
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.pool.manager import PoolManager
from heliosproxy.protocol.tls import client_tls_context
from heliosproxy.routing.catalog import Catalog
from heliosproxy.routing.consistency import ReadPlanner
from heliosproxy.routing.router import Router
from heliosproxy.session import pidmap
from heliosproxy.session.context import ProxyContext
from heliosproxy.session.pgcompat import Janitor
from heliosproxy.session.resultcache import CacheService
from heliosproxy.sql.classify import Classifier
from heliosproxy.traffic.control import TrafficControl
from heliosproxy.traffic.gates import GateControl
from heliosproxy.workers import WorkerLink, supervise

log = logging.getLogger("heliosproxy.server")


async def _bounded(name: str, stop: Coroutine[Any, Any, Any], timeout: float = 5.0) -> None:
    """One stage of shutdown, given `timeout`: a stage that does not finish is logged and left behind (the
    process is exiting), never waited for forever."""
    task = asyncio.ensure_future(stop)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        log.warning("shutdown: stopping %s took over %gs; going on without it", name, timeout)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: stopping %s failed: %r", name, task.exception())


class Server:
    """Owns the components of one worker process and their start, reload and stop."""

    def __init__(self, config: Config, worker_id: int = 0, link: WorkerLink | None = None):
        self.config = config
        self.worker_id = worker_id
        self.link = link  # set in multi-worker mode: cancel forwarding and snapshots of all workers
        self.reuse_port = link is not None
        registry = Registry(config)
        pools = PoolManager(config, CredentialStore(config, registry))
        self.plugins = PluginManager(config.plugins, on_event=self._plugin_event)
        router = Router(config, registry, pools.active_on)
        self.reads = ReadPlanner(config, router, Catalog(config, registry, pools))
        self.ctx = ProxyContext(
            config=config,
            registry=registry,
            pools=pools,
            router=router,
            classifier=Classifier(config.routing.classify_cache_size, config.routing.write_functions),
            plugins=self.plugins,
            reads=self.reads,
            worker_id=worker_id,
        )
        self.ctx.adopt(config)
        self.listener: asyncio.Server | None = None
        self.unix_listener: asyncio.Server | None = None
        self.shutdown_mode = "drain"  # SIGTERM/SIGINT; the console's SHUTDOWN picks PgBouncer's modes
        self.stopping = asyncio.Event()
        self.immediate = False
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: str | None = None
        self.extras: list[Any] = []  # admin/health/metrics components with start()/stop()/configure()
        # Operations: health checks feed the registry, failover follows promotions, admin and metrics read.
        self.health = HealthMonitor(config, registry)
        self.health.on_down.append(pools.drain_node)
        self.reads.request_sample = self.health.request_sample
        self.failover = FailoverManager(config, registry, self.health, pools.drain_node)
        self.admin_console = AdminConsole(self)
        self.ctx.admin = self.admin_console
        self.metrics = ProxyCollector(self, self.failover, self.health)
        self.admin_http = AdminHttp(self, self.metrics)
        self.extras.extend([self.health, self.failover, self.metrics, self.reads, Janitor(self.ctx)])
        self.traffic = TrafficControl(self.ctx, link)  # mirror and analytics (issue 15)
        # Rate limits (one table for all workers, in the supervisor's run directory) and circuit breakers.
        self.gates = GateControl(self.ctx, self.health, link.rundir if link is not None else None, worker_id,
                                  link.shared_lock if link is not None else None)
        self.extras.append(self.gates)
        self.extras.append(self.traffic)
        self.cache_service = CacheService(self.ctx, worker_id)  # result cache (cache:), SHOW CACHE
        self.extras.append(self.cache_service)
        if worker_id == 0:
            # One HTTP admin for the process group (workers share the client port, not this one).
            self.extras.append(self.admin_http)

    def _plugin_event(self, name: str, data: dict[str, Any]) -> None:
        log.debug("plugin event %s %s", name, data)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.config.plugins.enabled and self.config.plugins.dir:
            self.plugins.load_all()
        await self.plugins.start()
        self.ctx.pools.start()
        if self.link is not None:
            link = self.link
            link.snapshot = self.snapshot
            link.on_cancel = self._cancel_from_peer
            link.on_close_idle = self.ctx.pools.close_idle
            link.on_admin = self.admin_console.answer_peer
            self.ctx.close_idle_elsewhere = link.close_idle_everywhere
            link.handlers[b"M"] = lambda: self.metrics.exposition()[0]
            link.handlers[b"E"] = lambda: json.dumps(self.plugins.events.raw()).encode()  # /api/anomalies
            self.ctx.on_cancel_miss = link.forward_cancel
            link.on_pid = functools.partial(pidmap.serve, self.ctx)
            self.ctx.ask_pid = link.ask_pid
            await link.start()
        for extra in self.extras:
            await extra.start()
        self.ctx.tls_context = client_tls_context(self.config.tls)  # OSError: cannot start
        try:
            self.listener = await start_listener(self.ctx, reuse_port=self.reuse_port)
        except OSError as exc:
            raise OSError(exc.errno, f"listen {self.config.listen}: {exc.strerror or exc}") from None
        if self.config.listen_unix and self.worker_id == 0:
            try:
                self.unix_listener = await start_unix_listener(self.ctx, self.config.listen_unix)
            except OSError as exc:
                raise OSError(exc.errno, f"listen_unix {self.config.listen_unix}: {exc.strerror or exc}") from None

    def _cancel_from_peer(self, pid: int, key: int) -> bool:
        client = self.ctx.cancel_keys.get((pid, key))
        if client is None:
            return False
        client.cancel_running()
        return True

    def snapshot(self) -> dict[str, Any]:
        """This worker's numbers, as plain data (aggregated across workers by worker 0)."""
        ctx = self.ctx
        c = ctx.counters
        pgb_clients = [{k: v for k, v in r.items()} for r in pgbouncer.client_rows(ctx)]
        return {
            "worker": self.worker_id,
            "clients": [cl.describe() for cl in ctx.clients],
            "pools": [p.snapshot() for p in ctx.pools.pools.values()],
            "counters": {
                "clients_total": c.clients_total,
                "clients_refused": c.clients_refused,
                "login_failures": c.login_failures,
                "protocol_errors": c.protocol_errors,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "queries": [[*k, v] for k, v in c.queries.items()],
            },
            "queries": {
                fp: [q.normalized, q.calls, q.total_us, q.errors] for fp, q in ctx.query_stats.items()
            },
            "plugins": self.plugins.stats(),
            "pgb_clients": pgb_clients,
            "pgb_pools": pgbouncer.pool_rows(ctx, pgb_clients),
            "cache": self.cache_service.row(),  # SHOW CACHE (result cache)
        }

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        await self.start()
        for sig, handler in (
            (signal.SIGTERM, self._on_sigterm),
            (signal.SIGINT, self._on_sigint),
            (signal.SIGHUP, self._on_sighup),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        await self.stopping.wait()
        await self.shutdown()
        return 0

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: draining clients (up to %ss)", self.config.shutdown_timeout)
        self.stopping.set()

    def _on_sigint(self) -> None:
        if self.stopping.is_set():
            log.info("second SIGINT: closing everything now")
            self.immediate = True
        else:
            log.info("SIGINT: draining clients (Ctrl-C again to stop at once)")
            self.stopping.set()

    def _on_sighup(self) -> None:
        self.reload(requested_by="SIGHUP")

    def request_shutdown(self, mode: str = "drain") -> None:
        """mode: drain (SIGTERM), immediate (SHUTDOWN), wait_for_servers, wait_for_clients (PgBouncer's)."""
        self.shutdown_mode = mode
        if mode == "immediate":
            self.immediate = True
        self.stopping.set()

    async def shutdown(self) -> None:
        ctx = self.ctx
        ctx.shutting_down = True
        if self.listener is not None:
            self.listener.close()
        if self.unix_listener is not None:
            self.unix_listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.listen_unix or "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        if self.shutdown_mode == "wait_for_clients":
            deadline = float("inf")  # PgBouncer's: exit once every client has disconnected by itself
        if self.shutdown_mode == "wait_for_servers":
            ctx.paused.add("*")  # like PAUSE: no new server work; waiting clients are closed now
        while ctx.clients and not self.immediate and loop.time() < deadline:
            for client in list(ctx.clients):
                if self.shutdown_mode == "wait_for_clients" and not client.admin:
                    continue
                idle = client.backend is None and client.pending == 0
                if idle and (client.stalled is None or self.shutdown_mode == "wait_for_servers"):
                    if self.shutdown_mode == "wait_for_servers":
                        client.close("08P01", "server shutting down")
                    else:
                        client.close()
            if not ctx.clients:
                break
            await asyncio.sleep(0.05)
        for client in list(ctx.clients):
            client.close()
        stages: list[tuple[str, Any]] = [(type(extra).__name__, extra.stop) for extra in reversed(self.extras)]
        stages += [("plugins", self.plugins.stop), ("pools", ctx.pools.stop)]
        if self.link is not None:
            stages.append(("worker link", self.link.stop))
        for name, stop in stages:
            await _bounded(name, stop())
        log.info("stopped")

    # ------------------------------------------------------------------ reload
    def reload(self, requested_by: str = "unknown") -> tuple[bool, str]:
        """Validate the config file whole, then apply it; a bad file leaves the old config running.

        Logged once (event `reload`) with who asked (`requested_by`) and the outcome.
        """
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            self.reloads_failed += 1
            self.last_reload_error = str(exc)
            log.error("%s reload: %s", requested_by, exc,
                      extra={"event": "reload", "requested_by": requested_by, "outcome": "failed", "error": str(exc)})
            return False, str(exc)
        try:
            tls_context = client_tls_context(new.tls)  # certificate and key are read again on every reload
        except OSError as exc:
            self.reloads_failed += 1
            self.last_reload_error = f"{new.source}: {exc.strerror or exc}"
            log.error("%s reload: %s", requested_by, self.last_reload_error,
                      extra={"event": "reload", "requested_by": requested_by, "outcome": "failed",
                             "error": self.last_reload_error})
            return False, self.last_reload_error
        reload_certificates()
        self.ctx.tls_context = tls_context
        self.apply(new)
        self.reloads_ok += 1
        self.last_reload_error = None
        message = f"reloaded {new.source}"
        log.info("%s reload: %s", requested_by, message,
                 extra={"event": "reload", "requested_by": requested_by, "outcome": "ok", "file": new.source})
        return True, message

    def apply(self, new: Config) -> None:
        old = self.config
        self.config = new
        ctx = self.ctx
        ctx.adopt(new)
        ctx.registry.configure(new)
        ctx.pools.configure(new)
        ctx.router.configure(new)
        if (old.routing.write_functions, old.routing.classify_cache_size) != (
            new.routing.write_functions,
            new.routing.classify_cache_size,
        ):
            ctx.classifier = Classifier(new.routing.classify_cache_size, new.routing.write_functions)
        if new.log != old.log:
            setup_logging(new.log, self.worker_id if self.link is not None else None)  # workers keep `worker`
        for extra in self.extras:
            if hasattr(extra, "configure"):
                extra.configure(new)


def run(config: Config) -> int:
    """Entry point of `heliosproxy run`: one worker in this process, or a supervisor of `workers` processes."""
    if config.workers > 1:
        setup_logging(config.log)
        return supervise(config, _run_worker)
    return _run_worker(config, 0, None)


def _run_worker(config: Config, worker_id: int, link: WorkerLink | None) -> int:
    setup_logging(config.log, worker_id if link is not None else None)
    import uvloop

    async def main() -> int:
        server = Server(config, worker_id, link)
        try:
            return await server.serve()
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror or exc)
            return 1

    return int(uvloop.run(main()))
