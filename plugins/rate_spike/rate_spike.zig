//! rate_spike: a post_query observer comparing each tenant's statement rate with its own baseline.
//!
//! Per tenant (the `tenant` attribute, `SET helios.tenant = ...` or a plugin's; else the identity)
//! statements are counted in buckets of `interval_ms`. Each closed bucket's rate updates an
//! exponentially weighted mean and variance (weight `alpha_pct`%). While a bucket fills, its rate so
//! far is compared with the baseline: once `min_samples` buckets have been seen, a rate at least
//! `min_rate`/s, at least `min_ratio` times the mean and `z` standard deviations above it
//! (the deviation taken as at least `min_stddev`/s) is reported as an event `rate_spike`
//! (severity medium, high from 3x the z threshold), at most once a bucket and every `cooldown_ms`
//! per tenant. Gauges: `rate{tenant}` and `baseline{tenant}` (statements/s) of the last closed bucket.
//!
//! Config (integers): {"interval_ms": 1000, "alpha_pct": 30, "z": 4, "min_samples": 5, "min_rate": 10,
//! "min_ratio": 2, "min_stddev": 1, "cooldown_ms": 10000, "max_tenants": 64}.
const std = @import("std");
const h = @import("helios");

const Tenant = struct {
    name: [64]u8 = undefined,
    name_len: usize = 0,
    bucket_start: i64 = 0,
    count: u32 = 0,
    mean: f64 = 0,
    variance: f64 = 0,
    samples: u32 = 0,
    reported_bucket: i64 = -1,
    last_event: i64 = 0,
    last_seen: i64 = 0,
};

const max_slots = 256;
var tenants: [max_slots]Tenant = undefined;
var n_tenants: usize = 0;

var interval_ms: i64 = 1000;
var alpha: f64 = 0.3;
var z_threshold: f64 = 4;
var min_samples: u32 = 5;
var min_rate: f64 = 10;
var min_ratio: f64 = 2;
var min_stddev: f64 = 1;
var cooldown_ms: i64 = 10000;
var max_tenants: usize = 64;

fn intOption(cfg: h.Value, key: []const u8, lo: i64, hi: i64) ?i64 {
    const v = cfg.get(key) orelse return null;
    const n = v.int() orelse return -1;
    if (n < lo or n > hi) return -1;
    return n;
}

export fn init(ptr: i32, len: i32) i64 {
    _ = h.init(ptr, len);
    const cfg = h.config();
    const bad = "config: interval_ms 10..3600000, alpha_pct 1..100, z 1..1000, min_samples 1..10000, min_rate, min_ratio, min_stddev, cooldown_ms >= 0, max_tenants 1..256 (integers)";
    if (intOption(cfg, "interval_ms", 10, 3600000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        interval_ms = n;
    }
    if (intOption(cfg, "alpha_pct", 1, 100)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        alpha = @as(f64, @floatFromInt(n)) / 100.0;
    }
    if (intOption(cfg, "z", 1, 1000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        z_threshold = @floatFromInt(n);
    }
    if (intOption(cfg, "min_samples", 1, 10000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        min_samples = @intCast(n);
    }
    if (intOption(cfg, "min_rate", 0, 100000000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        min_rate = @floatFromInt(n);
    }
    if (intOption(cfg, "min_ratio", 0, 1000000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        min_ratio = @floatFromInt(n);
    }
    if (intOption(cfg, "min_stddev", 0, 100000000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        min_stddev = @floatFromInt(n);
    }
    if (intOption(cfg, "cooldown_ms", 0, 86400000)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        cooldown_ms = n;
    }
    if (intOption(cfg, "max_tenants", 1, max_slots)) |n| {
        if (n < 0) return h.refuseConfig(bad);
        max_tenants = @intCast(n);
    }
    return 0;
}

export fn post_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, postQuery);
}

fn find(name: []const u8, now: i64) *Tenant {
    for (tenants[0..n_tenants]) |*t| {
        if (std.mem.eql(u8, t.name[0..t.name_len], name)) return t;
    }
    var slot: *Tenant = undefined;
    if (n_tenants < max_tenants) {
        slot = &tenants[n_tenants];
        n_tenants += 1;
    } else { // forget the tenant seen longest ago
        slot = &tenants[0];
        for (tenants[0..n_tenants]) |*t| {
            if (t.last_seen < slot.last_seen) slot = t;
        }
    }
    slot.* = .{};
    slot.name_len = @min(name.len, slot.name.len);
    @memcpy(slot.name[0..slot.name_len], name[0..slot.name_len]);
    slot.bucket_start = now - @mod(now, interval_ms);
    return slot;
}

fn perSecond(count: u32) f64 {
    return @as(f64, @floatFromInt(count)) * 1000.0 / @as(f64, @floatFromInt(interval_ms));
}

fn fold(t: *Tenant, rate: f64) void {
    if (t.samples == 0) {
        t.mean = rate;
        t.variance = 0;
    } else {
        const diff = rate - t.mean;
        const incr = alpha * diff;
        t.mean += incr;
        t.variance = (1 - alpha) * (t.variance + diff * incr);
    }
    t.samples +|= 1;
}

fn labelFor(o: *h.Out, name: []const u8) void {
    o.raw("tenant=");
    for (name) |c| o.byte(if (c == ',' or c == '=') '_' else c);
}

fn closeBuckets(t: *Tenant, now: i64) void {
    if (now < t.bucket_start + interval_ms) return;
    const rate = perSecond(t.count);
    fold(t, rate);
    var gaps = @divFloor(now - t.bucket_start, interval_ms) - 1; // empty buckets since
    t.bucket_start += (gaps + 1) * interval_ms;
    if (gaps > 50) gaps = 50; // long silence: enough zeros to bring the mean down
    while (gaps > 0) : (gaps -= 1) fold(t, 0);
    t.count = 0;
    var labels = h.Out.init();
    labelFor(&labels, t.name[0..t.name_len]);
    h.metricSetLabels("rate", labels.bytes(), rate);
    h.metricSetLabels("baseline", labels.bytes(), t.mean);
}

fn fmtRate(o: *h.Out, v: f64) void {
    const tenths: i64 = @intFromFloat(@round(v * 10));
    o.int(@divTrunc(tenths, 10));
    o.byte('.');
    o.int(@mod(tenths, 10));
}

fn tenantOf(ctx: h.Value) []const u8 {
    if (ctx.path(&.{ "hook_context", "attributes", "tenant" })) |t| {
        if (t.str()) |s| return s;
    }
    if (ctx.path(&.{ "hook_context", "identity" })) |who| {
        if (who.str()) |s| return s;
    }
    return "-";
}

fn postQuery(args: h.Value) i64 {
    const ctx = args.at(0) orelse return h.proceed();
    const name = tenantOf(ctx);
    // the outcome's at_ms (when the statement finished) saves a host call; older hosts: the clock
    const now = if (args.at(1)) |o| (if (o.get("at_ms")) |at| at.int() orelse h.nowMs() else h.nowMs()) else h.nowMs();
    const t = find(name, now);
    t.last_seen = now;
    closeBuckets(t, now);
    t.count +|= 1;
    if (t.samples < min_samples or t.reported_bucket == t.bucket_start) return h.proceed();
    if (t.last_event != 0 and now - t.last_event < cooldown_ms) return h.proceed();
    const rate = perSecond(t.count);
    const sd = @max(@sqrt(t.variance), min_stddev);
    const z = (rate - t.mean) / sd;
    if (rate < min_rate or rate < min_ratio * t.mean or z < z_threshold) return h.proceed();
    t.reported_bucket = t.bucket_start;
    t.last_event = now;
    var d = h.Out.init();
    d.raw("rate ");
    fmtRate(&d, rate);
    d.raw("/s (so far in this ");
    d.int(interval_ms);
    d.raw(" ms bucket) against a baseline of ");
    fmtRate(&d, t.mean);
    d.raw("/s (stddev ");
    fmtRate(&d, @sqrt(t.variance));
    d.raw("/s): z=");
    fmtRate(&d, z);
    _ = h.emitEvent("rate_spike", if (z >= 3 * z_threshold) .high else .medium, name, d.bytes());
    return h.proceed();
}
