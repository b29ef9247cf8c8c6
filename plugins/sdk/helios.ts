// helios.ts: the HeliosProxy plugin SDK for AssemblyScript (ABI v1).
//
// Build (what `heliosproxy plugin build` runs, asc from npm's `assemblyscript`):
//   asc NAME.ts -o build/NAME.wasm -O3 --runtime incremental
// The entry file must re-export the required exports:
//   export { alloc, dealloc, helios_abi_version } from "./helios";
// AssemblyScript's `env.abort` import is provided by the host: an abort (a failed assert, an
// uncaught throw) traps the call, and the proxy logs "abort: MESSAGE at FILE:LINE:COL".
// Host functions need their manifest permission: log (log), metricAdd/metricSet/… (metrics),
// kvGet/kvSet/kvDelete (kv), nowMs (clock), emitEvent (events). Only the ones you call end up imported.

@external("helios", "log") declare function host_log(level: i32, ptr: usize, len: i32): void;
@external("helios", "metric_add") declare function host_metric_add(name: usize, nameLen: i32, value: f64): void;
@external("helios", "metric_set") declare function host_metric_set(name: usize, nameLen: i32, value: f64): void;
@external("helios", "metric_add_labels")
declare function host_metric_add_labels(name: usize, nameLen: i32, labels: usize, labelsLen: i32, value: f64): void;
@external("helios", "metric_set_labels")
declare function host_metric_set_labels(name: usize, nameLen: i32, labels: usize, labelsLen: i32, value: f64): void;
@external("helios", "kv_get") declare function host_kv_get(key: usize, keyLen: i32): i64;
@external("helios", "kv_set") declare function host_kv_set(key: usize, keyLen: i32, val: usize, valLen: i32): i32;
@external("helios", "kv_delete") declare function host_kv_delete(key: usize, keyLen: i32): i32;
@external("helios", "now_ms") declare function host_now_ms(): i64;
@external("helios", "emit_event") declare function host_emit_event(ptr: usize, len: i32): i32;

// ---- required exports -------------------------------------------------------------------

export function alloc(len: i32): i32 {
  return <i32>heap.alloc(<usize>max(len, 1));
}

export function dealloc(ptr: i32, len: i32): void {
  if (ptr != 0) heap.free(<usize>ptr);
}

export function helios_abi_version(): i32 {
  return 1;
}

// ---- input and answers -------------------------------------------------------------------

/** The hook's input JSON as a string (call it first thing in a hook with the hook's ptr, len). */
export function input(ptr: i32, len: i32): string {
  return String.UTF8.decodeUnsafe(<usize>ptr, <usize>len);
}

/** The first string field `"key": "..."` of a JSON text, unescaped (\" \\ \n \t \/); null if absent. */
export function jsonString(json: string, key: string): string | null {
  const at = json.indexOf('"' + key + '"');
  if (at < 0) return null;
  let i = at + key.length + 2;
  while (i < json.length && (json.charAt(i) == " " || json.charAt(i) == ":")) i++;
  if (i >= json.length || json.charAt(i) != '"') return null;
  let out = "";
  for (i++; i < json.length; i++) {
    const c = json.charAt(i);
    if (c == '"') return out;
    if (c == "\\" && i + 1 < json.length) {
      const e = json.charAt(++i);
      out += e == "n" ? "\n" : e == "t" ? "\t" : e == "r" ? "\r" : e;
    } else {
      out += c;
    }
  }
  return null;
}

/** Whether `s` starts with the word `kw` (case-insensitive, after whitespace). */
export function startsWithWord(s: string, kw: string): bool {
  const t = s.trimStart().toLowerCase();
  const k = kw.toLowerCase();
  if (!t.startsWith(k)) return false;
  if (t.length == k.length) return true;
  const c = t.charCodeAt(k.length);
  return !((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 95);
}

/** Any JSON answer (the host frees it with dealloc after reading it). */
export function answer(json: string): i64 {
  const buf = String.UTF8.encode(json);
  const n = buf.byteLength;
  const p = heap.alloc(<usize>max(n, 1));
  memory.copy(p, changetype<usize>(buf), <usize>n);
  return (<i64>p << 32) | <i64>n;
}

/** A JSON string literal for `s` (quotes and escapes included). */
export function quote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c < 0x20) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else out += String.fromCharCode(c);
  }
  return out + '"';
}

/** pre_query: continue with the statement unchanged (same as returning 0). */
export function proceed(): i64 {
  return 0;
}

/** pre_query / route: refuse the statement (SQLSTATE 42000 with `reason`). */
export function block(reason: string): i64 {
  return answer('{"action":"block","reason":' + quote(reason) + "}");
}

/** pre_query: forward `query` instead of the client's text. */
export function rewrite(query: string): i64 {
  return answer('{"action":"rewrite","query":' + quote(query) + "}");
}

// ---- host functions ----------------------------------------------------------------------

export enum Level { Debug = 0, Info = 1, Warn = 2, Error = 3 }

/** Write a line to the proxy's log, tagged with the plugin's name. Permission: log. */
export function log(level: Level, msg: string): void {
  const b = String.UTF8.encode(msg);
  host_log(<i32>level, changetype<usize>(b), b.byteLength);
}

/** Add `value` to the counter `name`. Permission: metrics. */
export function metricAdd(name: string, value: f64): void {
  const n = String.UTF8.encode(name);
  host_metric_add(changetype<usize>(n), n.byteLength, value);
}

/** Set the gauge `name` to `value`. Permission: metrics. */
export function metricSet(name: string, value: f64): void {
  const n = String.UTF8.encode(name);
  host_metric_set(changetype<usize>(n), n.byteLength, value);
}

/** Counter with labels "k=v,k2=v2" (at most 4; at most 256 series per plugin). Permission: metrics. */
export function metricAddLabels(name: string, labels: string, value: f64): void {
  const n = String.UTF8.encode(name);
  const l = String.UTF8.encode(labels);
  host_metric_add_labels(changetype<usize>(n), n.byteLength, changetype<usize>(l), l.byteLength, value);
}

/** Gauge with labels "k=v,k2=v2". Permission: metrics. */
export function metricSetLabels(name: string, labels: string, value: f64): void {
  const n = String.UTF8.encode(name);
  const l = String.UTF8.encode(labels);
  host_metric_set_labels(changetype<usize>(n), n.byteLength, changetype<usize>(l), l.byteLength, value);
}

/** The value stored under `key`, or null. Permission: kv. */
export function kvGet(key: string): string | null {
  const k = String.UTF8.encode(key);
  const r = host_kv_get(changetype<usize>(k), k.byteLength);
  if (r == 0) return null;
  const p = <usize>(r >>> 32);
  const n = <usize>(r & 0xffffffff);
  const s = String.UTF8.decodeUnsafe(p, n);
  heap.free(p);
  return s;
}

/** Store `value` under `key`; false when the namespace's limits refuse it. Permission: kv. */
export function kvSet(key: string, value: string): bool {
  const k = String.UTF8.encode(key);
  const v = String.UTF8.encode(value);
  return host_kv_set(changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength) == 0;
}

/** Remove `key` (a missing key is not an error). Permission: kv. */
export function kvDelete(key: string): bool {
  const k = String.UTF8.encode(key);
  return host_kv_delete(changetype<usize>(k), k.byteLength) >= 0;
}

/** Milliseconds since the Unix epoch. Permission: clock. */
export function nowMs(): i64 {
  return host_now_ms();
}

/** An event for /api/anomalies (severity info|low|medium|high|critical; tenant may be null); false when
 * the host refused it. Permission: events. */
export function emitEvent(kind: string, severity: string, tenant: string | null, detail: string): bool {
  const doc = '{"kind":' + quote(kind) + ',"severity":' + quote(severity) + ',"tenant":' +
    (tenant == null ? "null" : quote(tenant!)) + ',"detail":' + quote(detail) + "}";
  const b = String.UTF8.encode(doc);
  return host_emit_event(changetype<usize>(b), b.byteLength) == 0;
}
