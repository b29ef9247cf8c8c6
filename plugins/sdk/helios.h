/* helios.h: the HeliosProxy plugin SDK for C (ABI v1), header only, no libc.
 *
 * Build (what `heliosproxy plugin build` runs):
 *   python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -Wl,--no-entry \
 *       -o build/NAME.wasm NAME.c
 *
 * Including this header defines the required exports (memory, alloc, dealloc,
 * helios_abi_version) and a bump arena that rewinds at the first alloc after a hook returned.
 * Write each hook with HELIOS_HOOK(export_name, function): the function gets the input JSON
 * (not NUL-terminated) and returns 0 (the hook's default) or an answer from helios_answer(),
 * helios_block(), helios_rewrite().
 * Host functions need their manifest permission: helios_log (log), helios_metric_* (metrics),
 * helios_kv_* (kv), helios_now_ms (clock), helios_emit_event (events). Only the ones you call end up imported.
 */
#ifndef HELIOS_H
#define HELIOS_H

#include <stddef.h>
#include <stdint.h>

#define HELIOS_EXPORT(name) __attribute__((export_name(#name)))
#define HELIOS_IMPORT(name) __attribute__((import_module("helios"), import_name(#name)))

HELIOS_IMPORT(log) void helios_host_log(int32_t level, const char *ptr, int32_t len);
HELIOS_IMPORT(metric_add) void helios_host_metric_add(const char *name, int32_t name_len, double value);
HELIOS_IMPORT(metric_set) void helios_host_metric_set(const char *name, int32_t name_len, double value);
HELIOS_IMPORT(metric_add_labels) void helios_host_metric_add_labels(const char *name, int32_t name_len,
                                                                    const char *labels, int32_t labels_len,
                                                                    double value);
HELIOS_IMPORT(metric_set_labels) void helios_host_metric_set_labels(const char *name, int32_t name_len,
                                                                    const char *labels, int32_t labels_len,
                                                                    double value);
HELIOS_IMPORT(kv_get) int64_t helios_host_kv_get(const char *key, int32_t key_len);
HELIOS_IMPORT(kv_set) int32_t helios_host_kv_set(const char *key, int32_t key_len, const char *val, int32_t val_len);
HELIOS_IMPORT(kv_delete) int32_t helios_host_kv_delete(const char *key, int32_t key_len);
HELIOS_IMPORT(now_ms) int64_t helios_host_now_ms(void);
HELIOS_IMPORT(emit_event) int32_t helios_host_emit_event(const char *json, int32_t len);

enum { HELIOS_DEBUG = 0, HELIOS_INFO = 1, HELIOS_WARN = 2, HELIOS_ERROR = 3 };

/* ---- memory: a bump arena over the linear memory after the program's data and stack ---- */
extern unsigned char __heap_base;
static uintptr_t helios_top_ = 0;
static int helios_in_hook_ = 0;

static void *helios_alloc(size_t n) {
    uintptr_t base = (uintptr_t)&__heap_base;
    if (helios_top_ < base) helios_top_ = base;
    uintptr_t p = (helios_top_ + 15) & ~(uintptr_t)15;
    uintptr_t end = p + (n ? n : 1);
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t pages = (size_t)((end - have + 65535u) / 65536u);
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    helios_top_ = end;
    return (void *)p;
}

HELIOS_EXPORT(alloc) int32_t helios_export_alloc(int32_t len) {
    if (!helios_in_hook_) helios_top_ = 0; /* a new call: the previous one's memory is free */
    return (int32_t)(uintptr_t)helios_alloc((size_t)len);
}
HELIOS_EXPORT(dealloc) void helios_export_dealloc(int32_t ptr, int32_t len) { (void)ptr; (void)len; }
HELIOS_EXPORT(helios_abi_version) int32_t helios_export_abi_version(void) { return 1; }

/* HELIOS_HOOK(pre_query, my_fn) exports `pre_query`, calling int64_t my_fn(const char *json, int32_t len). */
#define HELIOS_HOOK(export, fn)                                                    \
    HELIOS_EXPORT(export) int64_t helios_hook_##export(int32_t ptr, int32_t len) { \
        helios_in_hook_ = 1;                                                       \
        int64_t r = fn((const char *)(uintptr_t)ptr, len);                         \
        helios_in_hook_ = 0;                                                       \
        return r;                                                                  \
    }

/* ---- strings ---- */
static int32_t helios_strlen(const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* 1 when `needle` occurs in hay[0..len) (case-sensitive), else 0. */
static int helios_contains(const char *hay, int32_t len, const char *needle) {
    int32_t n = helios_strlen(needle);
    for (int32_t i = 0; i + n <= len; i++) {
        int32_t j = 0;
        while (j < n && hay[i + j] == needle[j]) j++;
        if (j == n) return 1;
    }
    return 0;
}

/* The raw (still JSON-escaped) text of the first string field `"key": "..."` in json[0..len),
 * *out_len set; NULL when there is none. Enough for keyword checks on the query text. */
static const char *helios_json_str(const char *json, int32_t len, const char *key, int32_t *out_len) {
    int32_t kl = helios_strlen(key);
    for (int32_t i = 0; i + kl + 2 < len; i++) {
        if (json[i] != '"') continue;
        int32_t j = 0;
        while (j < kl && json[i + 1 + j] == key[j]) j++;
        if (j != kl || json[i + 1 + kl] != '"') continue;
        int32_t k = i + kl + 2;
        while (k < len && (json[k] == ' ' || json[k] == ':')) k++;
        if (k >= len || json[k] != '"') continue;
        int32_t start = ++k;
        while (k < len && json[k] != '"') k += (json[k] == '\\') ? 2 : 1;
        if (k > len) return 0;
        *out_len = k - start;
        return json + start;
    }
    return 0;
}

/* 1 when s[0..len) starts with the word `kw` (ASCII case-insensitive, after whitespace), else 0. */
static int helios_starts_with_word(const char *s, int32_t len, const char *kw) {
    int32_t i = 0, n = helios_strlen(kw);
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    if (len - i < n) return 0;
    for (int32_t j = 0; j < n; j++) {
        char a = s[i + j], b = kw[j];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
        if (a != b) return 0;
    }
    if (i + n == len) return 1;
    char c = s[i + n];
    return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
}

/* ---- answers ---- */
/* Pack bytes the host reads as the answer (they must stay valid until the hook returned). */
static int64_t helios_pack(const char *ptr, int32_t len) {
    return (int64_t)(((uint64_t)(uintptr_t)ptr << 32) | (uint32_t)len);
}
/* A complete JSON answer, e.g. helios_answer("{\"action\":\"continue\"}"). */
static int64_t helios_answer(const char *json) { return helios_pack(json, helios_strlen(json)); }

/* {"action":ACTION,"KEY":"VALUE"} in the arena, with VALUE escaped as a JSON string. */
static int64_t helios_action_with(const char *action, const char *key, const char *value) {
    int32_t al = helios_strlen(action), kl = helios_strlen(key), vl = helios_strlen(value);
    char *out = (char *)helios_alloc((size_t)(al + kl + 6 * vl + 32));
    if (!out) return 0;
    int32_t n = 0;
    const char *parts[] = {"{\"action\":\"", action, "\",\"", key, "\":\""};
    for (int i = 0; i < 5; i++)
        for (const char *c = parts[i]; *c; c++) out[n++] = *c;
    static const char hex[] = "0123456789abcdef";
    for (int32_t i = 0; i < vl; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            out[n++] = '\\'; out[n++] = 'u'; out[n++] = '0'; out[n++] = '0';
            out[n++] = hex[c >> 4]; out[n++] = hex[c & 15];
        } else {
            out[n++] = (char)c;
        }
    }
    out[n++] = '"';
    out[n++] = '}';
    return helios_pack(out, n);
}
/* pre_query / route: refuse the statement (the client gets SQLSTATE 42000 with `reason`). */
static int64_t helios_block(const char *reason) { return helios_action_with("block", "reason", reason); }
/* pre_query: forward `query` instead of the client's text. */
static int64_t helios_rewrite(const char *query) { return helios_action_with("rewrite", "query", query); }

/* ---- host functions ---- */
static void helios_log(int32_t level, const char *msg) { helios_host_log(level, msg, helios_strlen(msg)); }
static void helios_metric_add(const char *name, double v) { helios_host_metric_add(name, helios_strlen(name), v); }
static void helios_metric_set(const char *name, double v) { helios_host_metric_set(name, helios_strlen(name), v); }
/* labels: "k=v,k2=v2" (at most 4; a plugin has at most 256 series) */
static void helios_metric_add_labels(const char *name, const char *labels, double v) {
    helios_host_metric_add_labels(name, helios_strlen(name), labels, helios_strlen(labels), v);
}
static void helios_metric_set_labels(const char *name, const char *labels, double v) {
    helios_host_metric_set_labels(name, helios_strlen(name), labels, helios_strlen(labels), v);
}
/* The value of `key` (in the arena, *len set) or NULL when missing. */
static const char *helios_kv_get(const char *key, int32_t *len) {
    int64_t r = helios_host_kv_get(key, helios_strlen(key));
    if (r == 0) return 0;
    *len = (int32_t)(r & 0xffffffff);
    return (const char *)(uintptr_t)((uint64_t)r >> 32);
}
/* 0 stored, -1 refused by the namespace's limits. */
static int32_t helios_kv_set(const char *key, const char *val, int32_t val_len) {
    return helios_host_kv_set(key, helios_strlen(key), val, val_len);
}
static int32_t helios_kv_delete(const char *key) { return helios_host_kv_delete(key, helios_strlen(key)); }
static int64_t helios_now_ms(void) { return helios_host_now_ms(); }
/* An event for /api/anomalies: a JSON object {"kind","severity","tenant","detail"} written by the
 * caller (kind [A-Za-z_][A-Za-z0-9_]*, severity info|low|medium|high|critical). 0 kept, -1 refused. */
static int32_t helios_emit_event(const char *json) { return helios_host_emit_event(json, helios_strlen(json)); }

#endif
