;; Imports helios.kv_set; loaded with a manifest that grants only "log": refused, naming it.
(module
  (import "helios" "log" (func $log (param i32 i32 i32)))
  (import "helios" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64) (i64.const 0))
)
