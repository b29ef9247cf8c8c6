//! tenant_router: a route hook sending each tenant's statements to its own node or branch.
//!
//! The tenant comes from hook_context.attributes.tenant (set by the proxy, e.g. from a startup
//! parameter) or, failing that, from a `/*tenant=NAME*/` comment in the query. The config maps
//! tenants to targets:
//!     tenants: {acme: {branch: acme}, globex: {node: standby1}, initech: {route: standby}}
//! `route` may be primary or standby. An unknown or absent tenant gets the default routing.
const std = @import("std");
const h = @import("helios");

export fn init(ptr: i32, len: i32) i64 {
    return h.init(ptr, len);
}

export fn route(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, routeHook);
}

fn tenantOf(ctx: h.Value) ?[]const u8 {
    if (ctx.path(&.{ "hook_context", "attributes", "tenant" })) |v| {
        if (v.str()) |t| {
            if (t.len > 0) return t;
        }
    }
    const q = ctx.getStr("query") orelse return null;
    return h.sql.hint(q, "tenant=");
}

fn routeHook(ctx: h.Value) i64 {
    const tenant = tenantOf(ctx) orelse return h.proceed();
    const target = h.config().path(&.{ "tenants", tenant }) orelse return h.proceed();
    if (target.getStr("branch")) |b| return h.routeBranch(b);
    if (target.getStr("node")) |n| return h.routeNode(n);
    if (target.getStr("route")) |r| {
        if (std.mem.eql(u8, r, "primary")) return h.routePrimary();
        if (std.mem.eql(u8, r, "standby")) return h.routeStandby();
    }
    return h.proceed();
}
