;; badjson: pre_query answers 9 bytes that are not JSON.
(module
  (;PRELUDE;)
  (data (i32.const 1024) "{not json")
  (func (export "pre_query") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 9)))
)
