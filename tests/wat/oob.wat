;; pre_query answers a pointer/length far outside linear memory.
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 0xFFFF0000) (i64.const 32)) (i64.const 100)))
)
