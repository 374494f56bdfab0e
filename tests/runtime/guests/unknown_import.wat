;; Imports a function no host provides.
(module (import "env" "mystery" (func)) (func (export "_start")))
