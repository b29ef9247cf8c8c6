//! auth_burst: a post_auth observer reporting bursts of failed logins.
//!
//! post_auth sees the outcome of every client login (never the password). Failures are kept per
//! client address (without the port) and per user name; `threshold` failures from one address, or
//! for one user, within `window_ms` make an event `auth_burst` (severity high), at most once per
//! window for that address or user. Counter `failed_logins` counts every failure seen.
//!
//! Config (integers): {"threshold": 5 (2..64), "window_ms": 60000, "max_keys": 128 (1..256)}.
const std = @import("std");
const h = @import("helios");

const max_threshold = 64;
const Key = struct {
    name: [96]u8 = undefined,
    name_len: usize = 0,
    by_user: bool = false,
    times: [max_threshold]i64 = @splat(0),
    next: usize = 0,
    seen: usize = 0,
    last_event: i64 = 0,
    last_seen: i64 = 0,
};

const max_slots = 256;
var keys: [max_slots]Key = undefined;
var n_keys: usize = 0;
var threshold: usize = 5;
var window_ms: i64 = 60000;
var max_keys: usize = 128;

export fn init(ptr: i32, len: i32) i64 {
    _ = h.init(ptr, len);
    const cfg = h.config();
    if (cfg.get("threshold")) |v| {
        const n = v.int() orelse return h.refuseConfig("config.threshold must be a number");
        if (n < 2 or n > max_threshold) return h.refuseConfig("config.threshold must be 2..64");
        threshold = @intCast(n);
    }
    if (cfg.get("window_ms")) |v| {
        const n = v.int() orelse return h.refuseConfig("config.window_ms must be a number");
        if (n < 1) return h.refuseConfig("config.window_ms must be at least 1");
        window_ms = n;
    }
    if (cfg.get("max_keys")) |v| {
        const n = v.int() orelse return h.refuseConfig("config.max_keys must be a number");
        if (n < 1 or n > max_slots) return h.refuseConfig("config.max_keys must be 1..256");
        max_keys = @intCast(n);
    }
    return 0;
}

export fn post_auth(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, postAuth);
}

fn find(name: []const u8, by_user: bool) *Key {
    const n = @min(name.len, 96);
    for (keys[0..n_keys]) |*k| {
        if (k.by_user == by_user and std.mem.eql(u8, k.name[0..k.name_len], name[0..n])) return k;
    }
    var slot: *Key = undefined;
    if (n_keys < max_keys) {
        slot = &keys[n_keys];
        n_keys += 1;
    } else {
        slot = &keys[0];
        for (keys[0..n_keys]) |*k| {
            if (k.last_seen < slot.last_seen) slot = k;
        }
    }
    slot.* = .{};
    slot.by_user = by_user;
    slot.name_len = n;
    @memcpy(slot.name[0..n], name[0..n]);
    return slot;
}

/// Record a failure at `now`; the span of the last `threshold` failures when they make a burst.
fn failure(k: *Key, now: i64) ?i64 {
    k.last_seen = now;
    k.times[k.next] = now;
    k.next = (k.next + 1) % threshold;
    k.seen += 1;
    if (k.seen < threshold) return null;
    const oldest = k.times[k.next]; // the ring holds exactly the last `threshold` failures
    const span = now - oldest;
    if (span > window_ms) return null;
    if (k.last_event != 0 and now - k.last_event < window_ms) return null;
    k.last_event = now;
    return span;
}

fn hostOf(addr: []const u8) []const u8 {
    const colon = std.mem.lastIndexOfScalar(u8, addr, ':') orelse return addr;
    for (addr[colon + 1 ..]) |c| {
        if (!std.ascii.isDigit(c)) return addr;
    }
    var host = addr[0..colon];
    if (host.len >= 2 and host[0] == '[' and host[host.len - 1] == ']') host = host[1 .. host.len - 1];
    return host;
}

fn report(by_user: bool, name: []const u8, span: i64, other: []const u8, sqlstate: []const u8, tenant: ?[]const u8) void {
    var d = h.Out.init();
    d.int(@intCast(threshold));
    d.raw(if (by_user) " failed logins for user " else " failed logins from ");
    d.raw(name);
    d.raw(" within ");
    d.int(span);
    d.raw(" ms (last ");
    d.raw(if (by_user) "from " else "as user ");
    d.raw(other);
    d.raw(", SQLSTATE ");
    d.raw(sqlstate);
    d.raw(")");
    _ = h.emitEvent("auth_burst", .high, tenant, d.bytes());
}

fn postAuth(req: h.Value) i64 {
    const ok = if (req.get("success")) |s| s.boolean() orelse true else true;
    if (ok) return h.proceed();
    h.metricAdd("failed_logins", 1);
    const now = h.nowMs();
    const user = req.getStr("user") orelse "";
    const host = hostOf(req.getStr("client_addr") orelse "");
    const sqlstate = req.getStr("sqlstate") orelse "";
    var tenant: ?[]const u8 = user;
    if (req.path(&.{ "hook_context", "attributes", "tenant" })) |t| {
        if (t.str()) |s| tenant = s;
    }
    if (host.len > 0) {
        if (failure(find(host, false), now)) |span| report(false, host, span, user, sqlstate, tenant);
    }
    if (user.len > 0) {
        if (failure(find(user, true), now)) |span| report(true, user, span, host, sqlstate, tenant);
    }
    return h.proceed();
}
