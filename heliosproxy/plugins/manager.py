"""PluginManager: loads, orders, calls, contains, disables and hot-reloads WASM plugins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from heliosproxy.config.schema import FailMode, PluginsConfig
from heliosproxy.plugins import signing
from heliosproxy.plugins.events import EventLog, parse_event
from heliosproxy.plugins.hooks import (
    AUTH_DEFER,
    CONTINUE,
    ROUTE_DEFAULT,
    AuthDefer,
    AuthDenied,
    AuthResult,
    Block,
    Continue,
    HookContext,
    HookType,
    PluginError,
    PluginLoadError,
    PostQueryOutcome,
    PreQueryResult,
    QueryContext,
    Rewrite,
    RouteBlock,
    RouteDefault,
    RoutePrimary,
    RouteResult,
    RouteStandby,
    auth_outcome_json,
    auth_request_json,
    parse_auth,
    parse_pre_query,
    parse_route,
)
from heliosproxy.plugins.kv import KvStore
from heliosproxy.plugins.loader import check_plugin
from heliosproxy.plugins.manifest import REWRITE_MULTI, Manifest
from heliosproxy.plugins.metrics import PluginMetrics
from heliosproxy.plugins.reload import DirectoryWatcher, ReloadKind
from heliosproxy.plugins.wasm import HostBindings, WasmInstance, WasmRuntime
from heliosproxy.sql.classify import count_statements

log = logging.getLogger("heliosproxy.plugins")
_R = TypeVar("_R")

EventSink = Callable[[str, dict[str, Any]], None]
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
MAX_OBSERVER_QUEUE = 10_000
EVENT_LOG_PER_SECOND = 20  # plugin events logged per plugin and second (all are kept and counted)
_PRE_QUERY = HookType.PRE_QUERY.value  # plain str keys: no enum attribute lookup per statement
_ROUTE = HookType.ROUTE.value
_CALL_HOOKS = (
    HookType.PRE_QUERY,
    HookType.ROUTE,
    HookType.AUTHENTICATE,
    HookType.POST_QUERY,
    HookType.ON_CONNECT,
    HookType.ON_DISCONNECT,
)


@dataclass(slots=True)
class HookStats:
    calls: int = 0
    errors: int = 0
    total_us: float = 0.0


@dataclass(slots=True)
class LoadedPlugin:
    name: str
    manifest: Manifest
    instance: WasmInstance
    signed_by: str | None
    path: Path
    loaded_at: float = field(default_factory=time.time)
    stats: dict[str, HookStats] = field(default_factory=dict)
    metrics: PluginMetrics = field(default_factory=lambda: PluginMetrics())
    consecutive_errors: int = 0
    disabled: bool = False
    last_error: str | None = None
    misroutes: int = 0  # route answers that sent a write to a standby (followed to the primary instead)

    @property
    def closed(self) -> bool:
        return self.manifest.fail_mode is FailMode.CLOSED


class PluginManager:
    """Runs the plugin chain for each hook; all calls happen on the event-loop thread."""

    def __init__(self, cfg: PluginsConfig, on_event: EventSink | None = None):
        self.cfg = cfg
        self.on_event = on_event
        self.runtime = WasmRuntime(tick_ms=max(1.0, min(5.0, cfg.limits.timeout_ms / 10)))
        self.kv = KvStore(cfg.kv_max_keys, cfg.kv_max_value_bytes)
        self.plugins: dict[str, LoadedPlugin] = {}
        self._metrics: dict[str, PluginMetrics] = {}  # by plugin name: survives a hot reload
        self.last_refusal: dict[str, str] = {}  # why each plugin's last refused version was refused
        self._chains: dict[HookType, tuple[LoadedPlugin, ...]] = {}
        # The per-statement chains with each plugin's bound fast call (no per-call lookups).
        self._pre_query_calls: tuple[tuple[LoadedPlugin, Callable[[bytes], bytes | None]], ...] = ()
        self._route_calls: tuple[tuple[LoadedPlugin, Callable[[bytes], bytes | None]], ...] = ()
        # Bumped whenever the set of running plugins changes (load, reload, disable, enable):
        # verdicts cached per prepared statement are only valid for the generation they came from.
        self.generation = 0
        self.has_pre_query = False
        self.has_route = False
        self.has_post_query = False
        self.has_query_hooks = False  # any of the three above: one check on the data path when none is loaded
        self.has_auth = False
        self.has_connect = False
        self.has_post_auth = False
        self.events = EventLog(cfg.max_events)  # helios.emit_event, served at /api/anomalies
        self._event_log_second: dict[str, tuple[int, int]] = {}  # plugin -> (second, events logged in it)
        self._observers: deque[tuple[HookType, bytes]] = deque()
        self.observer_dropped = 0
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.directory = Path(cfg.dir) if cfg.dir else None
        self.watcher = DirectoryWatcher(self.directory, cfg.debounce) if self.directory is not None else None

    # -- events / logging -------------------------------------------------------------------

    def _event(self, event: str, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, data)
            except Exception:
                log.exception("plugin event sink failed for %s", event)

    # -- loading ------------------------------------------------------------------------------

    def load_all(self) -> None:
        """Load every NAME.wasm in cfg.dir; refuses a bad plugin with a log line, never raises."""
        if not self.cfg.enabled or self.directory is None:
            return
        if not self.directory.is_dir():
            log.warning("plugins.dir %s is not a directory; no plugins loaded", self.directory)
            return
        loaded: dict[str, LoadedPlugin] = {}
        for wasm_path in sorted(self.directory.glob("*.wasm")):
            if len(loaded) >= self.cfg.max_plugins:
                self._refuse(wasm_path.stem, f"plugins.max_plugins ({self.cfg.max_plugins}) reached")
                continue
            plugin = self._try_load(wasm_path)
            if plugin is not None:
                loaded[plugin.name] = plugin
        self.plugins = loaded
        self._rebuild()
        if self.watcher is not None:
            self.watcher.prime()

    def _refuse(self, name: str, reason: str, *, signature: bool = False) -> None:
        self.last_refusal[name] = reason
        log.error("plugin %s refused: %s", name, reason,
                  extra={"event": "plugin_refused", "plugin": name, "reason": reason})
        self._event(
            "plugin_signature_refused" if signature else "plugin_load_failed",
            plugin=name,
            reason=reason,
        )

    def _try_load(self, wasm_path: Path) -> LoadedPlugin | None:
        try:
            plugin = self.load_plugin(wasm_path)
        except signing.SignatureError as e:
            self._refuse(wasm_path.stem, f"signature: {e}", signature=True)
            return None
        except PluginLoadError as e:
            self._refuse(wasm_path.stem, str(e))
            return None
        except Exception as e:  # never let one plugin take the proxy down
            log.exception("plugin %s refused: unexpected error", wasm_path.stem)
            self._event("plugin_load_failed", plugin=wasm_path.stem, reason=repr(e))
            return None
        log.info(
            "plugin %s %s loaded (priority %d, hooks %s, fail_mode %s%s)",
            plugin.name,
            plugin.manifest.version,
            plugin.manifest.priority,
            ",".join(h.value for h in plugin.manifest.hooks),
            plugin.manifest.fail_mode.value,
            f", signed by {plugin.signed_by}" if plugin.signed_by else "",
        )
        self._event("plugin_loaded", plugin=plugin.name, version=plugin.manifest.version)
        return plugin

    def load_plugin(self, wasm_path: Path) -> LoadedPlugin:
        """Read, verify, compile, instantiate and init one plugin; raises on any problem."""
        name = wasm_path.stem
        store = self._metrics.get(name) or PluginMetrics()

        def host_for(manifest: Manifest) -> HostBindings:
            return HostBindings(
                log=lambda level, msg: log.log(
                    _LOG_LEVELS.get(level, logging.INFO), "plugin %s: %s", name, msg,
                    extra={"event": "plugin_log", "plugin": name, "text": msg},
                ),
                metric_add=lambda metric, value: self._metric(name, store, "add", metric, "", value),
                kv=self.kv.namespace(name) if "kv" in manifest.permissions else None,
                metric_record=lambda kind, metric, labels, value: self._metric(
                    name, store, kind, metric, labels, value
                ),
                event=lambda raw: self._plugin_event(name, store, raw),
            )

        checked = check_plugin(wasm_path, self.cfg, self.runtime, host_for)
        self._metrics[name] = store  # the same series across hot reloads of this plugin
        return LoadedPlugin(
            checked.name, checked.manifest, checked.instance, checked.signed_by, wasm_path, metrics=store
        )

    def _metric(self, name: str, store: PluginMetrics, kind: str, metric: str, labels: str, value: float) -> None:
        problem = store.record(kind, metric, labels, value)
        if problem is not None:
            if store.dropped == 1:  # once per plugin: a loop would flood the log
                log.warning("plugin %s: metric %r dropped: %s", name, metric, problem,
                            extra={"event": "plugin_metric_dropped", "plugin": name, "metric": metric,
                                   "reason": problem})
            return
        self._event("plugin_metric", plugin=name, metric=metric, value=value)

    def _plugin_event(self, name: str, store: PluginMetrics, raw: bytes) -> int:
        """helios.emit_event: keep the event (bounded list) and count it in the plugin's metrics
        (counter `events{kind, severity}`); -1 when the document is refused."""
        try:
            event = parse_event(name, raw)
        except ValueError as e:
            store.events_refused += 1
            if store.events_refused == 1:  # once per plugin: a loop would flood the log
                log.warning("plugin %s: event refused: %s", name, e,
                            extra={"event": "plugin_event_refused", "plugin": name})
            return -1
        self.events.add(event)
        self._metric(name, store, "add", "events", f"kind={event['kind']},severity={event['severity']}", 1.0)
        second = int(event["ts"])
        if self._event_log_second.get(name, (0, 0))[0] != second:
            self._event_log_second[name] = (second, 0)
        logged = self._event_log_second[name][1]
        if logged >= EVENT_LOG_PER_SECOND:  # the list and the metrics have them all; the log is spared
            return 0
        self._event_log_second[name] = (second, logged + 1)
        log.info("plugin %s: %s event %s (tenant %s): %s", name, event["severity"], event["kind"],
                 event["tenant"] or "-", event["detail"][:200],
                 extra={"event": "plugin_anomaly", "plugin": name})
        return 0

    def _rebuild(self) -> None:
        """Recompute the per-hook chains (priority, then name) and swap them in at once."""
        ordered = sorted(self.plugins.values(), key=lambda p: (p.manifest.priority, p.name))
        chains = {hook: tuple(p for p in ordered if hook in p.manifest.hooks and not p.disabled) for hook in HookType}
        self._chains = chains
        self._pre_query_calls = tuple((p, p.instance.callers[_PRE_QUERY]) for p in chains[HookType.PRE_QUERY])
        self._route_calls = tuple((p, p.instance.callers[_ROUTE]) for p in chains[HookType.ROUTE])
        self.generation += 1
        self.has_pre_query = bool(chains[HookType.PRE_QUERY])
        self.has_route = bool(chains[HookType.ROUTE])
        self.has_post_query = bool(chains[HookType.POST_QUERY])
        self.has_query_hooks = self.has_pre_query or self.has_route or self.has_post_query
        self.has_auth = bool(chains[HookType.AUTHENTICATE])
        self.has_connect = bool(chains[HookType.ON_CONNECT] or chains[HookType.ON_DISCONNECT])
        self.has_post_auth = bool(chains[HookType.POST_AUTH])

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """An admin's disable/enable of a loaded plugin (enable also clears its error streak); False if unknown."""
        p = self.plugins.get(name)
        if p is None:
            return False
        if p.disabled != disabled:
            p.disabled = disabled
            if not disabled:
                p.consecutive_errors = 0
            self._rebuild()
            log.info("plugin %s %s by an admin", name, "disabled" if disabled else "enabled")
            self._event("plugin_disabled" if disabled else "plugin_enabled", plugin=name, by="admin")
        return True

    def chain(self, hook: HookType) -> tuple[LoadedPlugin, ...]:
        return self._chains.get(hook, ())

    # -- calling ------------------------------------------------------------------------------

    def _run(self, p: LoadedPlugin, hook: HookType, data: bytes, parse: Callable[[bytes | None], _R]) -> _R:
        """One hook call and the parse of its answer, with accounting.

        Any failure (of the call or of the answer) is counted, logged and re-raised.
        """
        # HookType is a StrEnum: it hashes and compares as its value, so it looks up the
        # str-keyed dicts directly (`.value` is a descriptor call, measurable per statement).
        st = p.stats.get(hook)
        if st is None:
            st = p.stats[hook.value] = HookStats()
        t0 = time.perf_counter()
        try:
            result = parse(p.instance.callers[hook](data))
        except PluginError as e:
            st.calls += 1
            st.total_us += (time.perf_counter() - t0) * 1e6
            self._record_error(p, hook, st, e)
            raise
        st.calls += 1
        st.total_us += (time.perf_counter() - t0) * 1e6
        p.consecutive_errors = 0
        return result

    def _record_error(self, p: LoadedPlugin, hook: HookType, st: HookStats, e: PluginError) -> None:
        st.errors += 1
        p.consecutive_errors += 1
        p.last_error = str(e)
        log.warning("plugin %s %s failed (%s): %s", p.name, hook.value, e.kind, e.message)
        self._event("plugin_error", plugin=p.name, hook=hook.value, kind=e.kind, message=e.message)
        if not p.disabled and p.consecutive_errors >= self.cfg.disable_after:
            p.disabled = True
            log.error(
                "plugin %s disabled after %d consecutive errors (until reload); last: %s",
                p.name,
                p.consecutive_errors,
                e,
            )
            self._event("plugin_disabled", plugin=p.name, errors=p.consecutive_errors)
            self._rebuild()

    def pre_query(self, ctx: QueryContext) -> PreQueryResult:
        """Run the pre_query chain: the first non-Continue result wins.

        `_run` inlined: this runs once per statement (the usual answer, 0, is parsed by no call)."""
        data = ctx.to_json()
        clock = time.perf_counter
        for p, fast in self._pre_query_calls:
            st = p.stats.get(_PRE_QUERY)
            if st is None:
                st = p.stats[_PRE_QUERY] = HookStats()
            t0 = clock()
            try:
                raw = fast(data)
                result = CONTINUE if raw is None else parse_pre_query(raw)
            except PluginError as e:
                st.calls += 1
                st.total_us += (clock() - t0) * 1e6
                self._record_error(p, HookType.PRE_QUERY, st, e)
                if p.closed:
                    return Block(f"plugin {p.name} failed: {e.kind}")
                continue
            st.calls += 1
            st.total_us += (clock() - t0) * 1e6
            p.consecutive_errors = 0
            if result is CONTINUE:
                continue
            if isinstance(result, Rewrite) and not self._rewrite_allowed(p, result):
                if p.closed:
                    return Block(f"plugin {p.name} failed: rewrite")
                continue
            if not isinstance(result, Continue):
                return result
        return CONTINUE

    def _rewrite_allowed(self, p: LoadedPlugin, result: Rewrite) -> bool:
        """A rewrite is one statement unless the manifest grants rewrite_multi_statement.

        A violation counts as a failure of the plugin's pre_query (fail_mode applies)."""
        if REWRITE_MULTI in p.manifest.permissions:
            return True
        n = count_statements(result.query)
        if n == 1:
            return True
        st = p.stats.get(HookType.PRE_QUERY)
        if st is None:
            st = p.stats[HookType.PRE_QUERY.value] = HookStats()
        what = "several statements" if n > 1 else "text that does not parse as one statement"
        self._record_error(
            p,
            HookType.PRE_QUERY,
            st,
            PluginError("rewrite", f"rewrite to {what} without the permission {REWRITE_MULTI}"),
        )
        return False

    def route(self, ctx: QueryContext) -> RouteResult:
        """Run the route chain: the first non-default result wins."""
        data = ctx.to_json()
        clock = time.perf_counter
        for p, fast in self._route_calls:
            st = p.stats.get(_ROUTE)
            if st is None:
                st = p.stats[_ROUTE] = HookStats()
            t0 = clock()
            try:
                raw = fast(data)
                result = ROUTE_DEFAULT if raw is None else parse_route(raw)
            except PluginError as e:
                st.calls += 1
                st.total_us += (clock() - t0) * 1e6
                self._record_error(p, HookType.ROUTE, st, e)
                if p.closed:
                    return RouteBlock(f"plugin {p.name} failed: {e.kind}")
                continue
            st.calls += 1
            st.total_us += (clock() - t0) * 1e6
            p.consecutive_errors = 0
            if isinstance(result, RouteStandby) and not ctx.is_read_only:
                # A write never goes to a standby, whatever a plugin says: it goes to the primary.
                p.misroutes += 1
                if p.misroutes == 1:
                    log.warning("plugin %s routed a write to a standby; sent to the primary instead", p.name)
                return RoutePrimary()
            if not isinstance(result, RouteDefault):
                return result
        return ROUTE_DEFAULT

    def authenticate(
        self, hook: HookContext, user: str, database: str, client_addr: str, password: str | None
    ) -> AuthResult:
        """Run the authenticate chain: the first non-Defer result wins (fail closed = Denied)."""
        chain = self._chains[HookType.AUTHENTICATE]
        if not chain:
            return AUTH_DEFER
        data = auth_request_json(hook, user, database, client_addr, password)
        for p in chain:
            try:
                result = self._run(p, HookType.AUTHENTICATE, data, parse_auth)
            except PluginError as e:
                if p.closed:
                    return AuthDenied(f"plugin {p.name} failed: {e.kind}")
                continue
            if not isinstance(result, AuthDefer):
                return result
        return AUTH_DEFER

    # -- observers (post_query, on_connect, on_disconnect): queued, run off the hot path ------

    def _enqueue(self, hook: HookType, data: bytes) -> None:
        if len(self._observers) >= MAX_OBSERVER_QUEUE:
            self.observer_dropped += 1
            return
        self._observers.append((hook, data))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def post_query(self, ctx: QueryContext, outcome: PostQueryOutcome) -> None:
        if self._chains[HookType.POST_QUERY]:
            self._enqueue(HookType.POST_QUERY, b"[" + ctx.to_json() + b"," + outcome.to_json() + b"]")

    def on_connect(self, hook: HookContext) -> None:
        if self._chains[HookType.ON_CONNECT]:
            self._enqueue(HookType.ON_CONNECT, hook.to_json())

    def on_disconnect(self, hook: HookContext) -> None:
        if self._chains[HookType.ON_DISCONNECT]:
            self._enqueue(HookType.ON_DISCONNECT, hook.to_json())

    def post_auth(
        self,
        hook: HookContext,
        user: str,
        database: str,
        client_addr: str,
        success: bool,
        sqlstate: str | None = None,
        reason: str | None = None,
    ) -> None:
        """A login's outcome, for post_auth observers (queued, off the login path)."""
        if self._chains[HookType.POST_AUTH]:
            self._enqueue(
                HookType.POST_AUTH,
                auth_outcome_json(hook, user, database, client_addr, success, sqlstate, reason),
            )

    def drain_observers(self, limit: int | None = None) -> int:
        """Run queued observer calls now (the background task does this); returns how many."""
        n = 0
        q = self._observers
        while q and (limit is None or n < limit):
            hook, data = q.popleft()
            for p in self._chains[hook]:
                with contextlib.suppress(PluginError):
                    self._run(p, hook, data, _ignore)
            n += 1
        return n

    async def _observer_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._observers:
                self.drain_observers(limit=16)
                await asyncio.sleep(0)

    # -- hot reload -----------------------------------------------------------------------------

    def check_updates(self) -> None:
        """One hot-reload poll step: apply debounced Added / Modified / Removed changes."""
        if self.watcher is None:
            return
        for ev in self.watcher.poll():
            if ev.kind is ReloadKind.REMOVED:
                if self.plugins.pop(ev.name, None) is not None:
                    self._metrics.pop(ev.name, None)
                    self._rebuild()
                    log.info("plugin %s removed (file gone); unloaded", ev.name)
                    self._event("plugin_unloaded", plugin=ev.name)
                continue
            assert self.directory is not None
            old = self.plugins.get(ev.name)
            if old is None and len(self.plugins) >= self.cfg.max_plugins:
                self._refuse(ev.name, f"plugins.max_plugins ({self.cfg.max_plugins}) reached")
                continue
            new = self._try_load(self.directory / f"{ev.name}.wasm")
            if new is None:
                if old is not None:
                    old.last_error = f"new version refused: {self.last_refusal.get(ev.name, 'see the log')}"
                    log.error(
                        "plugin %s: new version refused; keeping version %s running",
                        ev.name,
                        old.manifest.version,
                    )
                continue
            plugins = dict(self.plugins)
            plugins[ev.name] = new
            self.plugins = plugins
            self._rebuild()
            if old is not None:
                log.info(
                    "plugin %s reloaded: %s -> %s",
                    ev.name,
                    old.manifest.version,
                    new.manifest.version,
                )
                self._event("plugin_reloaded", plugin=ev.name, version=new.manifest.version)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            try:
                self.check_updates()
            except Exception:
                log.exception("plugin hot reload step failed")

    def start_hot_reload(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        task = loop.create_task(self._reload_loop(), name="plugins-hot-reload")
        self._tasks.append(task)
        return task

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._observers:
            self._wake.set()
        self._tasks.append(loop.create_task(self._observer_loop(), name="plugins-observers"))
        if self.cfg.hot_reload and self.watcher is not None:
            self.start_hot_reload(loop)
        if self.plugins:
            self.runtime.ensure_ticker()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.drain_observers()
        self._wake = None
        self.runtime.close()

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.plugins.values(), key=lambda p: (p.manifest.priority, p.name)):
            m = p.manifest
            out.append(
                {
                    "name": p.name,
                    "version": m.version,
                    "description": m.description,
                    "author": m.author,
                    "priority": m.priority,
                    "fail_mode": m.fail_mode.value,
                    "state": "disabled" if p.disabled else "running",
                    "disabled": p.disabled,
                    "hooks": [h.value for h in m.hooks],
                    "permissions": sorted(m.permissions),
                    "signed_by": p.signed_by,
                    "consecutive_errors": p.consecutive_errors,
                    "last_error": p.last_error,
                    "calls": {
                        k: {"calls": s.calls, "errors": s.errors, "total_us": round(s.total_us, 1)}
                        for k, s in p.stats.items()
                    },
                    "metrics": p.metrics.simple(),
                    "metric_series": p.metrics.series(),
                    "metrics_dropped": p.metrics.dropped,
                    "events_refused": p.metrics.events_refused,
                    "misroutes": p.misroutes,
                }
            )
        return out


def _ignore(raw: bytes | None) -> None:
    """Observers' answers are ignored."""
