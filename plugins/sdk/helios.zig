//! HeliosProxy guest SDK for Zig: the plugin ABI v1 (exports, memory, JSON in/out, host imports).
//!
//! Import it as the module "helios" (plugins/build.sh passes `--dep helios -Mhelios=plugins/sdk/helios.zig`).
//! Importing it exports `alloc`, `dealloc` and `helios_abi_version` for you; a plugin then exports one
//! function per hook it implements:
//!
//!     const h = @import("helios");
//!     export fn pre_query(ptr: i32, len: i32) i64 {
//!         return h.run(ptr, len, preQuery);
//!     }
//!     fn preQuery(ctx: h.Value) i64 {
//!         const q = ctx.getStr("query") orelse return h.proceed();
//!         if (h.sql.startsWithKeyword(q, "vacuum")) return h.block("no VACUUM through the proxy");
//!         return h.proceed();
//!     }
//!
//! Host functions (module "helios") are imported only when a plugin calls their wrapper here, so a
//! plugin needs manifest permissions only for what it really uses.
const std = @import("std");

/// The ABI version this SDK speaks; the host refuses modules reporting anything else.
pub const abi_version: i32 = 1;

// ---------------------------------------------------------------------------------------------
// Memory: a bump arena over linear memory above everything the linker placed.
//
// The host calls `alloc` to get room for a hook's input, then calls the hook. Everything the arena
// handed out stays valid until the host's first `alloc` after a hook (or `init`) returned: that
// call rewinds the arena. So a hook's answer is readable until the host asks for memory again, and
// `alloc` calls made while a hook runs (the host copying a kv_get value in) never rewind anything.
// `keep()` makes everything allocated so far permanent (the SDK uses it for the config in `init`).
// ---------------------------------------------------------------------------------------------

const page_size: usize = 65536;

var arena_base: usize = 0; // first byte the arena may rewind to; 0 = not set up yet
var arena_top: usize = 0; // next free byte
var arena_end: usize = 0; // end of linear memory
var in_hook: bool = false;
var stale: bool = false; // a hook returned since the last rewind

fn arenaSetup() void {
    if (arena_base != 0) return;
    arena_end = @wasmMemorySize(0) * page_size;
    arena_base = arena_end;
    arena_top = arena_end;
}

fn ensure(end: usize) bool {
    if (end <= arena_end) return true;
    const pages = (end - arena_end + page_size - 1) / page_size;
    if (@wasmMemoryGrow(0, pages) < 0) return false;
    arena_end = @wasmMemorySize(0) * page_size;
    return end <= arena_end;
}

/// Allocate `n` bytes (8-byte aligned) from the arena; null when linear memory cannot grow.
pub fn allocBytes(n: usize) ?[]u8 {
    arenaSetup();
    const start = (arena_top + 7) & ~@as(usize, 7);
    if (!ensure(start + n)) return null;
    arena_top = start + n;
    const p: [*]u8 = @ptrFromInt(start);
    return p[0..n];
}

/// Grow `buf` in place to `n` bytes if it is the arena's last allocation.
fn extendInPlace(buf: []u8, n: usize) ?[]u8 {
    if (@intFromPtr(buf.ptr) + buf.len != arena_top) return null;
    const start = @intFromPtr(buf.ptr);
    if (!ensure(start + n)) return null;
    arena_top = start + n;
    return buf.ptr[0..n];
}

/// Make every allocation made so far permanent (never rewound). Meant for `init`.
pub fn keep() void {
    arenaSetup();
    arena_base = (arena_top + 7) & ~@as(usize, 7);
    if (arena_base > arena_top) arena_top = arena_base;
}

export fn alloc(len: i32) i32 {
    if (len < 0) return 0;
    if (!in_hook and stale) {
        arena_top = arena_base;
        stale = false;
    }
    const buf = allocBytes(@intCast(len)) orelse return 0;
    return @intCast(@intFromPtr(buf.ptr));
}

export fn dealloc(ptr: i32, len: i32) void {
    // Only the most recent allocation can be given back; the rest goes at the next rewind.
    if (ptr <= 0 or len < 0) return;
    const p: usize = @intCast(ptr);
    const l: usize = @intCast(len);
    if (p + l == arena_top and p >= arena_base) arena_top = p;
}

export fn helios_abi_version() i32 {
    return abi_version;
}

/// Pack an answer located in guest memory the way the host reads it: ptr << 32 | len.
pub fn pack(bytes: []const u8) i64 {
    const p: u64 = @intCast(@intFromPtr(bytes.ptr));
    return @bitCast((p << 32) | @as(u64, @intCast(bytes.len)));
}

fn unpack(v: i64) ?[]const u8 {
    if (v == 0) return null;
    const u: u64 = @bitCast(v);
    const p: usize = @intCast(u >> 32);
    const l: usize = @intCast(u & 0xffff_ffff);
    const ptr: [*]const u8 = @ptrFromInt(p);
    return ptr[0..l];
}

/// The bytes the host wrote for a hook call.
pub fn inputBytes(ptr: i32, len: i32) []const u8 {
    if (ptr <= 0 or len <= 0) return "";
    const p: [*]const u8 = @ptrFromInt(@as(usize, @intCast(ptr)));
    return p[0..@intCast(len)];
}

/// Run a hook body: bookkeeping for the arena, parse the input JSON lazily, return the answer.
/// `f` returns 0 for the default result or a packed answer built with the result helpers below.
pub fn run(ptr: i32, len: i32, comptime f: fn (Value) i64) i64 {
    in_hook = true;
    defer {
        in_hook = false;
        stale = true;
    }
    return f(Value.of(inputBytes(ptr, len)));
}

// ---------------------------------------------------------------------------------------------
// Plugin configuration (the manifest's `config`, as JSON, handed to `init`).
// ---------------------------------------------------------------------------------------------

var config_json: []const u8 = "{}";

/// The body of an `init` export: stores the config permanently and returns 0 (success).
///     export fn init(ptr: i32, len: i32) i64 { return h.init(ptr, len); }
pub fn init(ptr: i32, len: i32) i64 {
    in_hook = true;
    defer {
        in_hook = false;
        stale = true;
    }
    const src = inputBytes(ptr, len);
    const copy = allocBytes(src.len) orelse @trap();
    @memcpy(copy, src);
    keep();
    const v = Value.of(copy);
    config_json = if (v.kind() == .object) copy else "{}";
    return 0;
}

/// The answer of an `init` that cannot work with its config: the host refuses to load the plugin
/// and logs `reason`.   export fn init(ptr: i32, len: i32) i64 { ...; return h.refuseConfig("…"); }
pub fn refuseConfig(reason: []const u8) i64 {
    var o = Out.init();
    o.raw("{\"error\":");
    o.string(reason);
    o.byte('}');
    return o.finish();
}

/// The plugin's config object ({} when the manifest has none or `init` is not exported).
pub fn config() Value {
    return Value.of(config_json);
}

// ---------------------------------------------------------------------------------------------
// JSON reading: a lazy view over the input text. Nothing is parsed until asked for, which keeps a
// hook's cost (and fuel) proportional to what it reads.
// ---------------------------------------------------------------------------------------------

pub const Kind = enum { object, array, string, number, boolean, null, invalid };

fn isWs(c: u8) bool {
    return c == ' ' or c == '\t' or c == '\n' or c == '\r';
}

fn skipWs(s: []const u8, i: usize) usize {
    var j = i;
    while (j < s.len and isWs(s[j])) j += 1;
    return j;
}

/// Index just past the JSON value starting at s[i]; null if it is malformed.
fn skipValue(s: []const u8, i: usize) ?usize {
    if (i >= s.len) return null;
    switch (s[i]) {
        '"' => {
            var j = i + 1;
            while (j < s.len) : (j += 1) {
                if (s[j] == '\\') {
                    j += 1;
                } else if (s[j] == '"') {
                    return j + 1;
                }
            }
            return null;
        },
        '{', '[' => {
            var depth: usize = 0;
            var j = i;
            while (j < s.len) : (j += 1) {
                switch (s[j]) {
                    '{', '[' => depth += 1,
                    '}', ']' => {
                        depth -= 1;
                        if (depth == 0) return j + 1;
                    },
                    '"' => j = (skipValue(s, j) orelse return null) - 1,
                    else => {},
                }
            }
            return null;
        },
        else => {
            var j = i;
            while (j < s.len and s[j] != ',' and s[j] != '}' and s[j] != ']' and !isWs(s[j])) j += 1;
            return if (j == i) null else j;
        },
    }
}

pub const Value = struct {
    raw: []const u8,

    /// View a JSON document (surrounding whitespace ignored).
    pub fn of(text: []const u8) Value {
        var a: usize = 0;
        var b: usize = text.len;
        while (a < b and isWs(text[a])) a += 1;
        while (b > a and isWs(text[b - 1])) b -= 1;
        return .{ .raw = text[a..b] };
    }

    pub fn kind(v: Value) Kind {
        if (v.raw.len == 0) return .invalid;
        return switch (v.raw[0]) {
            '{' => .object,
            '[' => .array,
            '"' => .string,
            't', 'f' => .boolean,
            'n' => .null,
            '-', '0'...'9' => .number,
            else => .invalid,
        };
    }

    /// Member `key` of an object.
    pub fn get(v: Value, key: []const u8) ?Value {
        var it = v.entries();
        while (it.next()) |e| {
            if (e.keyIs(key)) return e.value;
        }
        return null;
    }

    /// Follow a path of object keys: v.path(&.{ "hook_context", "attributes", "tenant" }).
    pub fn path(v: Value, keys: []const []const u8) ?Value {
        var cur = v;
        for (keys) |k| cur = cur.get(k) orelse return null;
        return cur;
    }

    /// Element `idx` of an array.
    pub fn at(v: Value, idx: usize) ?Value {
        var it = v.items();
        var n: usize = 0;
        while (it.next()) |item| : (n += 1) {
            if (n == idx) return item;
        }
        return null;
    }

    /// The decoded string (escapes resolved; may allocate from the arena). Null if not a string.
    pub fn str(v: Value) ?[]const u8 {
        if (v.kind() != .string or v.raw.len < 2) return null;
        return decodeString(v.raw[1 .. v.raw.len - 1]);
    }

    /// Shorthand for get(key) then str().
    pub fn getStr(v: Value, key: []const u8) ?[]const u8 {
        const m = v.get(key) orelse return null;
        return m.str();
    }

    pub fn boolean(v: Value) ?bool {
        if (std.mem.eql(u8, v.raw, "true")) return true;
        if (std.mem.eql(u8, v.raw, "false")) return false;
        return null;
    }

    pub fn isNull(v: Value) bool {
        return std.mem.eql(u8, v.raw, "null");
    }

    /// An integer (a fraction or exponent is refused). Null if not a number.
    pub fn int(v: Value) ?i64 {
        if (v.kind() != .number) return null;
        return parseInt(v.raw);
    }

    pub fn entries(v: Value) ObjectIter {
        return .{ .s = v.raw, .pos = if (v.kind() == .object) 1 else v.raw.len };
    }

    pub fn items(v: Value) ArrayIter {
        return .{ .s = v.raw, .pos = if (v.kind() == .array) 1 else v.raw.len };
    }
};

pub const Entry = struct {
    key_raw: []const u8, // between the quotes, escapes not resolved
    value: Value,

    pub fn key(e: Entry) []const u8 {
        return decodeString(e.key_raw) orelse e.key_raw;
    }

    pub fn keyIs(e: Entry, name: []const u8) bool {
        if (std.mem.indexOfScalar(u8, e.key_raw, '\\') == null) return std.mem.eql(u8, e.key_raw, name);
        return std.mem.eql(u8, e.key(), name);
    }
};

pub const ObjectIter = struct {
    s: []const u8,
    pos: usize,

    pub fn next(it: *ObjectIter) ?Entry {
        var i = skipWs(it.s, it.pos);
        if (i < it.s.len and it.s[i] == ',') i = skipWs(it.s, i + 1);
        if (i >= it.s.len or it.s[i] != '"') return it.stop();
        const kend = skipValue(it.s, i) orelse return it.stop();
        const key_raw = it.s[i + 1 .. kend - 1];
        i = skipWs(it.s, kend);
        if (i >= it.s.len or it.s[i] != ':') return it.stop();
        i = skipWs(it.s, i + 1);
        const vend = skipValue(it.s, i) orelse return it.stop();
        it.pos = vend;
        return .{ .key_raw = key_raw, .value = .{ .raw = it.s[i..vend] } };
    }

    fn stop(it: *ObjectIter) ?Entry {
        it.pos = it.s.len;
        return null;
    }
};

pub const ArrayIter = struct {
    s: []const u8,
    pos: usize,

    pub fn next(it: *ArrayIter) ?Value {
        var i = skipWs(it.s, it.pos);
        if (i < it.s.len and it.s[i] == ',') i = skipWs(it.s, i + 1);
        if (i >= it.s.len or it.s[i] == ']') {
            it.pos = it.s.len;
            return null;
        }
        const end = skipValue(it.s, i) orelse {
            it.pos = it.s.len;
            return null;
        };
        it.pos = end;
        return .{ .raw = it.s[i..end] };
    }
};

fn parseInt(s: []const u8) ?i64 {
    var i: usize = 0;
    var neg = false;
    if (i < s.len and s[i] == '-') {
        neg = true;
        i += 1;
    }
    if (i >= s.len) return null;
    var n: i64 = 0;
    while (i < s.len) : (i += 1) {
        const c = s[i];
        if (c < '0' or c > '9') return null;
        n = std.math.mul(i64, n, 10) catch return null;
        n = std.math.add(i64, n, c - '0') catch return null;
    }
    return if (neg) -n else n;
}

fn hexVal(c: u8) ?u21 {
    return switch (c) {
        '0'...'9' => c - '0',
        'a'...'f' => c - 'a' + 10,
        'A'...'F' => c - 'A' + 10,
        else => null,
    };
}

fn hex4(s: []const u8, i: usize) ?u21 {
    if (i + 4 > s.len) return null;
    var v: u21 = 0;
    for (s[i .. i + 4]) |c| v = v * 16 + (hexVal(c) orelse return null);
    return v;
}

fn putUtf8(out: []u8, o: usize, cp: u21) usize {
    if (cp < 0x80) {
        out[o] = @intCast(cp);
        return o + 1;
    } else if (cp < 0x800) {
        out[o] = @intCast(0xC0 | (cp >> 6));
        out[o + 1] = @intCast(0x80 | (cp & 0x3F));
        return o + 2;
    } else if (cp < 0x10000) {
        out[o] = @intCast(0xE0 | (cp >> 12));
        out[o + 1] = @intCast(0x80 | ((cp >> 6) & 0x3F));
        out[o + 2] = @intCast(0x80 | (cp & 0x3F));
        return o + 3;
    }
    out[o] = @intCast(0xF0 | (cp >> 18));
    out[o + 1] = @intCast(0x80 | ((cp >> 12) & 0x3F));
    out[o + 2] = @intCast(0x80 | ((cp >> 6) & 0x3F));
    out[o + 3] = @intCast(0x80 | (cp & 0x3F));
    return o + 4;
}

/// Resolve JSON escapes in the text between a string's quotes.
fn decodeString(s: []const u8) ?[]const u8 {
    if (std.mem.indexOfScalar(u8, s, '\\') == null) return s;
    const out = allocBytes(s.len) orelse return null; // decoded text is never longer
    var i: usize = 0;
    var o: usize = 0;
    while (i < s.len) {
        const c = s[i];
        if (c != '\\') {
            out[o] = c;
            o += 1;
            i += 1;
            continue;
        }
        if (i + 1 >= s.len) return null;
        const e = s[i + 1];
        i += 2;
        const simple: ?u8 = switch (e) {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => 8,
            'f' => 12,
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            else => null,
        };
        if (simple) |ch| {
            out[o] = ch;
            o += 1;
            continue;
        }
        if (e != 'u') return null;
        var cp = hex4(s, i) orelse return null;
        i += 4;
        if (cp >= 0xD800 and cp < 0xDC00 and i + 6 <= s.len and s[i] == '\\' and s[i + 1] == 'u') {
            if (hex4(s, i + 2)) |lo| {
                if (lo >= 0xDC00 and lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
        }
        if (cp >= 0xD800 and cp < 0xE000) cp = 0xFFFD; // lone surrogate
        o = putUtf8(out, o, cp);
    }
    return out[0..o];
}

// ---------------------------------------------------------------------------------------------
// JSON writing and results.
// ---------------------------------------------------------------------------------------------

/// A growing output buffer in the arena. Traps if linear memory runs out (the host then counts a
/// plugin error and applies the plugin's fail mode).
pub const Out = struct {
    buf: []u8,
    len: usize = 0,

    pub fn init() Out {
        return .{ .buf = allocBytes(256) orelse @trap() };
    }

    fn reserve(o: *Out, extra: usize) void {
        const need = o.len + extra;
        if (need <= o.buf.len) return;
        var cap = o.buf.len * 2;
        if (cap < need) cap = need;
        if (extendInPlace(o.buf, cap)) |b| {
            o.buf = b;
            return;
        }
        const nb = allocBytes(cap) orelse @trap();
        @memcpy(nb[0..o.len], o.buf[0..o.len]);
        o.buf = nb;
    }

    /// Append bytes as they are.
    pub fn raw(o: *Out, s: []const u8) void {
        o.reserve(s.len);
        @memcpy(o.buf[o.len .. o.len + s.len], s);
        o.len += s.len;
    }

    pub fn byte(o: *Out, c: u8) void {
        o.reserve(1);
        o.buf[o.len] = c;
        o.len += 1;
    }

    /// Append a JSON string literal (quoted, escaped).
    pub fn string(o: *Out, s: []const u8) void {
        const hexd = "0123456789abcdef";
        o.reserve(s.len + 2);
        o.byte('"');
        for (s) |c| {
            switch (c) {
                '"' => o.raw("\\\""),
                '\\' => o.raw("\\\\"),
                '\n' => o.raw("\\n"),
                '\r' => o.raw("\\r"),
                '\t' => o.raw("\\t"),
                0...8, 11, 12, 14...0x1f => {
                    o.raw("\\u00");
                    o.byte(hexd[c >> 4]);
                    o.byte(hexd[c & 15]);
                },
                else => o.byte(c),
            }
        }
        o.byte('"');
    }

    /// Append a string literal or `null`.
    pub fn optString(o: *Out, s: ?[]const u8) void {
        if (s) |v| o.string(v) else o.raw("null");
    }

    pub fn int(o: *Out, v: i64) void {
        var tmp: [24]u8 = undefined;
        o.raw(formatInt(&tmp, v));
    }

    pub fn bytes(o: *const Out) []const u8 {
        return o.buf[0..o.len];
    }

    /// The packed pointer/length a hook returns.
    pub fn finish(o: *const Out) i64 {
        return pack(o.bytes());
    }
};

/// Decimal text of `v` in `tmp`.
pub fn formatInt(tmp: *[24]u8, v: i64) []const u8 {
    var i: usize = tmp.len;
    var u: u64 = if (v < 0) @intCast(-(v + 1)) else @intCast(v);
    if (v < 0) u += 1;
    while (true) {
        i -= 1;
        tmp[i] = @intCast('0' + u % 10);
        u /= 10;
        if (u == 0) break;
    }
    if (v < 0) {
        i -= 1;
        tmp[i] = '-';
    }
    return tmp[i..];
}

fn actionWith(action: []const u8, field: []const u8, value: []const u8) i64 {
    var o = Out.init();
    o.raw("{\"action\":\"");
    o.raw(action);
    o.raw("\",\"");
    o.raw(field);
    o.raw("\":");
    o.string(value);
    o.byte('}');
    return o.finish();
}

/// The default answer of every hook: 0 (Continue / Default / Defer).
pub fn proceed() i64 {
    return 0;
}

/// pre_query / route: refuse the statement; the client gets SQLSTATE 42000 with `reason`.
pub fn block(reason: []const u8) i64 {
    return actionWith("block", "reason", reason);
}

/// pre_query: forward `query` instead of the client's text.
pub fn rewrite(query: []const u8) i64 {
    return actionWith("rewrite", "query", query);
}

/// pre_query: answer the statement from the plugin; every cell is text or null.
pub fn cached(columns: []const []const u8, rows: []const []const ?[]const u8) i64 {
    var o = Out.init();
    o.raw("{\"action\":\"cached\",\"columns\":[");
    for (columns, 0..) |c, i| {
        if (i > 0) o.byte(',');
        o.string(c);
    }
    o.raw("],\"rows\":[");
    for (rows, 0..) |row, i| {
        if (i > 0) o.byte(',');
        o.byte('[');
        for (row, 0..) |cell, j| {
            if (j > 0) o.byte(',');
            o.optString(cell);
        }
        o.byte(']');
    }
    o.raw("]}");
    return o.finish();
}

/// route: send the statement to the primary.
pub fn routePrimary() i64 {
    return pack("{\"action\":\"primary\"}");
}

/// route: send the statement to any healthy standby.
pub fn routeStandby() i64 {
    return pack("{\"action\":\"standby\"}");
}

/// route: send the statement to the node named `name` (as in the proxy's `nodes` config).
pub fn routeNode(name: []const u8) i64 {
    return actionWith("node", "name", name);
}

/// route: send the statement to the branch named `name` (as in the proxy's `branches` config).
pub fn routeBranch(name: []const u8) i64 {
    return actionWith("branch", "name", name);
}

/// authenticate / authorize: accept the client as identity {"name": name}.
pub fn authSuccess(name: []const u8) i64 {
    var o = Out.init();
    o.raw("{\"action\":\"success\",\"identity\":{\"name\":");
    o.string(name);
    o.raw("}}");
    return o.finish();
}

/// authenticate / authorize: refuse the login (the client gets SQLSTATE 28000 with `reason`).
pub fn authDenied(reason: []const u8) i64 {
    return actionWith("denied", "reason", reason);
}

// ---------------------------------------------------------------------------------------------
// Host functions (module "helios"). Each needs its permission in the manifest:
// log → log, metric_add/metric_set/metric_add_labels/metric_set_labels → metrics, kv_get/kv_set/kv_delete → kv, now_ms → clock,
// emit_event → events.
// ---------------------------------------------------------------------------------------------

const host = struct {
    extern "helios" fn log(level: i32, ptr: [*]const u8, len: i32) void;
    extern "helios" fn metric_add(name_ptr: [*]const u8, name_len: i32, value: f64) void;
    extern "helios" fn metric_set(name_ptr: [*]const u8, name_len: i32, value: f64) void;
    extern "helios" fn metric_add_labels(name_ptr: [*]const u8, name_len: i32, labels_ptr: [*]const u8, labels_len: i32, value: f64) void;
    extern "helios" fn metric_set_labels(name_ptr: [*]const u8, name_len: i32, labels_ptr: [*]const u8, labels_len: i32, value: f64) void;
    extern "helios" fn kv_get(key_ptr: [*]const u8, key_len: i32) i64;
    extern "helios" fn kv_set(key_ptr: [*]const u8, key_len: i32, val_ptr: [*]const u8, val_len: i32) i32;
    extern "helios" fn kv_delete(key_ptr: [*]const u8, key_len: i32) i32;
    extern "helios" fn now_ms() i64;
    extern "helios" fn emit_event(ptr: [*]const u8, len: i32) i32;
};

/// Log levels as the host numbers them (anything else is logged as info).
pub const Level = enum(i32) { debug = 0, info = 1, warn = 2, err = 3 };

/// Write a line to the proxy's log, attributed to this plugin. Permission: log.
pub fn log(level: Level, msg: []const u8) void {
    host.log(@intFromEnum(level), msg.ptr, @intCast(msg.len));
}

/// Add `value` to the counter `name` (a Prometheus counter labelled with the plugin). Permission: metrics.
pub fn metricAdd(name: []const u8, value: f64) void {
    host.metric_add(name.ptr, @intCast(name.len), value);
}

/// Set the gauge `name` to `value` (Prometheus heliosproxy_plugin_gauge). Permission: metrics.
pub fn metricSet(name: []const u8, value: f64) void {
    host.metric_set(name.ptr, @intCast(name.len), value);
}

/// Add `value` to the counter `name` with labels written `"k=v,k2=v2"` (at most 4 labels; keep
/// their values to a small set: a plugin has at most 256 series). Permission: metrics.
pub fn metricAddLabels(name: []const u8, labels: []const u8, value: f64) void {
    host.metric_add_labels(name.ptr, @intCast(name.len), labels.ptr, @intCast(labels.len), value);
}

/// Set the gauge `name` with labels `"k=v,k2=v2"` to `value`. Permission: metrics.
pub fn metricSetLabels(name: []const u8, labels: []const u8, value: f64) void {
    host.metric_set_labels(name.ptr, @intCast(name.len), labels.ptr, @intCast(labels.len), value);
}

/// Read `key` from this plugin's key-value namespace; null when missing. The value lives in the
/// arena (valid until the hook returns). Permission: kv.
pub fn kvGet(key: []const u8) ?[]const u8 {
    return unpack(host.kv_get(key.ptr, @intCast(key.len)));
}

/// Store `value` under `key`; false when the namespace's limits refuse it. Permission: kv.
pub fn kvSet(key: []const u8, value: []const u8) bool {
    return host.kv_set(key.ptr, @intCast(key.len), value.ptr, @intCast(value.len)) == 0;
}

/// Remove `key` (removing a missing key is not an error); false if the host reported an error.
/// Permission: kv.
pub fn kvDelete(key: []const u8) bool {
    return host.kv_delete(key.ptr, @intCast(key.len)) >= 0;
}

/// Milliseconds since the Unix epoch, from the host's clock. Permission: clock.
pub fn nowMs() i64 {
    return host.now_ms();
}

/// Event severities, lowest first (the host refuses any other spelling).
pub const Severity = enum { info, low, medium, high, critical };

/// Report an event (an anomaly, a probe, ...): the host keeps it in a bounded list served at
/// /api/anomalies as {"plugin", "kind", "severity", "tenant", "detail", "at"} and counts it in this
/// plugin's metrics (counter `events{kind, severity}`). `kind` is [A-Za-z_][A-Za-z0-9_]* (at most
/// 64 bytes; keep it to a small fixed set); `tenant` may be null; `detail` is free text (1 KiB kept).
/// False when the host refused the event. Permission: events.
pub fn emitEvent(kind: []const u8, severity: Severity, tenant: ?[]const u8, detail: []const u8) bool {
    var o = Out.init();
    o.raw("{\"kind\":");
    o.string(kind);
    o.raw(",\"severity\":\"");
    o.raw(@tagName(severity));
    o.raw("\",\"tenant\":");
    o.optString(tenant);
    o.raw(",\"detail\":");
    o.string(if (detail.len > 1024) detail[0..1024] else detail);
    o.byte('}');
    const b = o.bytes();
    return host.emit_event(b.ptr, @intCast(b.len)) == 0;
}

// ---------------------------------------------------------------------------------------------
// SQL text helpers: a small lexer that knows comments, string literals, quoted identifiers and
// dollar quotes, so keyword checks do not trip over `'drop'` or `-- delete`.
// ---------------------------------------------------------------------------------------------

pub const sql = struct {
    pub const TokenKind = enum { word, quoted_ident, string, semicolon, lparen, rparen, comment, other };

    pub const Token = struct {
        kind: TokenKind,
        text: []const u8, // for comments: the body without /* */ or --
        start: usize,
        end: usize,

        /// A word equal to `kw`, ignoring ASCII case.
        pub fn is(t: Token, kw: []const u8) bool {
            return t.kind == .word and std.ascii.eqlIgnoreCase(t.text, kw);
        }
    };

    fn isWordChar(c: u8) bool {
        return std.ascii.isAlphanumeric(c) or c == '_' or c >= 0x80;
    }

    /// Every lexeme including comments; whitespace is skipped.
    pub const Lexer = struct {
        s: []const u8,
        pos: usize = 0,

        pub fn next(lx: *Lexer) ?Token {
            const s = lx.s;
            var i = lx.pos;
            while (i < s.len and std.ascii.isWhitespace(s[i])) i += 1;
            if (i >= s.len) {
                lx.pos = i;
                return null;
            }
            const start = i;
            const c = s[i];
            var kind: TokenKind = .other;
            var body_start = start;
            var body_end: usize = 0;
            if (c == '-' and i + 1 < s.len and s[i + 1] == '-') {
                kind = .comment;
                i += 2;
                body_start = i;
                while (i < s.len and s[i] != '\n') i += 1;
                body_end = i;
            } else if (c == '/' and i + 1 < s.len and s[i + 1] == '*') {
                kind = .comment;
                i += 2;
                body_start = i;
                body_end = s.len;
                var depth: usize = 1;
                while (i < s.len) {
                    if (s[i] == '/' and i + 1 < s.len and s[i + 1] == '*') {
                        depth += 1;
                        i += 2;
                    } else if (s[i] == '*' and i + 1 < s.len and s[i + 1] == '/') {
                        depth -= 1;
                        i += 2;
                        if (depth == 0) {
                            body_end = i - 2;
                            break;
                        }
                    } else i += 1;
                }
            } else if (c == '\'' or c == '"') {
                kind = if (c == '\'') .string else .quoted_ident;
                i += 1;
                body_start = i;
                body_end = s.len;
                while (i < s.len) {
                    if (s[i] == c) {
                        if (i + 1 < s.len and s[i + 1] == c) {
                            i += 2; // doubled quote
                            continue;
                        }
                        body_end = i;
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            } else if (c == '$' and dollarTagEnd(s, i) != null) {
                const tag_end = dollarTagEnd(s, i).?;
                const tag = s[i..tag_end];
                kind = .string;
                body_start = tag_end;
                body_end = s.len;
                i = s.len;
                if (indexOfFrom(s, tag_end, tag)) |close| {
                    body_end = close;
                    i = close + tag.len;
                }
            } else if (isWordChar(c)) {
                kind = .word;
                while (i < s.len and (isWordChar(s[i]) or s[i] == '$')) i += 1;
                body_end = i;
            } else {
                kind = switch (c) {
                    ';' => .semicolon,
                    '(' => .lparen,
                    ')' => .rparen,
                    else => .other,
                };
                i += 1;
                body_end = i;
            }
            lx.pos = i;
            return .{ .kind = kind, .text = s[body_start..body_end], .start = start, .end = i };
        }
    };

    /// `$tag$` or `$$` starting at s[i]: index past the tag's closing `$`.
    fn dollarTagEnd(s: []const u8, i: usize) ?usize {
        var j = i + 1;
        if (j < s.len and std.ascii.isDigit(s[j])) return null; // $1 parameter
        while (j < s.len and (std.ascii.isAlphanumeric(s[j]) or s[j] == '_')) j += 1;
        if (j < s.len and s[j] == '$') return j + 1;
        return null;
    }

    fn indexOfFrom(s: []const u8, from: usize, needle: []const u8) ?usize {
        if (needle.len == 0 or s.len < needle.len) return null;
        var i = from;
        while (i + needle.len <= s.len) : (i += 1) {
            if (std.mem.eql(u8, s[i .. i + needle.len], needle)) return i;
        }
        return null;
    }

    /// Tokens without comments.
    pub const Tokens = struct {
        lx: Lexer,

        pub fn init(q: []const u8) Tokens {
            return .{ .lx = .{ .s = q } };
        }

        pub fn next(t: *Tokens) ?Token {
            while (t.lx.next()) |tok| {
                if (tok.kind != .comment) return tok;
            }
            return null;
        }
    };

    /// The first keyword of the statement (after whitespace and comments), or null.
    pub fn firstWord(q: []const u8) ?[]const u8 {
        var t = Tokens.init(q);
        const tok = t.next() orelse return null;
        return if (tok.kind == .word) tok.text else null;
    }

    /// Whether the statement starts with `kw` (ignoring case, leading whitespace and comments).
    pub fn startsWithKeyword(q: []const u8, kw: []const u8) bool {
        const w = firstWord(q) orelse return false;
        return std.ascii.eqlIgnoreCase(w, kw);
    }

    /// Whether `kw` appears as a word outside strings and comments.
    pub fn containsKeyword(q: []const u8, kw: []const u8) bool {
        var t = Tokens.init(q);
        while (t.next()) |tok| {
            if (tok.is(kw)) return true;
        }
        return false;
    }

    /// The value of a comment hint such as `/*tenant=acme*/` (prefix "tenant=") or
    /// `/* cache:hello */` (prefix "cache:"): the text after the prefix up to whitespace.
    pub fn hint(q: []const u8, prefix: []const u8) ?[]const u8 {
        var lx = Lexer{ .s = q };
        while (lx.next()) |tok| {
            if (tok.kind != .comment) continue;
            var body = tok.text;
            var a: usize = 0;
            while (a < body.len and std.ascii.isWhitespace(body[a])) a += 1;
            body = body[a..];
            if (!std.ascii.startsWithIgnoreCase(body, prefix)) continue;
            const rest = body[prefix.len..];
            var e: usize = 0;
            while (e < rest.len and !std.ascii.isWhitespace(rest[e])) e += 1;
            if (e > 0) return rest[0..e];
        }
        return null;
    }

    /// Whether the text holds more than one statement (a `;` followed by anything but comments).
    pub fn isMultiStatement(q: []const u8) bool {
        var t = Tokens.init(q);
        var seen_semicolon = false;
        while (t.next()) |tok| {
            if (tok.kind == .semicolon) {
                seen_semicolon = true;
            } else if (seen_semicolon) return true;
        }
        return false;
    }
};

/// ASCII case-insensitive substring search.
pub fn containsIgnoreCase(haystack: []const u8, needle: []const u8) bool {
    if (needle.len == 0) return true;
    if (haystack.len < needle.len) return false;
    var i: usize = 0;
    while (i + needle.len <= haystack.len) : (i += 1) {
        if (std.ascii.eqlIgnoreCase(haystack[i .. i + needle.len], needle)) return true;
    }
    return false;
}
