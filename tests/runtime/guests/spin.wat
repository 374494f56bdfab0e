;; Never ends: only the wall-clock deadline (epoch interruption) can stop it.
(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))
