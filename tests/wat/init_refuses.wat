;; init answers {"error": "bad config"}: refused at load.
(module
  (;PRELUDE;)
  (data (i32.const 1024) "{\"error\":\"bad config\"}")
  (func (export "init") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 22)))
  (func (export "pre_query") (param i32 i32) (result i64) (i64.const 0))
)
