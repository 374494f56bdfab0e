;; Calls wasi-nn without exporting a memory: the host must answer missing_memory (3).
(module
  (import "wasi_ephemeral_nn" "load_by_name" (func $load_by_name (param i32 i32 i32) (result i32)))
  (func (export "try_load") (result i32)
    (call $load_by_name (i32.const 0) (i32.const 0) (i32.const 0)))
  (func (export "_start")))
