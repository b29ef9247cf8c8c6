"""`plugin verify` refuses exactly what the loader refuses; plugin gauges, labels, limits and reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.cli import main
from heliosproxy.plugins import signing
from heliosproxy.plugins.hooks import PluginError
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.metrics import MAX_SERIES, PluginMetrics
from heliosproxy.plugins.wasm import wat2wasm
from tests.unit.plugins.helpers import Events, install, query, respond_wat
from tests.unit.plugins.test_reload import bump_mtime, settle

Make = Callable[..., PluginManager]
CONTINUE = wat2wasm(respond_wat({"pre_query": None}))


def _name_mismatch(d: Path) -> None:
    install(d, "p", CONTINUE)
    (d / "p.yaml").write_text("name: other\nhooks: [pre_query]\n")


def _unsigned(d: Path) -> None:
    install(d, "p", CONTINUE)


def _tampered(d: Path) -> None:
    install(d, "p", CONTINUE)
    signing.sign(d / "p.wasm", d.parent / "keys" / "k.key")
    (d / "p.yaml").write_text((d / "p.yaml").read_text().replace("test plugin", "changed plugin"))


BROKEN: dict[str, Callable[[Path], None]] = {
    "name_mismatch": _name_mismatch,
    "abi_v2": lambda d: install(d, "p", "abi_v2") and None,
    "import_without_permission": lambda d: install(d, "p", "counter", permissions=["log"]) and None,
    "wasi_import": lambda d: install(d, "p", "wasi_import") and None,
    "hook_not_exported": lambda d: install(d, "p", CONTINUE, hooks=["pre_query", "route"]) and None,
    "init_refuses": lambda d: install(d, "p", "init_refuses") and None,
    "unsigned": _unsigned,
    "tampered": _tampered,
}
SIGNED_CASES = ("unsigned", "tampered")


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_verify_refuses_what_the_loader_refuses(
    case: str, pdir: Path, manager: Make, events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = pdir.parent / "keys"
    signing.keygen(keys, "k")
    trust = keys if case in SIGNED_CASES else None
    BROKEN[case](pdir)
    m = manager(trust_root=str(trust) if trust else None)
    assert "p" not in m.plugins
    refused = events.named("plugin_signature_refused") + events.named("plugin_load_failed")
    assert len(refused) == 1
    reason = refused[0]["reason"]

    args = ["plugin", "verify", str(pdir / "p.wasm")] + (["--trust-root", str(trust)] if trust else [])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"{pdir / 'p.wasm'}: refused: {reason}\n"


def test_verify_accepts_what_the_loader_loads(
    pdir: Path, manager: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = pdir.parent / "keys"
    key, _pub = signing.keygen(keys, "k")
    install(pdir, "p", "counter", permissions=["log", "metrics"], version="2.1.0")
    signing.sign(pdir / "p.wasm", key)
    assert "p" in manager(trust_root=str(keys)).plugins
    assert main(["plugin", "verify", "--trust-root", str(keys), str(pdir / "p.wasm")]) == 0
    out = capsys.readouterr().out
    assert out == f"{pdir / 'p.wasm'}: ok (plugin p 2.1.0, ABI v1, hooks pre_query, signed by k)\n"


def test_plugin_test_prints_answer_fuel_and_time(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install(pdir, "p", "counter", permissions=["log", "metrics"])
    ctx = pdir / "ctx.json"
    ctx.write_text(json.dumps({"query": "SELECT 1"}))
    assert main(["plugin", "test", str(pdir / "p.wasm"), "--hook", "pre_query", "--context", str(ctx)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["answer"] == {"action": "continue"}
    assert out["fuel"] > 0 and out["elapsed_us"] > 0
    assert "log[1]: counted" in captured.err and "metric add calls{} 1.0" in captured.err


def test_plugin_test_reports_an_answer_the_proxy_would_refuse(
    pdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(pdir, "p", wat2wasm(respond_wat({"pre_query": {"action": "explode"}})))
    ctx = pdir / "ctx.json"
    ctx.write_text("{}")
    assert main(["plugin", "test", str(pdir / "p.wasm"), "--hook", "pre_query", "--context", str(ctx)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == {"action": "explode"}
    assert out["error"]["kind"] == "bad_result"


def test_gauges_and_labels_bounded(pdir: Path, manager: Make) -> None:
    install(pdir, "p", "labels", permissions=["metrics"])
    m = manager()
    m.pre_query(query())
    m.pre_query(query())
    (st,) = m.stats()
    series = {(s["type"], s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in st["metric_series"]}
    assert series == {
        ("counter", "hits", (("kind", "read"),)): 2.0,
        ("gauge", "depth", ()): 7.0,
        ("gauge", "queue", (("tenant", "acme"),)): 2.5,
    }
    assert st["metrics_dropped"] == 2  # "plugin=x" is a reserved label name, once per call


def test_series_per_plugin_are_capped() -> None:
    store = PluginMetrics()
    for i in range(MAX_SERIES):
        assert store.record("add", "c", f"i={i}", 1) is None
    assert store.record("add", "c", "i=new", 1) == f"more than {MAX_SERIES} series for this plugin"
    assert store.record("add", "c", "i=0", 1) is None  # an existing series still counts
    assert store.record("add", "c", "", -1) is not None  # counters only go up
    assert store.record("set", "g", "a=1,b=2,c=3,d=4,e=5", 1) == "more than 4 labels"


def test_counters_survive_a_hot_reload_of_the_same_plugin(pdir: Path, manager: Make) -> None:
    install(pdir, "p", "counter", permissions=["log", "metrics"], version="1.0.0")
    m = manager(hot_reload=True, debounce=0.05)
    m.pre_query(query())
    m.pre_query(query())
    assert m.stats()[0]["metrics"] == {"calls": 2.0}
    install(pdir, "p", "counter", permissions=["log", "metrics"], version="1.0.1")
    bump_mtime(pdir / "p.wasm")
    settle(m, lambda: m.plugins["p"].manifest.version == "1.0.1")
    m.pre_query(query())
    assert m.stats()[0]["metrics"] == {"calls": 3.0}


def test_refused_new_version_shows_last_error(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "p", CONTINUE, version="1.0.0")
    m = manager(hot_reload=True, debounce=0.05)
    install(pdir, "p", "abi_v2", version="2.0.0")
    settle(m, lambda: bool(events.named("plugin_load_failed")))
    (st,) = m.stats()
    assert st["version"] == "1.0.0" and st["state"] == "running"
    assert st["last_error"] == (
        "new version refused: unsupported plugin ABI version 2 (this host speaks ABI v1)"
    )


def test_assemblyscript_abort_traps_with_its_message(pdir: Path, manager: Make) -> None:
    install(pdir, "p", "as_abort")
    m = manager()
    with pytest.raises(PluginError) as info:
        m.plugins["p"].instance.call("pre_query", b"{}")
    assert "abort: boom at a.ts:3:9" in info.value.message
