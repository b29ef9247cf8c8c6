;; Answers each hook with a fixed JSON document (or 0 = default); the test fills in the RESPONSES marker
;; with one data segment plus one `(func (export HOOK) (param i32 i32) (result i64))` per hook.
(module
  (;PRELUDE;)
  (;RESPONSES;)
)
