//! block_ddl: a pre_query hook refusing DROP, TRUNCATE, and DELETE/UPDATE without a WHERE clause.
//!
//! Every statement of a multi-statement query is checked. Keywords are matched case-insensitively
//! outside string literals, quoted identifiers and comments; WHERE counts only at the statement's
//! top level (a WHERE inside a sub-select does not make an UPDATE safe).
const h = @import("helios");

export fn pre_query(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, preQuery);
}

fn preQuery(ctx: h.Value) i64 {
    const q = ctx.getStr("query") orelse return h.proceed();
    var toks = h.sql.Tokens.init(q);
    var first: ?h.sql.Token = null;
    var depth: usize = 0;
    var has_where = false;
    while (true) {
        const tok = toks.next();
        const end_of_statement = tok == null or tok.?.kind == .semicolon;
        if (end_of_statement) {
            if (first) |f| {
                if (verdict(f, has_where)) |reason| return h.block(reason);
            }
            if (tok == null) break;
            first = null;
            depth = 0;
            has_where = false;
            continue;
        }
        const t = tok.?;
        if (first == null) {
            first = t;
            continue;
        }
        switch (t.kind) {
            .lparen => depth += 1,
            .rparen => depth -|= 1,
            else => if (depth == 0 and t.is("where")) {
                has_where = true;
            },
        }
    }
    return h.proceed();
}

fn verdict(first: h.sql.Token, has_where: bool) ?[]const u8 {
    if (first.is("drop")) return "block_ddl: DROP statements are not allowed";
    if (first.is("truncate")) return "block_ddl: TRUNCATE statements are not allowed";
    if (first.is("delete") and !has_where) return "block_ddl: DELETE without WHERE is not allowed";
    if (first.is("update") and !has_where) return "block_ddl: UPDATE without WHERE is not allowed";
    return null;
}
