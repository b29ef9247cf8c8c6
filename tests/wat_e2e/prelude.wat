  ;; Shared ABI v1 prelude, spliced in at the PRELUDE marker by tests/wat_e2e/kit.py:
  ;; memory, a bump allocator that restarts at every alloc of a new hook input, abi version 1.
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 65536))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $bump))
    (local.set $end (i32.add (local.get $p)
      (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have))
                                               (i32.const 16)) (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $bump (local.get $end))
    (local.get $p))
  (func $dealloc (export "dealloc") (param $p i32) (param $n i32)
    ;; everything given back: start again at 64 KiB (the host never keeps two live blocks here)
    (global.set $bump (i32.const 65536)))
  (func (export "helios_abi_version") (result i32) (i32.const 1))
