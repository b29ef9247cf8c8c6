"""Builds, reconfigures and stops the traffic components (mirror, analytics) and gathers their views across workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from heliosproxy.config.schema import Config
from heliosproxy.traffic import analytics, mirror

log = logging.getLogger("heliosproxy.traffic")

OP_ANALYTICS = b"Y"  # worker-link requests (heliosproxy/workers.py handlers)
OP_MIRROR = b"R"


class TrafficControl:
    """A Server extra: ctx.mirror and ctx.analytics exist only while configured (None = off, no cost)."""

    def __init__(self, ctx: Any, link: Any = None):
        self.ctx = ctx  # heliosproxy.session.context.ProxyContext
        self.link = link  # heliosproxy.workers.WorkerLink in multi-worker mode
        self._stopping: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.link is not None:
            self.link.handlers[OP_ANALYTICS] = lambda: json.dumps(self.analytics_snapshot()).encode()
            self.link.handlers[OP_MIRROR] = lambda: json.dumps(self.mirror_snapshot(), default=str).encode()
        self.configure(self.ctx.config)

    def configure(self, config: Config) -> None:
        ctx = self.ctx
        if config.analytics.enabled:
            if ctx.analytics is None:
                ctx.analytics = analytics.Analytics(config.analytics, ctx.query_stats)
                log.info("query analytics on")
            else:
                ctx.analytics.configure(config.analytics)
        elif ctx.analytics is not None:
            ctx.analytics.close()
            ctx.analytics = None
            for client in list(ctx.clients):  # their replies need not be read any more
                if client.tap is not None and not client.tap.capturing:
                    client.tap = None
            log.info("query analytics off")
        if config.mirror is not None:
            if ctx.mirror is None:
                ctx.mirror = mirror.Mirror(config.mirror, ctx.pools)
                ctx.mirror.configure(config.mirror)  # starts its workers
                log.info("mirroring %s of %s statements to %s", config.mirror.sample,
                         config.mirror.statements.value, config.mirror.node)
            else:
                ctx.mirror.configure(config.mirror)
        elif ctx.mirror is not None:
            old, ctx.mirror = ctx.mirror, None
            task = asyncio.get_running_loop().create_task(old.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            log.info("mirroring off")

    async def stop(self) -> None:
        ctx = self.ctx
        if ctx.mirror is not None:
            await ctx.mirror.stop()
            ctx.mirror = None
        if ctx.analytics is not None:
            ctx.analytics.close()
            ctx.analytics = None
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ views
    def analytics_snapshot(self) -> dict[str, Any]:
        a = self.ctx.analytics
        return a.snapshot() if a is not None else {}

    def mirror_snapshot(self) -> dict[str, Any]:
        m = self.ctx.mirror
        return m.view() if m is not None else {}

    async def gather(self, op: bytes) -> list[dict[str, Any]]:
        """This worker's snapshot and every other worker's (multi-worker mode)."""
        own = self.analytics_snapshot() if op == OP_ANALYTICS else self.mirror_snapshot()
        out = [own]
        if self.link is not None:
            for w, data in await self.link.ask_all(op):
                try:
                    out.append(json.loads(data))
                except ValueError as exc:
                    log.debug("worker %d sent a bad %r snapshot: %s", w, op, exc)
        return out

    async def analytics_view(self, limit: int = 100) -> dict[str, Any]:
        snaps = [s for s in await self.gather(OP_ANALYTICS) if s]
        return analytics.merge(snaps, limit)

    async def mirror_view(self) -> dict[str, Any]:
        recent = self.ctx.config.mirror.recent if self.ctx.config.mirror is not None else 50
        return mirror.merge_views(await self.gather(OP_MIRROR), recent)


MIRROR_COLUMNS = ("kind", "at", "query", "mirrored", "mismatches", "slower", "errors", "dropped",
                  "primary_rows", "shadow_rows", "primary_ms", "shadow_ms", "detail")


def mirror_rows(view: dict[str, Any]) -> list[dict[str, Any]]:
    """SHOW MIRROR: a `total` row with the counters, then one row per recent mismatch or error."""
    rows: list[dict[str, Any]] = [{"kind": "total", **{k: view.get(k, 0) for k in
                                                      ("mirrored", "mismatches", "slower", "errors", "dropped")}}]
    for ev in view.get("recent", []):
        p = ev.get("primary") or {}
        s = ev.get("shadow") or {}
        rows.append({
            "kind": ev.get("kind"),
            "at": _iso(ev.get("at")),
            "query": ev.get("query"),
            "primary_rows": p.get("rows"),
            "shadow_rows": s.get("rows"),
            "primary_ms": p.get("ms"),
            "shadow_ms": s.get("ms"),
            "detail": ev.get("detail"),
        })
    return rows


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, int | float):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
