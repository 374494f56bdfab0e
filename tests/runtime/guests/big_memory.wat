;; Declares 256 MiB of initial memory: instantiation fails under a smaller limit.
(module (memory (export "memory") 4096) (func (export "_start")))
