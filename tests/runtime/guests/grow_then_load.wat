;; Grows linear memory until the limit refuses, then calls load() with builders that end exactly
;; at the end of memory and one byte past it, and load_by_name with its name there: the host must
;; answer errnos (the bytes are no model) and the guest exits 0.
(module
  (import "wasi_ephemeral_nn" "load" (func $load (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name" (func $load_by_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $end i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    ;; one builder: the last 4096 bytes of memory (zeros: not an onnx model)
    (i32.store (i32.const 0) (i32.sub (local.get $end) (i32.const 4096)))
    (i32.store (i32.const 4) (i32.const 4096))
    (if (i32.ne (call $load (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 8))
                (i32.const 1)) (then (call $exit (i32.const 3))))
    ;; one byte past the end
    (i32.store (i32.const 4) (i32.const 4097))
    (if (i32.ne (call $load (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 8))
                (i32.const 1)) (then (call $exit (i32.const 4))))
    ;; a name that runs off the end
    (if (i32.ne (call $load_by_name (i32.sub (local.get $end) (i32.const 2)) (i32.const 18) (i32.const 8))
                (i32.const 1)) (then (call $exit (i32.const 5))))
    (call $exit (i32.const 0))))
