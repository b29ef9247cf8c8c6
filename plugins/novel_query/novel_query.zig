//! novel_query: a post_query observer reporting the first sight of a statement fingerprint.
//!
//! The fingerprint is a 64-bit FNV-1a hash of the statement's normalized text (constants replaced by
//! placeholders, as the proxy hands it in `normalized`). The first time a fingerprint is seen after
//! the learning period, an event `novel_query` (severity info) carries the normalized text.
//!
//! Config: {"learn_ms": 0 (fingerprints seen during the first learn_ms after load are learnt silently),
//! "max_fingerprints": 8192 (once the table is full new statements are still reported, not remembered;
//! the gauge `table_full` says so), "ignore_users": [identities never checked]}.
const std = @import("std");
const h = @import("helios");

const capacity = 16384; // open addressing, at most half full
var table: [capacity]u64 = @splat(0);
var used: usize = 0;
var max_fingerprints: usize = 8192;
var learn_until: i64 = 0;

export fn init(ptr: i32, len: i32) i64 {
    _ = h.init(ptr, len);
    const cfg = h.config();
    if (cfg.get("max_fingerprints")) |v| {
        const n = v.int() orelse return h.refuseConfig("config.max_fingerprints must be a number");
        if (n < 1 or n > capacity / 2) return h.refuseConfig("config.max_fingerprints must be 1..8192");
        max_fingerprints = @intCast(n);
    }
    if (cfg.get("learn_ms")) |v| {
        const n = v.int() orelse return h.refuseConfig("config.learn_ms must be a number");
        if (n > 0) learn_until = h.nowMs() + n;
    }
    return 0;
}

export fn post_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, postQuery);
}

fn fnv1a(s: []const u8) u64 {
    var x: u64 = 0xcbf29ce484222325;
    for (s) |c| {
        x ^= c;
        x *%= 0x100000001b3;
    }
    return if (x == 0) 1 else x;
}

/// True when `fp` was new (and is now remembered, if there is room).
fn remember(fp: u64) bool {
    var i: usize = @intCast(fp % capacity);
    while (table[i] != 0) : (i = (i + 1) % capacity) {
        if (table[i] == fp) return false;
    }
    if (used < max_fingerprints) {
        table[i] = fp;
        used += 1;
        h.metricSet("fingerprints", @floatFromInt(used));
        if (used == max_fingerprints) h.metricSet("table_full", 1);
    }
    return true;
}

fn ignored(ctx: h.Value) bool {
    const list = h.config().get("ignore_users") orelse return false;
    var it = list.items();
    var next = it.next() orelse return false; // an empty list: nothing to look up
    const who = (ctx.path(&.{ "hook_context", "identity" }) orelse return false).str() orelse return false;
    while (true) : (next = it.next() orelse return false) {
        const item = next;
        if (item.str()) |name| {
            if (std.mem.eql(u8, name, who)) return true;
        }
    }
    return false;
}

fn tenantOf(ctx: h.Value) ?[]const u8 {
    if (ctx.path(&.{ "hook_context", "attributes", "tenant" })) |t| {
        if (t.str()) |s| return s;
    }
    if (ctx.path(&.{ "hook_context", "identity" })) |who| return who.str();
    return null;
}

fn postQuery(args: h.Value) i64 {
    const ctx = args.at(0) orelse return h.proceed();
    var text = ctx.getStr("normalized") orelse return h.proceed();
    if (text.len == 0) text = ctx.getStr("query") orelse return h.proceed();
    if (text.len == 0 or ignored(ctx)) return h.proceed();
    if (!remember(fnv1a(text))) return h.proceed();
    if (learn_until != 0) {
        if (h.nowMs() < learn_until) return h.proceed();
        learn_until = 0;
    }
    var d = h.Out.init();
    d.raw("first sight of: ");
    d.raw(if (text.len > 500) text[0..500] else text);
    if (ctx.path(&.{ "hook_context", "database" })) |db| {
        if (db.str()) |name| {
            d.raw(" (database ");
            d.raw(name);
            d.raw(")");
        }
    }
    _ = h.emitEvent("novel_query", .info, tenantOf(ctx), d.bytes());
    return h.proceed();
}
