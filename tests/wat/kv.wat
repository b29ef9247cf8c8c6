;; KV round trip. pre_query stores value=input under key=input and answers
;; block "stored" (kv_set returned 0) or block "over" (-1, a limit); route looks the input up
;; and answers primary when found (and gives the buffer back), default otherwise.
;; authenticate deletes the key named by its input and defers.
(module
  (import "helios" "kv_get" (func $kv_get (param i32 i32) (result i64)))
  (import "helios" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "helios" "kv_delete" (func $kv_delete (param i32 i32) (result i32)))
  (;PRELUDE;)
  (data (i32.const 1024) "{\"action\":\"block\",\"reason\":\"stored\"}")
  (data (i32.const 1088) "{\"action\":\"block\",\"reason\":\"over\"}")
  (data (i32.const 1152) "{\"action\":\"primary\"}")
  (func (export "pre_query") (param $p i32) (param $n i32) (result i64)
    (if (result i64) (i32.eqz (call $kv_set (local.get $p) (local.get $n) (local.get $p) (local.get $n)))
      (then (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 36)))
      (else (i64.or (i64.shl (i64.const 1088) (i64.const 32)) (i64.const 34)))))
  (func (export "route") (param $p i32) (param $n i32) (result i64)
    (local $v i64)
    (local.set $v (call $kv_get (local.get $p) (local.get $n)))
    (if (result i64) (i64.eqz (local.get $v))
      (then (i64.const 0))
      (else
        (call $dealloc (i32.wrap_i64 (i64.shr_u (local.get $v) (i64.const 32)))
                       (i32.wrap_i64 (local.get $v)))
        (i64.or (i64.shl (i64.const 1152) (i64.const 32)) (i64.const 20)))))
  (func (export "authenticate") (param $p i32) (param $n i32) (result i64)
    (drop (call $kv_delete (local.get $p) (local.get $n)))
    (i64.const 0))
)
