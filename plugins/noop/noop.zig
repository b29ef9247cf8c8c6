//! noop: a pre_query hook that always answers 0 (continue); the baseline for hook-cost benchmarks.
const h = @import("helios");

comptime {
    _ = h; // importing the SDK exports alloc, dealloc and helios_abi_version
}

export fn pre_query(ptr: i32, len: i32) i64 {
    _ = ptr;
    _ = len;
    return h.proceed();
}
