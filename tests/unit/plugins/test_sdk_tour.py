"""Every host wrapper of the three SDKs, compiled with `plugin build` and called with `plugin test`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

ZIG = """\
const h = @import("helios");
export fn pre_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, tour);
}
fn tour(ctx: h.Value) i64 {
    h.log(.info, "tour");
    h.metricAdd("c", 1);
    h.metricSet("g", 2);
    h.metricAddLabels("cl", "k=v", 3);
    h.metricSetLabels("gl", "k=w", 4);
    if (!h.kvSet("key", "val")) return h.block("kvSet failed");
    const v = h.kvGet("key") orelse return h.block("kvGet missing");
    if (!h.kvDelete("key")) return h.block("kvDelete failed");
    if (h.kvGet("key") != null) return h.block("kvDelete kept it");
    if (h.nowMs() < 1_600_000_000_000) return h.block("clock");
    const q = ctx.getStr("query") orelse "";
    if (h.sql.startsWithKeyword(q, "select")) return h.rewrite(v);
    return h.proceed();
}
"""

C = """\
#include "helios.h"
static int64_t tour(const char *json, int32_t len) {
    int32_t n = 0, qn = 0;
    helios_log(HELIOS_INFO, "tour");
    helios_metric_add("c", 1);
    helios_metric_set("g", 2);
    helios_metric_add_labels("cl", "k=v", 3);
    helios_metric_set_labels("gl", "k=w", 4);
    if (helios_kv_set("key", "val", 3) != 0) return helios_block("kv_set failed");
    const char *v = helios_kv_get("key", &n);
    if (!v || n != 3) return helios_block("kv_get missing");
    helios_kv_delete("key");
    if (helios_kv_get("key", &n)) return helios_block("kv_delete kept it");
    if (helios_now_ms() < 1600000000000LL) return helios_block("clock");
    const char *q = helios_json_str(json, len, "query", &qn);
    if (q && helios_starts_with_word(q, qn, "select")) return helios_rewrite("val");
    return 0;
}
HELIOS_HOOK(pre_query, tour)
"""

TS = """\
import * as h from "./helios";
export { alloc, dealloc, helios_abi_version } from "./helios";
export function pre_query(ptr: i32, len: i32): i64 {
  h.log(h.Level.Info, "tour");
  h.metricAdd("c", 1);
  h.metricSet("g", 2);
  h.metricAddLabels("cl", "k=v", 3);
  h.metricSetLabels("gl", "k=w", 4);
  if (!h.kvSet("key", "val")) return h.block("kvSet failed");
  const v = h.kvGet("key");
  if (v == null) return h.block("kvGet missing");
  if (!h.kvDelete("key")) return h.block("kvDelete failed");
  if (h.kvGet("key") != null) return h.block("kvDelete kept it");
  if (h.nowMs() < 1600000000000) return h.block("clock");
  const q = h.jsonString(h.input(ptr, len), "query");
  if (q != null && h.startsWithWord(q, "select")) return h.rewrite(v!);
  return h.proceed();
}
"""

SOURCES = {"zig": ("tour.zig", ZIG), "c": ("tour.c", C), "assemblyscript": ("tour.ts", TS)}


def heliosproxy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heliosproxy", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.parametrize("lang", sorted(SOURCES))
def test_every_host_wrapper(lang: str, tmp_path: Path) -> None:
    assert heliosproxy("plugin", "new", "tour", "--lang", lang, "--dir", tmp_path).returncode == 0
    project = tmp_path / "tour"
    filename, source = SOURCES[lang]
    (project / filename).write_text(source)
    manifest = project / "tour.yaml"
    manifest.write_text(manifest.read_text().replace("permissions: []", "permissions: [log, metrics, kv, clock]"))
    result = heliosproxy("plugin", "build", project)
    assert result.returncode == 0, result.stderr
    ctx = project / "ctx.json"
    result = heliosproxy("plugin", "test", project, "--hook", "pre_query", "--context", ctx)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == {"action": "rewrite", "query": "val"}
    assert result.stderr.splitlines() == [
        "plugin tour log[1]: tour",
        "metric add c{} 1.0",
        "metric set g{} 2.0",
        "metric add cl{k=v} 3.0",
        "metric set gl{k=w} 4.0",
    ]
    doc = json.loads(ctx.read_text())
    doc["query"] = "UPDATE t SET a = 1"
    ctx.write_text(json.dumps(doc))
    result = heliosproxy("plugin", "test", project, "--hook", "pre_query", "--context", ctx)
    assert json.loads(result.stdout)["answer"] == {"action": "continue"}
