;; sneaky: imports helios.kv_set without the kv permission in its manifest; refused at load,
;; the log naming the import.
(module
  (import "helios" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (;PRELUDE;)
  (func (export "pre_query") (param $p i32) (param $n i32) (result i64)
    (drop (call $kv_set (local.get $p) (local.get $n) (local.get $p) (local.get $n)))
    (i64.const 0))
)
