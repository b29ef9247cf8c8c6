//! sqli_guard: a pre_query hook spotting SQL-injection shapes in statement texts.
//!
//! Kinds (each reported at most once per statement, as an event through helios.emit_event):
//!   tautology   OR followed by an always-true test: OR 1=1, OR 'a'='a', OR x=x, OR 2>1, OR 1, OR TRUE
//!   union       UNION [ALL] SELECT probing: only NULL/literal columns, a catalog or system function in
//!               the UNION branch, or a trailing `--` comment after it
//!   stacked     a SELECT followed by another statement that writes or changes the schema (`; DROP ...`)
//!   time_blind  pg_sleep / pg_sleep_for / pg_sleep_until / sleep(…) / benchmark(…) / WAITFOR DELAY
//!   catalog     enumeration of information_schema.{tables,columns,...} or the pg_catalog tables that
//!               list users, roles, databases, relations and columns
//! Keywords are matched outside string literals, quoted identifiers and comments.
//!
//! Config: {"mode": "report" | "block", "block": [kinds refused in block mode] (default all but
//! catalog), "checks": [kinds checked] (default all), "ignore_users": [identities never checked]}.
//! In block mode a matching statement is refused with SQLSTATE 42000 and the reason
//! `sqli_guard: <what was seen>`; the event is reported either way.
const std = @import("std");
const h = @import("helios");

const Kind = enum { tautology, union_probe, stacked, time_blind, catalog };
const kind_names = [_][]const u8{ "tautology", "union", "stacked", "time_blind", "catalog" };
const kind_severity = [_]h.Severity{ .high, .high, .critical, .high, .low };
const kind_what = [_][]const u8{
    "tautology (always-true OR condition)",
    "UNION-based probe",
    "stacked statement after a SELECT",
    "time-based blind probe (sleep function)",
    "catalog enumeration",
};
const n_kinds = kind_names.len;

var block_mode = false;
var checked: [n_kinds]bool = @splat(true);
var blocked = [_]bool{ true, true, true, true, false };

fn kindOf(name: []const u8) ?usize {
    for (kind_names, 0..) |k, i| {
        if (std.mem.eql(u8, k, name)) return i;
    }
    return null;
}

fn readKinds(v: h.Value, into: *[n_kinds]bool) bool {
    if (v.kind() != .array) return false;
    into.* = @splat(false);
    var it = v.items();
    while (it.next()) |item| {
        const name = item.str() orelse return false;
        into[kindOf(name) orelse return false] = true;
    }
    return true;
}

export fn init(ptr: i32, len: i32) i64 {
    _ = h.init(ptr, len);
    const cfg = h.config();
    if (cfg.getStr("mode")) |m| {
        if (std.mem.eql(u8, m, "block")) {
            block_mode = true;
        } else if (!std.mem.eql(u8, m, "report")) {
            return h.refuseConfig("config.mode must be \"report\" or \"block\"");
        }
    }
    if (cfg.get("block")) |b| {
        if (!readKinds(b, &blocked)) return h.refuseConfig("config.block must be a list of: tautology, union, stacked, time_blind, catalog");
    }
    if (cfg.get("checks")) |c| {
        if (!readKinds(c, &checked)) return h.refuseConfig("config.checks must be a list of: tautology, union, stacked, time_blind, catalog");
    }
    return 0;
}

export fn pre_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, preQuery);
}

// The statement's tokens (comments dropped), and whether a `--` comment follows token i.
const max_tokens = 4096;
var toks: [max_tokens]h.sql.Token = undefined;
var n_toks: usize = 0;
var trailing_comment_after: usize = max_tokens; // index of the last token before a final `--` comment

fn tokenize(q: []const u8) void {
    var lx = h.sql.Lexer{ .s = q };
    n_toks = 0;
    trailing_comment_after = max_tokens;
    var last_was_line_comment = false;
    while (lx.next()) |t| {
        if (t.kind == .comment) {
            last_was_line_comment = t.start + 1 < q.len and q[t.start] == '-' and q[t.start + 1] == '-';
            if (last_was_line_comment and n_toks > 0) trailing_comment_after = n_toks - 1;
            continue;
        }
        last_was_line_comment = false;
        if (n_toks == max_tokens) break;
        toks[n_toks] = t;
        n_toks += 1;
    }
    if (!last_was_line_comment) trailing_comment_after = max_tokens;
}

fn tok(i: usize) ?h.sql.Token {
    return if (i < n_toks) toks[i] else null;
}

fn isOp(i: usize, c: u8) bool {
    const t = tok(i) orelse return false;
    return t.kind == .other and t.text.len == 1 and t.text[0] == c;
}

fn isNumber(t: h.sql.Token) bool {
    if (t.kind != .word or t.text.len == 0) return false;
    for (t.text) |c| {
        if (!std.ascii.isDigit(c)) return false;
    }
    return true;
}

fn numberValue(t: h.sql.Token) u64 {
    var v: u64 = 0;
    for (t.text) |c| v = v *| 10 +| (c - '0');
    return v;
}

fn isLiteral(t: h.sql.Token) bool {
    return t.kind == .string or isNumber(t);
}

fn sameToken(a: h.sql.Token, b: h.sql.Token) bool {
    if (a.kind != b.kind) return false;
    if (a.kind == .word) return std.ascii.eqlIgnoreCase(a.text, b.text);
    return std.mem.eql(u8, a.text, b.text);
}

/// A token ending a condition (nothing compares against the previous operand).
fn endsCondition(i: usize) bool {
    const t = tok(i) orelse return true;
    return switch (t.kind) {
        .semicolon, .rparen => true,
        .word => t.is("and") or t.is("or") or t.is("limit") or t.is("order") or t.is("group") or
            t.is("union") or t.is("offset") or t.is("having") or t.is("returning"),
        else => false,
    };
}

/// OR <always true> starting after token `i` (the OR).
fn tautologyAt(i: usize) bool {
    const a = tok(i + 1) orelse return false;
    if (a.is("true")) return endsCondition(i + 2);
    if (a.is("not") and (tok(i + 2) orelse return false).is("false")) return true;
    // OR 1 / OR 7 (a non-zero number on its own)
    if (isNumber(a) and endsCondition(i + 2)) return numberValue(a) != 0;
    if (a.kind != .word and a.kind != .string) return false;
    // OR x = x, OR 'a' = 'a', OR 1 = 1
    if (isOp(i + 2, '=') and !isOp(i + 3, '=')) {
        const b = tok(i + 3) orelse return false;
        return sameToken(a, b) and endsCondition(i + 4);
    }
    // OR 2 > 1, OR 1 < 2 (numbers only)
    if (isNumber(a) and (isOp(i + 2, '>') or isOp(i + 2, '<')) and !isOp(i + 3, '=')) {
        const b = tok(i + 3) orelse return false;
        if (!isNumber(b) or !endsCondition(i + 4)) return false;
        const x = numberValue(a);
        const y = numberValue(b);
        return if (isOp(i + 2, '>')) x > y else x < y;
    }
    return false;
}

const system_words = [_][]const u8{
    "information_schema", "pg_catalog", "pg_shadow", "pg_authid", "pg_user",  "pg_roles",
    "pg_tables",          "pg_database", "version",  "current_user", "session_user", "current_database",
    "pg_read_file",       "pg_ls_dir",
};

fn isSystemWord(t: h.sql.Token) bool {
    if (t.kind != .word) return false;
    for (system_words) |w| {
        if (std.ascii.eqlIgnoreCase(t.text, w)) return true;
    }
    return false;
}

/// UNION [ALL|DISTINCT] SELECT at token `i` that looks like a probe.
fn unionProbeAt(i: usize) bool {
    var j = i + 1;
    if (tok(j)) |t| {
        if (t.is("all") or t.is("distinct")) j += 1;
    }
    const sel = tok(j) orelse return false;
    if (!sel.is("select")) return false;
    if (trailing_comment_after != max_tokens and trailing_comment_after >= i) return true;
    // The select list: only NULLs and literals?
    var k = j + 1;
    var only_literals = true;
    var columns: usize = 0;
    var depth: usize = 0;
    while (tok(k)) |t| : (k += 1) {
        if (t.kind == .semicolon) break;
        if (isSystemWord(t)) return true;
        if (t.kind == .lparen) depth += 1;
        if (t.kind == .rparen) {
            if (depth == 0) break;
            depth -= 1;
        }
        if (depth == 0 and (t.is("from") or t.is("union") or t.is("where"))) {
            if (!t.is("from")) break;
            only_literals = false; // selecting from somewhere: look for catalog names further on
            continue;
        }
        if (!only_literals or depth > 0) continue;
        if (t.kind == .other and t.text.len == 1 and t.text[0] == ',') continue;
        if (t.is("null") or isLiteral(t)) {
            columns += 1;
            continue;
        }
        only_literals = false;
    }
    return only_literals and columns > 0;
}

const write_words = [_][]const u8{
    "drop",  "delete", "update", "insert", "alter", "create", "truncate", "grant", "revoke", "copy",
    "comment", "do", "call",  "execute", "lock",
};

fn isWriteWord(t: h.sql.Token) bool {
    if (t.kind != .word) return false;
    for (write_words) |w| {
        if (std.ascii.eqlIgnoreCase(t.text, w)) return true;
    }
    return false;
}

const sleep_words = [_][]const u8{ "pg_sleep", "pg_sleep_for", "pg_sleep_until", "sleep", "benchmark", "dbms_lock" };

fn timeBlindAt(i: usize) bool {
    const t = toks[i];
    if (t.kind != .word) return false;
    if (t.is("waitfor")) return (tok(i + 1) orelse return false).is("delay");
    for (sleep_words) |w| {
        if (std.ascii.eqlIgnoreCase(t.text, w)) {
            // a call: NAME( or NAME.x( for dbms_lock.sleep
            return (tok(i + 1) orelse return false).kind == .lparen or isOp(i + 1, '.');
        }
    }
    return false;
}

const schema_tables = [_][]const u8{
    "tables", "columns", "schemata", "table_privileges", "column_privileges", "routines", "views",
    "role_table_grants", "key_column_usage", "table_constraints",
};
const catalog_tables = [_][]const u8{
    "pg_shadow", "pg_authid",    "pg_user",  "pg_roles", "pg_tables", "pg_database", "pg_namespace",
    "pg_class",  "pg_attribute", "pg_views", "pg_proc",  "pg_stat_activity",
};

fn inList(text: []const u8, list: []const []const u8) bool {
    for (list) |w| {
        if (std.ascii.eqlIgnoreCase(text, w)) return true;
    }
    return false;
}

fn catalogAt(i: usize) bool {
    const t = toks[i];
    if (t.kind != .word) return false;
    if (t.is("information_schema") and isOp(i + 1, '.')) {
        const n = tok(i + 2) orelse return false;
        return n.kind == .word and inList(n.text, &schema_tables);
    }
    if (inList(t.text, &catalog_tables)) {
        // a relation name (after FROM/JOIN/a dot/a comma), not a column or a function of that name
        const prev = if (i > 0) toks[i - 1] else return false;
        return prev.is("from") or prev.is("join") or (prev.kind == .other and (prev.text[0] == '.' or prev.text[0] == ','));
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

fn preQuery(ctx: h.Value) i64 {
    const q = ctx.getStr("query") orelse return h.proceed();
    tokenize(q);
    var found: [n_kinds]bool = @splat(false);
    var statement_start: usize = 0;
    var statements: usize = 0;
    var first_is_select = false;
    var i: usize = 0;
    while (i < n_toks) : (i += 1) {
        const t = toks[i];
        if (t.kind == .semicolon) {
            statement_start = i + 1;
            continue;
        }
        if (i == statement_start) {
            statements += 1;
            if (statements == 1) {
                first_is_select = t.is("select") or t.is("with") or t.is("values") or t.is("table");
            } else if (first_is_select and (isWriteWord(t) or t.is("select") and timeBlindNext(i))) {
                found[@intFromEnum(Kind.stacked)] = true;
            }
        }
        if (t.is("or") and tautologyAt(i)) found[@intFromEnum(Kind.tautology)] = true;
        if (t.is("union") and unionProbeAt(i)) found[@intFromEnum(Kind.union_probe)] = true;
        if (timeBlindAt(i)) found[@intFromEnum(Kind.time_blind)] = true;
        if (catalogAt(i)) found[@intFromEnum(Kind.catalog)] = true;
    }
    var any = false;
    for (found, 0..) |f, k| {
        if (f and checked[k]) any = true;
    }
    if (!any or ignored(ctx)) return h.proceed();
    const tenant = tenantOf(ctx);
    var refuse: ?usize = null;
    for (found, 0..) |f, k| {
        if (!f or !checked[k]) continue;
        var d = h.Out.init();
        d.raw(kind_what[k]);
        d.raw(if (block_mode and blocked[k]) " (blocked): " else " (reported): ");
        d.raw(if (q.len > 300) q[0..300] else q);
        _ = h.emitEvent(kind_names[k], kind_severity[k], tenant, d.bytes());
        if (block_mode and blocked[k] and refuse == null) refuse = k;
    }
    if (refuse) |k| {
        var labels = h.Out.init();
        labels.raw("kind=");
        labels.raw(kind_names[k]);
        h.metricAddLabels("blocked", labels.bytes(), 1);
        var reason = h.Out.init();
        reason.raw("sqli_guard: ");
        reason.raw(kind_what[k]);
        reason.raw(" refused");
        return h.block(reason.bytes());
    }
    return h.proceed();
}

/// `SELECT pg_sleep(...)` as a stacked statement (statement i starts with SELECT).
fn timeBlindNext(i: usize) bool {
    return i + 1 < n_toks and timeBlindAt(i + 1);
}
