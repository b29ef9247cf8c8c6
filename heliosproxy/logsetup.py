"""Logging configuration from the `log:` section: text or JSON lines on stderr, structured fields, events."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from heliosproxy.config.schema import LogConfig

# The `event` of each structured log line (README: "Logs"). A line without one has event "log".
EVENTS: dict[str, str] = {
    "client_connected": "a client logged in (client, user, database, pool_mode)",
    "client_closed": "a logged-in client went away (client, user, database, duration_ms; error if it broke)",
    "client_refused": "a connection was refused before login (client, sqlstate, error: too many clients...)",
    "client_fatal": "the proxy ended a client's session with a FATAL error (sqlstate, error)",
    "auth_failed": "a wrong password or a denied login, once per client at warning (client, user, sqlstate, error)",
    "login_failed": "a client could not be given a server connection at login (sqlstate, error)",
    "server_lost": "the server connection of a client's transaction was lost (node, error)",
    "reload": "a config reload: requested_by (signal, HTTP or console with who asked), outcome ok|failed, error",
    "admin_command": "a command on the admin console other than SHOW (user, client, command)",
    "plugin_log": "a line a plugin wrote with helios.log (plugin; msg is the plugin's text)",
    "plugin_refused": "a plugin (or a new version of it) was refused at load (plugin, reason)",
    "plugin_metric_dropped": "a plugin's metric sample was refused (first one per plugin; plugin, metric, reason)",
    "plugin_anomaly": "a plugin reported an event (emit_event), at most 20 lines a second per plugin (plugin)",
    "plugin_event_refused": "a plugin's emit_event document was refused (first one per plugin; plugin)",
}
# The JSON `msg` of each event: short, the details are the line's fields (text lines keep the long form).
SHORT: dict[str, str] = {
    "client_connected": "client connected",
    "client_closed": "client closed",
    "client_refused": "connection refused",
    "client_fatal": "session ended (FATAL)",
    "auth_failed": "authentication failed",
    "login_failed": "login failed",
    "server_lost": "server connection lost",
    "admin_command": "admin command",
    "plugin_refused": "plugin refused",
    "plugin_metric_dropped": "plugin metric dropped",
    "plugin_anomaly": "plugin event",
    "plugin_event_refused": "plugin event refused",
}
CONNECTION_EVENTS = frozenset({"client_connected", "client_closed"})

# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
# `text` (extra) is a line's own short JSON msg.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "text"}


def client_fields(session: Any, event: str, **more: Any) -> dict[str, Any]:
    """`extra=` for a log line about a client session: event, client (host:port), user, database, node."""
    fields: dict[str, Any] = {
        "event": event,
        "client": getattr(session, "peer", None),
        "user": getattr(session, "user", None) or None,
        "database": getattr(session, "database", None) or None,
    }
    backend = getattr(session, "backend", None)
    node = getattr(backend, "node", None) if backend is not None else None
    if node is not None:
        fields["node"] = node
    fields.update(more)
    return fields


def hostport(address: Any) -> str:
    """A socket address as host:port ([v6]:port); a Unix socket path as is."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


class _JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None) or "log"
        text = getattr(record, "text", None) or SHORT.get(event)
        if text is None and event == "reload":
            text = f"reload {getattr(record, 'outcome', '')}".strip()
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": event,
            "logger": record.name,
            "msg": text or record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc and value is not None:
                doc[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if self.worker is not None:
            doc["worker"] = self.worker
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _DropConnections(logging.Filter):
    """`log.connections: false`: no client_connected / client_closed lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) not in CONNECTION_EVENTS


def setup_logging(cfg: LogConfig, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter(worker))
    else:
        prefix = f"[w{worker}] " if worker is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s: {prefix}%(message)s"))
    if not getattr(cfg, "connections", True):
        handler.addFilter(_DropConnections())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, cfg.level.upper(), logging.INFO))
