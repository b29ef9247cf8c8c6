//! audit_log: a post_query observer counting outcomes.
//!
//! For every finished statement it adds 1 to the counter `queries_ok` or `queries_failed`
//! (metric_add), keeps a running total under the key "count" (and failures under "failed") in its
//! key-value namespace, and logs one line. It also keeps a total in a global: the plugin's single
//! instance lives as long as the proxy process (or until reload), so globals persist between calls.
const h = @import("helios");

var seen: i64 = 0; // statements observed by this instance

export fn post_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, postQuery);
}

fn bump(key: []const u8) i64 {
    var n: i64 = 0;
    if (h.kvGet(key)) |v| n = h.Value.of(v).int() orelse 0;
    n += 1;
    var tmp: [24]u8 = undefined;
    _ = h.kvSet(key, h.formatInt(&tmp, n));
    return n;
}

fn postQuery(args: h.Value) i64 {
    // The input is [context, outcome].
    const ctx = args.at(0) orelse return h.proceed();
    const outcome = args.at(1) orelse return h.proceed();
    const ok = if (outcome.get("success")) |s| s.boolean() orelse false else false;
    seen += 1;

    h.metricAdd(if (ok) "queries_ok" else "queries_failed", 1);
    const total = bump("count");
    if (!ok) _ = bump("failed");

    var line = h.Out.init();
    line.raw(if (ok) "audit: ok" else "audit: failed");
    line.raw(" n=");
    line.int(total);
    if (outcome.get("elapsed_us")) |e| {
        line.raw(" elapsed_us=");
        line.int(e.int() orelse 0);
    }
    if (outcome.getStr("target_node")) |t| {
        line.raw(" target=");
        line.raw(t);
    }
    if (ctx.path(&.{ "hook_context", "identity" })) |who| {
        if (who.str()) |name| {
            line.raw(" user=");
            line.raw(name);
        }
    }
    if (outcome.getStr("error")) |err| {
        line.raw(" error=");
        line.string(err);
    }
    if (ctx.getStr("query")) |q| {
        line.raw(" query=");
        line.string(if (q.len > 200) q[0..200] else q);
    }
    h.log(if (ok) .info else .warn, line.bytes());
    return h.proceed(); // observers return nothing
}
