;; spin: pre_query never returns; the proxy must stop it at the plugin's timeout_ms (epoch deadline).
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
)
