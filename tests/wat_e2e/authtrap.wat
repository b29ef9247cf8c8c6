;; authtrap: an authenticate hook that traps every time (for fail_mode open vs closed at login).
(module
  (;PRELUDE;)
  (func (export "authenticate") (param i32 i32) (result i64)
    unreachable)
)
