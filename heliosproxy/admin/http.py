"""HTTP admin on admin.listen: /metrics, /health, /ready, /live and the JSON /api/... (a small HTTP/1.1 server)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Coroutine
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from heliosproxy.admin import (
    VERSION,
    AdminError,
    ServerControl,
    clients_view,
    nodes_view,
    pools_view,
    primary_reachable,
    queries_view,
    set_node_disabled,
    set_paused,
    set_plugin_disabled,
    stats_view,
    switchover,
)
from heliosproxy.config.schema import Config, split_hostport
from heliosproxy.logsetup import hostport
from heliosproxy.metrics import ProxyCollector
from heliosproxy.plugins.events import served
from heliosproxy.traffic.analytics import percentile_ms

log = logging.getLogger("heliosproxy.admin.http")

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
MAX_REQUESTS_PER_CONNECTION = 100

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    505: "HTTP Version Not Supported", 422: "Unprocessable Entity",
}
_NODE_ACTION = re.compile(r"^/api/nodes/([^/]+)/(disable|enable)$")
_DB_ACTION = re.compile(r"^/api/databases/([^/]+)/(pause|resume)$")
_PLUGIN_ACTION = re.compile(r"^/api/plugins/([^/]+)/(disable|enable)$")
_STATIC_NAME = re.compile(r"^/static/([A-Za-z0-9_-]+\.(?:js|css|svg|png|ico))$")
_STATIC_TYPES = {
    "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon",
}
# POST bodies a plain HTML form can send cross-site without a CORS preflight (CSRF).
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_PUBLIC = ("/live", "/ready", "/health")
_WILDCARDS = ("0.0.0.0", "::", "")
_NO_TOKEN = ("admin actions are disabled: no admin.token is configured. Set one (admin: {token: ${HELIOS_ADMIN_TOKEN}}"
             " in the config, the variable in the environment), reload or restart, and send"
             " 'Authorization: Bearer <token>'")
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Response:
    def __init__(self, status: int, body: bytes, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


class Deferred(Response):
    """A response computed by a coroutine (POST /api/switchover answers once it is done)."""

    def __init__(self, work: Coroutine[Any, Any, Response]):
        super().__init__(202, b"")
        self.work = work


def json_response(status: int, data: Any) -> Response:
    return Response(status, (json.dumps(data, default=str, indent=None) + "\n").encode())


def error_response(status: int, message: str) -> Response:
    extra = {"WWW-Authenticate": 'Bearer realm="heliosproxy"'} if status == 401 else None
    r = json_response(status, {"error": message, "status": status})
    if extra:
        r.headers.update(extra)
    return r


class AdminHttp:
    """The HTTP admin server (a Server extra: start/stop/configure)."""

    def __init__(self, server: ServerControl, metrics: ProxyCollector):
        self.server = server
        self.metrics = metrics
        self.config: Config = server.config
        self.listener: asyncio.Server | None = None
        self.bound: tuple[str, int] | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        listen = self.config.admin.listen
        if not listen:
            return
        host, port = split_hostport(listen)
        try:
            self.listener = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD + 1024)
        except OSError as exc:
            raise OSError(exc.errno, f"admin.listen {listen}: {exc.strerror or exc}") from None
        sock = self.listener.sockets[0].getsockname()
        self.bound = (sock[0], sock[1])
        log.info("admin HTTP listening on %s:%s", sock[0], sock[1])

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.wait_closed(), 2)
            self.listener = None

    def configure(self, config: Config) -> None:
        if config.admin.listen != self.config.admin.listen:
            log.warning("admin.listen changed to %s: takes effect at the next restart", config.admin.listen)
        self.config = config

    # ------------------------------------------------------------------ connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                keep = await self._one(reader, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("admin HTTP: unexpected error")
        finally:
            if task is not None:
                self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._send(writer, error_response(400, "incomplete request"), False)
            return False
        except asyncio.LimitOverrunError:
            await self._send(writer, error_response(431, f"request head over {MAX_HEAD} bytes"), False)
            return False
        except TimeoutError:
            await self._send(writer, error_response(408, "request timed out"), False)
            return False
        if len(head) > MAX_HEAD:
            await self._send(writer, error_response(431, f"request head over {MAX_HEAD} bytes"), False)
            return False
        try:
            method, path, version, headers = _parse_head(head)
        except HttpError as exc:
            await self._send(writer, error_response(exc.status, exc.message), False)
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        body = b""
        if "transfer-encoding" in headers:
            await self._send(writer, error_response(411, "chunked bodies are not accepted; send Content-Length"),
                             False)
            return False
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            await self._send(writer, error_response(400, "bad Content-Length"), False)
            return False
        length = int(length_text)
        if length > MAX_BODY:
            await self._send(writer, error_response(413, f"body over {MAX_BODY} bytes"), False)
            return False
        if length:
            try:
                body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError):
                return False
        self._peer_metrics: list[tuple[int, bytes]] | None = None
        self._peer = hostport(writer.get_extra_info("peername"))
        link = getattr(self.server, "link", None)
        if link is not None and path.split("?", 1)[0].rstrip("/") == "/metrics" and self._may_scrape(headers):
            self._peer_metrics = await link.ask_all(b"M")
        self._traffic: dict[str, Any] | None = None  # /api/mirror, /api/analytics: every worker's (issue 15)
        tc = getattr(self.server, "traffic", None)
        where = path.split("?", 1)[0].rstrip("/")
        if tc is not None and method in ("GET", "HEAD") and where in ("/api/mirror", "/api/analytics"):
            try:  # only for a request dispatch() will answer with it
                self._check_host(headers)
                self._check_token(headers)
            except HttpError:
                pass
            else:
                self._traffic = await (tc.mirror_view() if where == "/api/mirror" else tc.analytics_view())
        self._peer_events: list[dict[str, Any]] = []
        if link is not None and path.split("?", 1)[0].rstrip("/") == "/api/anomalies" and self._may_read(headers):
            self._peer_events = _peer_events(await link.ask_all(b"E"))
        try:
            response = self.dispatch(method, path, headers, body)
            if isinstance(response, Deferred):
                response = await response.work
            if link is not None and getattr(link, "workers", 1) > 1 and response.status == 200:
                await self._on_every_worker(link, method, path.split("?", 1)[0], response)
        except HttpError as exc:
            response = error_response(exc.status, exc.message)
        except AdminError as exc:
            response = error_response(exc.status, exc.message)
        except Exception as exc:
            log.exception("admin HTTP %s %s failed", method, path)
            response = error_response(500, f"internal error: {exc.__class__.__name__}")
        await self._send(writer, response, keep, head_only=method == "HEAD")
        return keep

    async def _send(self, writer: asyncio.StreamWriter, r: Response, keep: bool, head_only: bool = False) -> None:
        lines = [
            f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Status')}",
            f"Content-Type: {r.content_type}",
            f"Content-Length: {len(r.body)}",
            f"Connection: {'keep-alive' if keep else 'close'}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            *(f"{k}: {v}" for k, v in r.headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else r.body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    # ------------------------------------------------------------------ routing
    async def _on_every_worker(self, link: Any, method: str, path: str, response: Response) -> None:
        """With workers: N>1, a POST action done here is done on the other workers too (as the console's
        command: RELOAD, ENABLE/DISABLE node, PAUSE/RESUME db without waiting); a worker that refuses the
        reload turns the answer into 422."""
        if method != "POST":
            return
        command: str | None = None
        if path == "/api/reload":
            command = "RELOAD"
        elif m := _NODE_ACTION.match(path):
            command = f'{"DISABLE" if m.group(2) == "disable" else "ENABLE"} "{m.group(1)}"'
        elif m := _DB_ACTION.match(path):
            db = unquote(m.group(1))
            verb = "PAUSE" if m.group(2) == "pause" else "RESUME"
            command = verb if db == "*" else f'{verb} "{db}"'
        if command is None:
            return
        answers = await link.ask_admin({"run": command, "user": "HTTP", "peer": self._peer, "wait": False,
                                          "origin": "HTTP"})
        failed = [f"worker {a.get('worker')}: {a['error']}" for a in answers if a.get("error")]
        if failed and command == "RELOAD":
            response.status = 422
            response.body = (json.dumps({"ok": False, "error": "; ".join(failed), "status": 422}) + "\n").encode()
        elif failed:
            log.warning("admin HTTP %s on other workers: %s", command, "; ".join(failed))

    def dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        path = target.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        self._check_host(headers)
        get = method in ("GET", "HEAD")
        if method == "POST":
            self._check_post(headers)
        elif path.startswith("/api/") or (path == "/metrics" and self.config.admin.metrics_auth):
            self._check_token(headers)
        if path == "/metrics":
            _allow(method, get)
            data, ctype = self.metrics.exposition(getattr(self, "_peer_metrics", None))
            return Response(200, data, ctype or CONTENT_TYPE_LATEST)
        # /live, /ready and /health never need the token (orchestrators' probes) and say only a status;
        # the details are under /api/nodes.
        if path == "/live":
            _allow(method, get)
            return json_response(200, {"status": "live"})
        if path == "/health":
            _allow(method, get)
            ok = primary_reachable(self.server)
            return json_response(200 if ok else 503, {"status": "ok" if ok else "no primary reachable"})
        if path == "/ready":
            _allow(method, get)
            ctx = self.server.ctx
            usable = [n.name for n in ctx.registry.nodes.values() if n.usable]
            ready = not ctx.shutting_down and bool(usable) and ctx.registry.primary_node() is not None
            reason = ("shutting down" if ctx.shutting_down else "ready" if ready else "no usable primary")
            return json_response(200 if ready else 503, {"status": reason})
        if self.config.admin.dashboard and (path in ("/", "/ui.json") or path.startswith("/static/")):
            _allow(method, get)
            return self._dashboard(path)
        if path == "/api/overview":
            _allow(method, get)
            return json_response(200, self._overview())
        if path == "/api/stats":
            _allow(method, get)
            return json_response(200, self._stats())
        if path == "/api/nodes":
            _allow(method, get)
            return json_response(200, nodes_view(self.server))
        if path == "/api/pools":
            _allow(method, get)
            return json_response(200, pools_view(self.server))
        if path == "/api/clients":
            _allow(method, get)
            return json_response(200, clients_view(self.server))
        if path == "/api/plugins":
            _allow(method, get)
            return json_response(200, self.server.ctx.plugins.stats())
        if path == "/api/queries":
            _allow(method, get)
            return json_response(200, queries_view(self.server))
        if path in ("/api/mirror", "/api/analytics"):  # issue 15 §4, §5
            _allow(method, get)
            if self._traffic is None:
                raise HttpError(503, "not available")
            return json_response(200, self._traffic)
        if path == "/api/anomalies":
            _allow(method, get)
            return json_response(200, {"events": self._anomalies(target)})
        if path == "/api/reload":
            _allow(method, method == "POST", "POST")
            ok, message = self.server.reload(requested_by=f"HTTP {getattr(self, '_peer', '?')}")
            if ok:
                return json_response(200, {"ok": True, "message": message})
            return json_response(422, {"ok": False, "error": message, "status": 422})
        if path == "/api/switchover":
            _allow(method, method == "POST", "POST")
            return Deferred(self._switchover(target, body))
        m = _NODE_ACTION.match(path)
        if m:
            _allow(method, method == "POST", "POST")
            node = set_node_disabled(self.server, m.group(1), m.group(2) == "disable")
            log.info("admin HTTP: %s node %s", m.group(2), m.group(1))
            return json_response(200, node)
        m = _DB_ACTION.match(path)
        if m:
            _allow(method, method == "POST", "POST")
            log.info("admin HTTP: %s database %s", m.group(2), m.group(1))
            return json_response(200, set_paused(self.server, unquote(m.group(1)), m.group(2) == "pause"))
        m = _PLUGIN_ACTION.match(path)
        if m:
            _allow(method, method == "POST", "POST")
            log.info("admin HTTP: %s plugin %s", m.group(2), m.group(1))
            return json_response(200, set_plugin_disabled(self.server, unquote(m.group(1)), m.group(2) == "disable"))
        raise HttpError(404, f"no such endpoint: {path}")


    async def _switchover(self, target: str, body: bytes) -> Response:
        """POST /api/switchover[?to=node] (or a JSON body {"to": node}): the result row as JSON."""
        to: str | None = None
        query = target.split("?", 1)[1] if "?" in target else ""
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "to" and value:
                to = unquote(value)
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError:
                raise HttpError(400, "the body must be JSON: {\"to\": \"node\"}") from None
            if not isinstance(data, dict) or not isinstance(data.get("to", ""), str | None):
                raise HttpError(400, "the body must be JSON: {\"to\": \"node\"}")
            to = data.get("to") or to
        log.info("admin HTTP: switchover%s", f" to {to}" if to else "")
        return json_response(200, await switchover.run(self.server, to))

    # ------------------------------------------------------------------ admin surface checks
    def _check_host(self, headers: dict[str, str]) -> None:
        """DNS rebinding: a browser always sends the name it resolved; only ours are served."""
        host = headers.get("host")
        if host is None:  # not a browser (HTTP/1.0 probes): nothing to rebind
            return
        if not host_allowed(host, self.config.admin.listen, self.config.admin.allowed_hosts):
            raise HttpError(403, f"Host {host[:100]!r} is not this admin server's address; add the name to"
                                 " admin.allowed_hosts to serve it")

    def _may_scrape(self, headers: dict[str, str]) -> bool:
        """Whether a /metrics request will be served (other workers are asked for theirs only then)."""
        admin = self.config.admin
        host = headers.get("host")
        if host is not None and not host_allowed(host, admin.listen, admin.allowed_hosts):
            return False
        return not admin.metrics_auth or (bool(admin.token) and _token_ok(headers, admin.token or ""))

    def _may_read(self, headers: dict[str, str]) -> bool:
        """Whether an /api/ GET will be served (other workers are asked for their part only then)."""
        admin = self.config.admin
        host = headers.get("host")
        if host is not None and not host_allowed(host, admin.listen, admin.allowed_hosts):
            return False
        return not admin.token or _token_ok(headers, admin.token)

    def _anomalies(self, target: str) -> list[dict[str, Any]]:
        """Plugin events of every worker, newest first (`?limit=N`, default plugins.max_events)."""
        limit = self.config.plugins.max_events
        query = parse_qs(urlsplit(target).query)
        if "limit" in query:
            text = query["limit"][-1]
            if not text.isdigit():
                raise HttpError(400, "limit must be a non-negative integer")
            limit = min(limit, int(text))
        events = self.server.ctx.plugins.events.raw() + getattr(self, "_peer_events", [])
        return served(events, limit)

    def _check_token(self, headers: dict[str, str]) -> None:
        token = self.config.admin.token
        if token and not _token_ok(headers, token):
            raise HttpError(401, "missing or wrong bearer token")

    def _check_post(self, headers: dict[str, str]) -> None:
        """Every POST changes something: refuse cross-site and form posts (CSRF), then ask for the token."""
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, headers.get("host")):
            raise HttpError(403, f"cross-site request refused (Origin {origin[:100]!r})")
        if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            raise HttpError(403, "cross-site request refused (Sec-Fetch-Site)")
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype in _FORM_TYPES:
            raise HttpError(403, f"form posts are refused (Content-Type {ctype}); send JSON or no body")
        token = self.config.admin.token
        if not token:
            raise HttpError(403, _NO_TOKEN)
        if not _token_ok(headers, token):
            raise HttpError(401, "missing or wrong bearer token")

    # ------------------------------------------------------------------ dashboard
    def _dashboard(self, path: str) -> Response:
        if path == "/ui.json":  # what the page needs before it may ask anything else
            return json_response(200, {"token_required": bool(self.config.admin.token)})
        if path == "/":
            name = "index.html"
        else:
            m = _STATIC_NAME.match(path)
            if not m:
                raise HttpError(404, f"no such file: {path}")
            name = m.group(1)
        try:
            data = resources.files("heliosproxy.admin").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise HttpError(404, f"no such file: {path}") from None
        ext = name.rsplit(".", 1)[1]
        headers = {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
        return Response(200, data, _STATIC_TYPES[ext], headers)

    def _stats(self) -> dict[str, Any]:
        """Process totals and the cumulative statement-duration histogram (the page derives rates and
        percentiles from two samples)."""
        d = self.metrics.durations
        totals = stats_view(self.server)[0]
        return {
            "time": time.time(),
            "queries": totals["total_query_count"],
            "errors": totals["total_error_count"],
            "bytes_in": totals["total_received"],
            "bytes_out": totals["total_sent"],
            "clients_total": totals["total_client_connections"],
            "clients_refused": totals["refused_client_connections"],
            "login_failures": totals["login_failures"],
            "failovers": self.server.ctx.registry.failovers,
            "paused": sorted(self.server.ctx.paused) if self.server.ctx.paused else [],
            "reloads_ok": self.server.reloads_ok,
            "reloads_failed": self.server.reloads_failed,
            "duration_buckets": [[b, n] for b, n in d.cumulative()],
            "duration_count": d.count,
            "duration_sum_s": d.sum,
        }

    def _overview(self) -> dict[str, Any]:
        """Everything the dashboard shows, in one request (no secrets: the views mask none because they hold
        none)."""
        clients = clients_view(self.server)
        return {
            "version": VERSION,
            "workers": self.config.workers,
            "nodes": nodes_view(self.server),
            "pools": pools_view(self.server),
            "clients": clients[:500],
            "clients_total": len(clients),
            "plugins": self.server.ctx.plugins.stats(),
            "queries": _with_p99(self.server.ctx.analytics, queries_view(self.server, limit=20)),
            "stats": self._stats(),
        }


def _with_p99(analytics: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top statements with their p99 (ms) when query analytics keeps each statement's histogram (else none)."""
    if analytics is None:
        return rows
    for row in rows:
        fs = analytics.stats.get(row["fingerprint"])
        if fs is not None and fs.buckets:
            row["p99_ms"] = percentile_ms(fs.buckets, 0.99)
    return rows


def _peer_events(answers: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """Other workers' event lists (a worker whose answer does not parse is left out)."""
    out: list[dict[str, Any]] = []
    for worker, data in answers:
        try:
            doc = json.loads(data)
        except ValueError:
            log.debug("worker %d sent a bad event list", worker)
            continue
        if isinstance(doc, list):
            out.extend(e for e in doc if isinstance(e, dict))
    return out


def _token_ok(headers: dict[str, str], token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _split_host(value: str) -> str:
    """'Host' header value -> the lower-case name without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    if sep and port.isdigit():
        value = name
    return value.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(host: str, listen: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request's Host names this server: the listen address, a loopback name when listening on
    loopback, any IP literal when listening on every address (an IP cannot be rebound), or admin.allowed_hosts."""
    name = _split_host(host)
    extra = {a.strip().lower().rstrip(".") for a in allowed}
    if name in extra or host.strip().lower() in extra or "*" in extra:
        return True
    listen_host = split_hostport(listen)[0].lower() if listen else ""
    if name == listen_host:
        return True
    ip = _ip(name)
    listen_ip = _ip(listen_host)
    if listen_host in _WILDCARDS:
        return ip is not None or name == "localhost"
    loopback_listen = listen_host == "localhost" or (listen_ip is not None and listen_ip.is_loopback)
    return loopback_listen and (name == "localhost" or (ip is not None and ip.is_loopback))


def same_origin(origin: str, host: str | None) -> bool:
    """An Origin header names the same server as the Host header (scheme http, same host and port)."""
    if host is None or origin.strip().lower() == "null":
        return False
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return parts.netloc.lower() == host.strip().lower()


def _allow(method: str, ok: bool, allowed: str = "GET") -> None:
    if not ok:
        raise HttpError(405, f"method {method} not allowed here (use {allowed})")


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        raise HttpError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505 if version.startswith("HTTP/") else 400, f"unsupported protocol {version[:20]!r}")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return method, target, version, headers
