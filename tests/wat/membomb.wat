;; pre_query grows memory by 1 MiB steps until memory.grow fails (at the store's memory cap),
;; then traps. Any host without a memory cap would let it eat gigabytes.
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
)
