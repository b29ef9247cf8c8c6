;; Declares 2000 initial pages (125 MiB): over the memory cap, refused at load.
(module
  (memory (export "memory") 2000)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "helios_abi_version") (result i32) (i32.const 1))
  (func (export "pre_query") (param i32 i32) (result i64) (i64.const 0))
)
