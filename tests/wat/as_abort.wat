;; AssemblyScript's abort import: pre_query calls env.abort("boom", "a.ts", 3, 9), which traps.
(module
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (;PRELUDE;)
  ;; AssemblyScript strings: UTF-16LE, byte length in the 4 bytes before the pointer
  (data (i32.const 2048) "\08\00\00\00b\00o\00o\00m\00")
  (data (i32.const 2096) "\08\00\00\00a\00.\00t\00s\00")
  (func (export "pre_query") (param i32 i32) (result i64)
    (call $abort (i32.const 2052) (i32.const 2100) (i32.const 3) (i32.const 9))
    (i64.const 0))
)
