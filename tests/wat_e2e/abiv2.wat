;; abiv2: claims ABI version 2; the proxy must refuse it at load and keep serving.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "helios_abi_version") (result i32) (i32.const 2))
  (func (export "pre_query") (param i32 i32) (result i64) (i64.const 0))
)
