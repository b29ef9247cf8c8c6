;; State persists between calls: pre_query continues twice, then blocks every later query
;; ("third call"). Each call adds 1 to the metric "calls" and logs "counted".
(module
  (import "helios" "log" (func $log (param i32 i32 i32)))
  (import "helios" "metric_add" (func $metric (param i32 i32 f64)))
  (;PRELUDE;)
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 1024) "calls")
  (data (i32.const 1040) "counted")
  (data (i32.const 1056) "{\"action\":\"block\",\"reason\":\"third call\"}")
  (func (export "pre_query") (param i32 i32) (result i64)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (call $metric (i32.const 1024) (i32.const 5) (f64.const 1))
    (call $log (i32.const 1) (i32.const 1040) (i32.const 7))
    (if (result i64) (i32.ge_u (global.get $n) (i32.const 3))
      (then (i64.or (i64.shl (i64.const 1056) (i64.const 32)) (i64.const 40)))
      (else (i64.const 0))))
)
