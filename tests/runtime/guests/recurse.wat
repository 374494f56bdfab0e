;; Unbounded recursion: exhausts the wasm stack.
(module (memory (export "memory") 1)
  (func $f (call $f))
  (func (export "_start") (call $f)))
