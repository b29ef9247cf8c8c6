;; trap: pre_query hits `unreachable` every time.
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    unreachable)
)
