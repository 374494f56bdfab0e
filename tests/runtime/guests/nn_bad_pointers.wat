;; Calls every wasi_ephemeral_nn function with pointers outside memory (and bad handles), and
;; traps unless each returns an errno: the host must refuse them all and keep running.
(module
  (import "wasi_ephemeral_nn" "load" (func $load (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name" (func $load_by_name (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name_with_config"
    (func $load_by_name_with_config (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "init_execution_context"
    (func $init_execution_context (param i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "set_input" (func $set_input (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "compute" (func $compute (param i32) (result i32)))
  (import "wasi_ephemeral_nn" "get_output" (func $get_output (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "efficientnet-lite0")
  (global $bad i32 (i32.const 0xFFFFFFF0))
  (func $refused (param i32)
    (if (i32.eqz (local.get 0)) (then unreachable)))
  (func (export "_start")
    (local $graph i32) (local $ctx i32)
    ;; loads: builders, name, config and out-pointers outside memory
    (call $refused (call $load (global.get $bad) (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 64)))
    (i32.store (i32.const 128) (global.get $bad))
    (i32.store (i32.const 132) (i32.const 64))
    (call $refused (call $load (i32.const 128) (i32.const 1) (i32.const 1) (i32.const 0) (i32.const 64)))
    (call $refused (call $load (i32.const 128) (i32.const 1) (i32.const 1) (i32.const 0) (global.get $bad)))
    (call $refused (call $load_by_name (global.get $bad) (i32.const 18) (i32.const 64)))
    (call $refused (call $load_by_name (i32.const 16) (i32.const 0x7FFFFFFF) (i32.const 64)))
    (call $refused (call $load_by_name (i32.const 16) (i32.const 18) (global.get $bad)))
    (call $refused (call $load_by_name_with_config
      (i32.const 16) (i32.const 18) (global.get $bad) (i32.const 8) (i32.const 64)))
    ;; a real graph and context, then bad pointers and handles for the rest
    (if (call $load_by_name (i32.const 16) (i32.const 18) (i32.const 64)) (then unreachable))
    (local.set $graph (i32.load (i32.const 64)))
    (call $refused (call $init_execution_context (local.get $graph) (global.get $bad)))
    (call $refused (call $init_execution_context (i32.const 99) (i32.const 68)))
    (if (call $init_execution_context (local.get $graph) (i32.const 68)) (then unreachable))
    (local.set $ctx (i32.load (i32.const 68)))
    (call $refused (call $set_input (local.get $ctx) (i32.const 0) (global.get $bad)))
    (call $refused (call $set_input (i32.const 99) (i32.const 0) (i32.const 256)))
    (call $refused (call $compute (local.get $ctx)))
    (call $refused (call $compute (i32.const 99)))
    (call $refused (call $get_output (local.get $ctx) (i32.const 0) (global.get $bad) (i32.const 4000) (global.get $bad)))
    (call $refused (call $get_output (i32.const 99) (i32.const 0) (i32.const 256) (i32.const 4000) (i32.const 72)))))
