"""Structured logs: JSON fields from `extra=`, the log.connections filter, every event documented."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from heliosproxy.config.schema import LogConfig
from heliosproxy.logsetup import EVENTS, client_fields, hostport, setup_logging
from tests.helpers import REPO_ROOT

_USES = re.compile(r"""(?:"event":\s*|client_fields\(self,\s*|event=)"([a-z_]+)\"""")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    yield io.StringIO()
    logging.getLogger().handlers[:] = []


def setup(cfg: LogConfig, buf: io.StringIO, worker: int | None = None) -> None:
    setup_logging(cfg, worker)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)


class _Session:
    peer = "10.0.0.7:51234"
    user = "app"
    database = "app"
    backend = None


def test_json_fields(stream: io.StringIO) -> None:
    setup(LogConfig(format="json"), stream, worker=2)
    fields = client_fields(_Session(), "auth_failed", sqlstate="28P01")
    logging.getLogger("t").warning("client %s bad", "x", extra=fields)
    doc = json.loads(stream.getvalue())
    assert doc["event"] == "auth_failed" and doc["level"] == "warning" and doc["msg"] == "authentication failed"
    assert (doc["client"], doc["user"], doc["database"], doc["sqlstate"], doc["worker"]) == (
        "10.0.0.7:51234", "app", "app", "28P01", 2)
    assert "node" not in doc
    logging.getLogger("t").info("plain")
    assert json.loads(stream.getvalue().splitlines()[1])["event"] == "log"


def test_connections_false_drops_only_connection_lines(stream: io.StringIO) -> None:
    setup(LogConfig(format="json", connections=False), stream)
    log = logging.getLogger("t")
    log.info("in", extra=client_fields(_Session(), "client_connected"))
    log.info("out", extra=client_fields(_Session(), "client_closed"))
    log.info("reload", extra={"event": "reload"})
    assert [json.loads(ln)["event"] for ln in stream.getvalue().splitlines()] == ["reload"]


def test_hostport() -> None:
    assert hostport(("127.0.0.1", 6432)) == "127.0.0.1:6432"
    assert hostport(("::1", 6432, 0, 0)) == "[::1]:6432"


def test_every_event_in_the_code_is_documented() -> None:
    used = set()
    for path in (REPO_ROOT / "heliosproxy").rglob("*.py"):
        used |= set(_USES.findall(path.read_text()))
    used -= {"client_fatal"}  # _fatal's default, also documented; the regex sees both forms
    assert used, "the scan found no events"
    assert used <= set(EVENTS), used - set(EVENTS)
    readme = (REPO_ROOT / "README.md").read_text()
    assert [e for e in EVENTS if f"| `{e}` |" not in readme] == []
