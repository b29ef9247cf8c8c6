//! add_limit: a pre_query hook appending ` LIMIT n` to unbounded SELECTs on configured tables.
//!
//! Config: {tables: [orders, events], limit: 1000}. A statement is rewritten when it is a single
//! SELECT, reads one of the tables (from the proxy's `tables` list, or FROM/JOIN in the text), and
//! has no top-level LIMIT, FETCH or FOR UPDATE/SHARE. A trailing semicolon or comment is dropped.
const std = @import("std");
const h = @import("helios");

export fn init(ptr: i32, len: i32) i64 {
    return h.init(ptr, len);
}

export fn pre_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, preQuery);
}

/// "public.Orders" matches a configured "orders"; "sales.orders" matches "sales.orders" or "orders".
fn tableMatches(name: []const u8, configured: []const u8) bool {
    if (std.ascii.eqlIgnoreCase(name, configured)) return true;
    if (std.mem.lastIndexOfScalar(u8, name, '.')) |dot| {
        return std.ascii.eqlIgnoreCase(name[dot + 1 ..], configured);
    }
    return false;
}

fn isConfigured(name: []const u8) bool {
    const tables = h.config().get("tables") orelse return false;
    var it = tables.items();
    while (it.next()) |t| {
        if (t.str()) |c| {
            if (tableMatches(name, c)) return true;
        }
    }
    return false;
}

fn readsConfiguredTable(ctx: h.Value, q: []const u8) bool {
    if (ctx.get("tables")) |tables| {
        var it = tables.items();
        var any = false;
        while (it.next()) |t| {
            any = true;
            if (t.str()) |name| {
                if (isConfigured(name)) return true;
            }
        }
        if (any) return false;
    }
    // No table list from the proxy: look at the names after FROM / JOIN (and `,` / `.` in them).
    var toks = h.sql.Tokens.init(q);
    var expect_name = false; // right after FROM, JOIN, or a `,`/`.` continuing a name list
    var after_name = false;
    while (toks.next()) |t| {
        if (expect_name and (t.kind == .word or t.kind == .quoted_ident)) {
            if (isConfigured(t.text)) return true;
            expect_name = false;
            after_name = true;
            continue;
        }
        const sep = t.kind == .other and (t.text[0] == '.' or t.text[0] == ',');
        expect_name = t.is("from") or t.is("join") or (after_name and sep);
        after_name = false;
    }
    return false;
}

fn preQuery(ctx: h.Value) i64 {
    const q = ctx.getStr("query") orelse return h.proceed();
    if (!h.sql.startsWithKeyword(q, "select")) return h.proceed();
    if (h.sql.isMultiStatement(q)) return h.proceed();

    var toks = h.sql.Tokens.init(q);
    var depth: usize = 0;
    var end: usize = 0; // end of the last token that is not a semicolon
    var prev_for = false;
    while (toks.next()) |t| {
        switch (t.kind) {
            .lparen => depth += 1,
            .rparen => depth -|= 1,
            .semicolon => continue,
            else => {},
        }
        end = t.end;
        if (depth == 0) {
            if (t.is("limit") or t.is("fetch")) return h.proceed();
            if (prev_for and (t.is("update") or t.is("share") or t.is("no") or t.is("key"))) {
                return h.proceed();
            }
            prev_for = t.is("for");
        }
    }
    if (!readsConfiguredTable(ctx, q)) return h.proceed();

    var limit: i64 = 1000;
    if (h.config().get("limit")) |l| limit = l.int() orelse limit;
    var o = h.Out.init();
    o.raw(q[0..end]);
    o.raw(" LIMIT ");
    o.int(limit);
    return h.rewrite(o.bytes());
}
