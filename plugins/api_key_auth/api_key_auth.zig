//! api_key_auth: an authenticate hook accepting API keys sent as the password.
//!
//! Config: {keys: {"hk_live_123": alice}}. A password found in `keys` logs the client in as the
//! identity {"name": <value>}; a password that looks like a key (starts with "hk_") but is unknown
//! is denied; anything else is deferred to the proxy's configured authentication.
const std = @import("std");
const h = @import("helios");

export fn init(ptr: i32, len: i32) i64 {
    return h.init(ptr, len);
}

export fn authenticate(ptr: i32, len: i32) i64 {
    return h.run(ptr, len, authenticateHook);
}

fn authenticateHook(req: h.Value) i64 {
    const password = req.getStr("password") orelse return h.proceed();
    if (password.len == 0) return h.proceed();
    if (h.config().get("keys")) |keys| {
        var it = keys.entries();
        while (it.next()) |e| {
            if (e.keyIs(password)) {
                const name = e.value.str() orelse return h.authDenied("api_key_auth: bad key entry");
                return h.authSuccess(name);
            }
        }
    }
    if (std.mem.startsWith(u8, password, "hk_")) return h.authDenied("api_key_auth: unknown API key");
    return h.proceed(); // not an API key: defer to the configured method
}
