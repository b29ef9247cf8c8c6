//! cache_answer: a pre_query hook that answers a statement itself when it carries a cache hint.
//!
//! `SELECT 'plugin-cache-demo' /*cache:hello*/` gets one row (greeting = "hello from wasm")
//! without reaching a server. Other hints and statements continue as usual.
const std = @import("std");
const h = @import("helios");

export fn pre_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, preQuery);
}

fn preQuery(ctx: h.Value) i64 {
    const q = ctx.getStr("query") orelse return h.proceed();
    const key = h.sql.hint(q, "cache:") orelse return h.proceed();
    if (std.mem.eql(u8, key, "hello")) {
        return h.cached(&.{"greeting"}, &.{&.{"hello from wasm"}});
    }
    return h.proceed();
}
