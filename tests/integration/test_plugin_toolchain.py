"""plugins/README.md's recipes (Zig, C, AssemblyScript) as a user runs them: new, build, test, verify, load, query."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO_ROOT
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.wat_e2e.kit import plugin_config, plugin_log_lines

pytestmark = pytest.mark.timeout(300)

README = REPO_ROOT / "plugins" / "README.md"
_BLOCK = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.M | re.S)
_LANG_OF = {"zig": "zig", "c": "c", "ts": "assemblyscript"}
REASON = "run VACUUM on the server, not through the proxy"


def recipes() -> dict[str, dict[str, str]]:
    """{lang: {relative path: text}}: each source block of the README with the manifest after it."""
    out: dict[str, dict[str, str]] = {}
    current: str | None = None
    for m in _BLOCK.finditer(README.read_text()):
        info, path, text = m.group(1), m.group(2), m.group(3)
        if info in _LANG_OF:
            current = _LANG_OF[info]
            out[current] = {path: text}
        elif info == "yaml" and current is not None:
            out[current][path] = text
            current = None
    return out


def heliosproxy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heliosproxy", *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )


def ctx_file(directory: Path, query: str) -> Path:
    doc = json.loads((directory / "ctx.json").read_text())
    doc["query"] = query
    path = directory / f"ctx-{abs(hash(query))}.json"
    path.write_text(json.dumps(doc))
    return path


def psql(proxy: ProxyProcess, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", proxy.dsn(), "-X", "-v", "VERBOSITY=verbose", "-At", "-c", script],
        capture_output=True, text=True, timeout=30,
    )


def test_readme_has_a_recipe_per_language() -> None:
    found = recipes()
    assert sorted(found) == ["assemblyscript", "c", "zig"]
    for files in found.values():
        assert len(files) == 2, files  # the source and its manifest


@pytest.mark.parametrize("lang", ["zig", "c", "assemblyscript"])
def test_recipe_builds_loads_and_answers_through_the_proxy(
    lang: str, tmp_path: Path, proxy_factory: ProxyFactory
) -> None:
    # 1. the scaffold as generated: builds, and its pre_query answers continue
    result = heliosproxy("plugin", "new", "no_vacuum", "--lang", lang, "--dir", tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "no_vacuum"
    result = heliosproxy("plugin", "build", project)
    assert result.returncode == 0, result.stderr
    result = heliosproxy("plugin", "test", project, "--hook", "pre_query", "--context", project / "ctx.json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == {"action": "continue"}
    assert isinstance(out["fuel"], int) and out["fuel"] > 0
    assert out["elapsed_us"] > 0

    # 2. the README's recipe in place of the scaffold's files
    for rel, text in recipes()[lang].items():
        (tmp_path / rel).write_text(text)
    result = heliosproxy("plugin", "build", project)
    assert result.returncode == 0, result.stderr
    result = heliosproxy("plugin", "test", project, "--hook", "pre_query", "--context",
                         ctx_file(project, "  vacuum plug_t"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == {"action": "block", "reason": REASON}
    assert "metric add refused{statement=vacuum} 1" in result.stderr  # the host calls, shown on stderr
    result = heliosproxy("plugin", "test", project, "--hook", "pre_query", "--context",
                         ctx_file(project, "SELECT 'vacuum'"))
    assert json.loads(result.stdout)["answer"] == {"action": "continue"}
    result = heliosproxy("plugin", "verify", project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{project / 'build' / 'no_vacuum.wasm'}: ok (plugin no_vacuum 0.1.0, ABI v1")

    # 3. loaded by a running proxy, as a client sees it
    pdir = tmp_path / "loaded"
    pdir.mkdir()
    for f in ("no_vacuum.wasm", "no_vacuum.yaml"):
        shutil.copy(project / "build" / f, pdir / f)
    proxy = proxy_factory(plugin_config(pdir))
    refused = psql(proxy, "VACUUM")
    assert refused.returncode == 1
    assert f"ERROR:  42000: {REASON}" in refused.stderr
    ok = psql(proxy, "SELECT 41 + 1")
    assert (ok.returncode, ok.stdout) == (0, "42\n")
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        body = r.read().decode()
    assert re.search(
        r'heliosproxy_plugin_metric_total\{[^}]*name="refused"[^}]*plugin="no_vacuum"'
        r'[^}]*statement="vacuum"[^}]*\} 1\.0',
        body,
    ), [line for line in body.splitlines() if "plugin_metric" in line]
    assert plugin_log_lines(proxy, "no_vacuum")  # the warn line the recipe logs


def test_new_defaults_to_a_directory_named_after_the_plugin(tmp_path: Path) -> None:
    """`plugin new NAME` without --dir scaffolds ./NAME/ (source, manifest, build line) where it is run."""
    run = subprocess.run(
        [sys.executable, "-m", "heliosproxy", "plugin", "new", "audit_log", "--lang", "c"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert run.returncode == 0, run.stderr
    project = tmp_path / "audit_log"
    assert (project / "audit_log.c").is_file() and (project / "audit_log.yaml").is_file()
    assert "heliosproxy plugin build audit_log" in run.stdout + (project / "README.md").read_text()
    built = subprocess.run(
        [sys.executable, "-m", "heliosproxy", "plugin", "build", "audit_log"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert built.returncode == 0, built.stderr
    tested = subprocess.run(
        [sys.executable, "-m", "heliosproxy", "plugin", "test", "audit_log", "--hook", "pre_query", "--context",
         "audit_log/ctx.json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert tested.returncode == 0, tested.stderr
    assert json.loads(tested.stdout)["answer"] == {"action": "continue"}


GAUGES_C = """\
#include "helios.h"
static void put_label(char *out, int i) {  /* "tenant=tNNN" */
    const char *p = "tenant=t";
    int n = 0;
    while (p[n]) { out[n] = p[n]; n++; }
    out[n++] = (char)('0' + (i / 100) % 10);
    out[n++] = (char)('0' + (i / 10) % 10);
    out[n++] = (char)('0' + i % 10);
    out[n] = 0;
}
static int64_t gauges(const char *json, int32_t len) {
    char label[32];
    helios_metric_set("tenants", 3);
    helios_metric_set_labels("lag", "node=a,zone=z1", 7.5);
    helios_metric_add_labels("seen", "kind=select", 1);
    for (int i = 0; i < 300; i++) {  /* far more series than a plugin may have: bounded at 256 */
        put_label(label, i);
        helios_metric_set_labels("per_tenant", label, i);
    }
    return 0;
}
HELIOS_HOOK(pre_query, gauges)
"""


def test_plugin_gauges_labels_and_bounded_series_through_the_proxy(tmp_path: Path,
                                                                   proxy_factory: ProxyFactory) -> None:
    """A plugin's gauges and labelled series in the proxy's /metrics; past 256 series samples are dropped,
    counted and logged once, and the proxy goes on serving."""
    assert heliosproxy("plugin", "new", "gauges", "--lang", "c", "--dir", tmp_path).returncode == 0
    project = tmp_path / "gauges"
    (project / "gauges.c").write_text(GAUGES_C)
    manifest = project / "gauges.yaml"
    manifest.write_text(manifest.read_text().replace("permissions: []", "permissions: [metrics]"))
    result = heliosproxy("plugin", "build", project)
    assert result.returncode == 0, result.stderr
    pdir = tmp_path / "loaded"
    pdir.mkdir()
    for f in ("gauges.wasm", "gauges.yaml"):
        shutil.copy(project / "build" / f, pdir / f)
    proxy = proxy_factory(plugin_config(pdir))
    for _ in range(2):
        ok = psql(proxy, "SELECT 1")
        assert (ok.returncode, ok.stdout) == (0, "1\n"), ok.stderr
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        body = r.read().decode()
    samples = [s for f in text_string_to_metric_families(body) for s in f.samples
               if s.labels.get("plugin") == "gauges"]

    def value(metric: str, **labels: str) -> float | None:
        for s in samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        return None

    assert value("heliosproxy_plugin_gauge", name="tenants") == 3.0  # a gauge is set, not added up
    assert value("heliosproxy_plugin_gauge", name="lag", node="a", zone="z1") == 7.5
    assert value("heliosproxy_plugin_metric_total", name="seen", kind="select") == 2.0
    series = [s for s in samples if s.name in ("heliosproxy_plugin_gauge", "heliosproxy_plugin_metric_total")]
    assert len(series) == 256, len(series)
    dropped = value("heliosproxy_plugin_metric_dropped_total")
    assert dropped is not None and dropped > 0
    assert proxy.output().count("metric 'per_tenant' dropped") == 1  # logged once, not per sample
