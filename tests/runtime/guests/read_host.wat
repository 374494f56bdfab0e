;; Prints the file secret.txt of the preopened directory named /host (exit 3: no such preopen,
;; 4: no such file, 5: unreadable): what a guest given `--dir HOST::/host` can read.
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $prestat_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0: iovec, 8: byte count, 16: prestat, 32: a preopen's name, 192: the opened fd,
  ;; 1024: the file's contents.
  (data (i32.const 128) "/host")
  (data (i32.const 144) "secret.txt")
  (data (i32.const 160) "no /host preopen\n")
  (func $say (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $is_host (param $fd i32) (result i32)
    (if (call $prestat_get (local.get $fd) (i32.const 16)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load (i32.const 20)) (i32.const 5)) (then (return (i32.const 0))))
    (if (call $prestat_name (local.get $fd) (i32.const 32) (i32.const 5))
      (then (return (i32.const 0))))
    (i32.and
      (i32.eq (i32.load (i32.const 32)) (i32.load (i32.const 128)))
      (i32.eq (i32.load8_u (i32.const 36)) (i32.load8_u (i32.const 132)))))
  (func (export "_start")
    (local $fd i32)
    (local.set $fd (i32.const 3))
    (block $found
      (loop $next
        (br_if $found (call $is_host (local.get $fd)))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $fd) (i32.const 64))))
      (call $say (i32.const 160) (i32.const 17))
      (call $proc_exit (i32.const 3)))
    (if (call $path_open (local.get $fd) (i32.const 0) (i32.const 144) (i32.const 10)
                         (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 192))
      (then (call $proc_exit (i32.const 4))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (if (call $fd_read (i32.load (i32.const 192)) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 5))))
    (call $say (i32.const 1024) (i32.load (i32.const 8)))))
