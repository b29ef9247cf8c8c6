;; membomb: pre_query grows linear memory by 1 MiB steps until memory.grow fails at the plugin's
;; memory cap, then traps. Without a cap it would take the proxy's memory (4 GiB of wasm32).
(module
  (;PRELUDE;)
  (func (export "pre_query") (param i32 i32) (result i64)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
)
