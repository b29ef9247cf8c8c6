;; watcher: a post_query observer that logs (level 1, info) the exact JSON input it receives,
;; so a test can read the PostQueryOutcome the proxy hands to plugins from the proxy log.
(module
  (import "helios" "log" (func $log (param i32 i32 i32)))
  (;PRELUDE;)
  (func (export "post_query") (param $p i32) (param $n i32) (result i64)
    (call $log (i32.const 1) (local.get $p) (local.get $n))
    (i64.const 0))
)
