;; pre_query burns a lot of instructions: stopped by fuel when the fuel budget is small.
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (local $i i32)
    (local.set $i (i32.const 2000000000))
    (loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (i32.ne (local.get $i) (i32.const 0))))
    (i64.const 0))
)
