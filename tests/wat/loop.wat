;; pre_query never returns: must be stopped by the epoch deadline (timeout).
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
)
