;; Thin exports over every wasi_ephemeral_nn import, so tests can call each one with exact raw
;; pointers and lengths (including bad ones) and observe the errno the host returns.
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
  ;; 640 pages = 40 MiB: room for an OpenVINO IR passed by value to load().
  (memory (export "memory") 640)
  (func (export "nn_load") (param i32 i32 i32 i32 i32) (result i32)
    (call $load (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "nn_load_by_name") (param i32 i32 i32) (result i32)
    (call $load_by_name (local.get 0) (local.get 1) (local.get 2)))
  (func (export "nn_load_by_name_with_config") (param i32 i32 i32 i32 i32) (result i32)
    (call $load_by_name_with_config (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "nn_init_execution_context") (param i32 i32) (result i32)
    (call $init_execution_context (local.get 0) (local.get 1)))
  (func (export "nn_set_input") (param i32 i32 i32) (result i32)
    (call $set_input (local.get 0) (local.get 1) (local.get 2)))
  (func (export "nn_compute") (param i32) (result i32)
    (call $compute (local.get 0)))
  (func (export "nn_get_output") (param i32 i32 i32 i32 i32) (result i32)
    (call $get_output (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "_start"))
)
