;; The wasi:nn bridge (see bridge.py): it stands between a component and the host's
;; wasi:nn/graph and wasi:nn/tensor, and passes load's builders and a tensor constructor's data
;; to the host in pieces (wasinn:host/staging#push). A piece travels as a string, in hex: the
;; host receives a string as one value (a list<u8> arrives as one value per byte, tens of times
;; slower) and decodes it (hex decodes fastest there).
;;
;; A template: a line starting with `;;+NAME` (or `;;+NAME|NAME...`) is kept, without the
;; prefix, only when the guest imports the function NAME (one of them): tensor.new,
;; tensor.dimensions, tensor.ty, tensor.data, graph.load, graph.load-by-name, graph.init. The
;; bridge then imports and exports exactly the functions the guest imports, and the named types
;; those use (wasm validation wants an enum named where an instance type uses it). Types in function signatures are written out in place
;; (structurally equal to the guest's); the type names the guest may need are exported by the
;; "shape" components, which give the bridge's instances their WIT names.
(component
  (import "wasi:nn/errors@0.2.0-rc-2024-10-28" (instance $errors
    (export "error" (type (sub resource)))))
  (alias export $errors "error" (type $error))
  (import "wasi:nn/inference@0.2.0-rc-2024-10-28" (instance $inference
    (export "graph-execution-context" (type (sub resource)))))
  (alias export $inference "graph-execution-context" (type $context))
  (import "wasi:nn/tensor@0.2.0-rc-2024-10-28" (instance $tensor
    (export "tensor" (type (sub resource)))
;;+tensor.new|tensor.ty    (type $type' (enum "FP16" "FP32" "FP64" "BF16" "U8" "I32" "I64"))
;;+tensor.new|tensor.ty    (export "tensor-type" (type $type (eq $type')))
;;+tensor.new    (export "[constructor]tensor" (func (param "dimensions" (list u32)) (param "ty" $type)
;;+tensor.new      (param "data" (list u8)) (result (own 0))))
;;+tensor.dimensions    (export "[method]tensor.dimensions"
;;+tensor.dimensions      (func (param "self" (borrow 0)) (result (list u32))))
;;+tensor.ty    (export "[method]tensor.ty" (func (param "self" (borrow 0)) (result $type)))
;;+tensor.data    (export "[method]tensor.data" (func (param "self" (borrow 0)) (result (list u8))))
    ))
  (alias export $tensor "tensor" (type $tensor-resource))
  (import "wasi:nn/graph@0.2.0-rc-2024-10-28" (instance $graph
    (export "graph" (type (sub resource)))
;;+graph.init|graph.load|graph.load-by-name    (alias outer 1 $error (type $error'))
;;+graph.init|graph.load|graph.load-by-name    (export "error" (type $err (eq $error')))
;;+graph.init    (alias outer 1 $context (type $context'))
;;+graph.init    (export "graph-execution-context" (type $ctx (eq $context')))
;;+graph.load    (type $encoding' (enum "openvino" "onnx" "tensorflow" "pytorch" "tensorflowlite" "ggml" "autodetect"))
;;+graph.load    (export "graph-encoding" (type $encoding (eq $encoding')))
;;+graph.load    (type $target' (enum "cpu" "gpu" "tpu"))
;;+graph.load    (export "execution-target" (type $target (eq $target')))
;;+graph.init    (export "[method]graph.init-execution-context"
;;+graph.init      (func (param "self" (borrow 0)) (result (result (own $ctx) (error (own $err))))))
;;+graph.load    (export "load" (func (param "builder" (list (list u8))) (param "encoding" $encoding)
;;+graph.load      (param "target" $target) (result (result (own 0) (error (own $err))))))
;;+graph.load-by-name    (export "load-by-name"
;;+graph.load-by-name      (func (param "name" string) (result (result (own 0) (error (own $err))))))
    ))
  (alias export $graph "graph" (type $graph-resource))
  (import "wasinn:host/staging" (instance $staging
    (export "push" (func (param "index" u32) (param "chunk" string)))))

  ;; The bridge's memory: a bump allocator, emptied after each call (post-return).
  (core module $alloc
    (memory (export "memory") 1)
    (global $top (mut i32) (i32.const 1024))
    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32)
      (param $size i32) (result i32)
      (local $ptr i32) (local $end i32)
      (if (i32.le_u (local.get $size) (local.get $old-size)) (then (return (local.get $old))))
      (local.set $ptr (i32.and (i32.add (global.get $top) (i32.sub (local.get $align) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $ptr) (local.get $size)))
      (if (i32.lt_u (local.get $end) (local.get $ptr)) (then unreachable))
      (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
        (then
          (if (i32.eq (memory.grow (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535))
                                                      (i32.const 16))
                                           (memory.size)))
                      (i32.const -1))
            (then unreachable))))
      (if (local.get $old-size)
        (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old-size))))
      (global.set $top (local.get $end))
      (local.get $ptr))
    (func (export "reset") (param i32)
      (global.set $top (i32.const 1024))))
  (core instance $a (instantiate $alloc))
  (alias core export $a "memory" (core memory $memory))
  (alias core export $a "realloc" (core func $realloc))
  (alias core export $a "reset" (core func $reset))

  (alias export $staging "push" (func $push))
  (core func $push' (canon lower (func $push) (memory $memory) string-encoding=utf8))
;;+graph.load  (alias export $graph "load" (func $host-load))
;;+graph.load  (core func $load' (canon lower (func $host-load) (memory $memory)))
;;+tensor.new  (alias export $tensor "[constructor]tensor" (func $host-tensor))
;;+tensor.new  (core func $tensor' (canon lower (func $host-tensor) (memory $memory)))
  (core instance $host
    (export "memory" (memory $memory))
    (export "realloc" (func $realloc))
;;+graph.load    (export "load" (func $load'))
;;+tensor.new    (export "tensor" (func $tensor'))
    (export "push" (func $push')))

  (core module $bridge
    (import "host" "memory" (memory 1))
    (import "host" "push" (func $push (param i32 i32 i32)))
    (import "host" "realloc" (func $realloc (param i32 i32 i32 i32) (result i32)))
;;+graph.load    (import "host" "load" (func $load (param i32 i32 i32 i32 i32)))
;;+tensor.new    (import "host" "tensor" (func $tensor (param i32 i32 i32 i32 i32) (result i32)))
    ;; [0, 18): the marker (staging.py); [64, 72): a one-entry builder list; [128, 136): load's
    ;; return area; [256, 272): the hex digits. Up to $direct bytes go to the host as they are;
    ;; larger data is staged in pieces of $chunk bytes.
    (data (i32.const 0) "\00wasinn:nn-staged\00")
    (global $direct i32 (i32.const 4096))
    (global $chunk i32 (i32.const 8388608))

    ;; Bytes [src, src+len) in hex at dst; returns the encoded length.
    (data (i32.const 256) "0123456789abcdef")
    (func $encode (param $src i32) (param $len i32) (param $dst i32) (result i32)
      (local $end i32) (local $out i32) (local $b i32)
      (local.set $end (i32.add (local.get $src) (local.get $len)))
      (local.set $out (local.get $dst))
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
          (local.set $b (i32.load8_u (local.get $src)))
          (i32.store16 (local.get $out)
            (i32.or (i32.load8_u offset=256 (i32.shr_u (local.get $b) (i32.const 4)))
                    (i32.shl (i32.load8_u offset=256 (i32.and (local.get $b) (i32.const 15)))
                             (i32.const 8))))
          (local.set $src (i32.add (local.get $src) (i32.const 1)))
          (local.set $out (i32.add (local.get $out) (i32.const 2)))
          (br $next)))
      (i32.sub (local.get $out) (local.get $dst)))

    (func $stage (param $index i32) (param $ptr i32) (param $len i32)
      (local $n i32) (local $buffer i32)
      ;; Room for one encoded piece: twice the piece (this memory counts against the limit).
      (local.set $buffer (call $realloc (i32.const 0) (i32.const 0) (i32.const 1)
        (i32.shl (select (global.get $chunk) (local.get $len)
                         (i32.gt_u (local.get $len) (global.get $chunk)))
                 (i32.const 1))))
      (loop $more
        (local.set $n (select (global.get $chunk) (local.get $len)
                              (i32.gt_u (local.get $len) (global.get $chunk))))
        (call $push (local.get $index) (local.get $buffer)
                    (call $encode (local.get $ptr) (local.get $n) (local.get $buffer)))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br_if $more (local.get $len))))

;;+graph.load    (func (export "load") (param $list i32) (param $count i32) (param $encoding i32)
;;+graph.load      (param $target i32) (result i32)
;;+graph.load      (local $i i32) (local $total i64)
;;+graph.load      (loop $sum
;;+graph.load        (if (i32.lt_u (local.get $i) (local.get $count))
;;+graph.load          (then
;;+graph.load            (local.set $total (i64.add (local.get $total) (i64.extend_i32_u
;;+graph.load              (i32.load offset=4 (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 3)))))))
;;+graph.load            (local.set $i (i32.add (local.get $i) (i32.const 1)))
;;+graph.load            (br $sum))))
;;+graph.load      (if (i64.le_u (local.get $total) (i64.extend_i32_u (global.get $direct)))
;;+graph.load        (then
;;+graph.load          (call $load (local.get $list) (local.get $count) (local.get $encoding)
;;+graph.load                      (local.get $target) (i32.const 128))
;;+graph.load          (return (i32.const 128))))
;;+graph.load      (local.set $i (i32.const 0))
;;+graph.load      (loop $each
;;+graph.load        (if (i32.lt_u (local.get $i) (local.get $count))
;;+graph.load          (then
;;+graph.load            (call $stage (local.get $i)
;;+graph.load              (i32.load (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 3))))
;;+graph.load              (i32.load offset=4 (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 3)))))
;;+graph.load            (local.set $i (i32.add (local.get $i) (i32.const 1)))
;;+graph.load            (br $each))))
;;+graph.load      (i32.store (i32.const 64) (i32.const 0))
;;+graph.load      (i32.store (i32.const 68) (i32.const 18))
;;+graph.load      (call $load (i32.const 64) (i32.const 1) (local.get $encoding) (local.get $target)
;;+graph.load                  (i32.const 128))
;;+graph.load      (i32.const 128))

;;+tensor.new    (func (export "tensor") (param $dims i32) (param $rank i32) (param $type i32)
;;+tensor.new      (param $data i32) (param $len i32) (result i32)
;;+tensor.new      (if (i32.le_u (local.get $len) (global.get $direct))
;;+tensor.new        (then
;;+tensor.new          (return (call $tensor (local.get $dims) (local.get $rank) (local.get $type)
;;+tensor.new                                (local.get $data) (local.get $len)))))
;;+tensor.new      (call $stage (i32.const 0) (local.get $data) (local.get $len))
;;+tensor.new      (call $tensor (local.get $dims) (local.get $rank) (local.get $type) (i32.const 0)
;;+tensor.new                    (i32.const 18)))
    )
  (core instance $b (instantiate $bridge (with "host" (instance $host))))

;;+graph.load  (func $load
;;+graph.load    (param "builder" (list (list u8)))
;;+graph.load    (param "encoding" (enum "openvino" "onnx" "tensorflow" "pytorch" "tensorflowlite" "ggml" "autodetect"))
;;+graph.load    (param "target" (enum "cpu" "gpu" "tpu"))
;;+graph.load    (result (result (own $graph-resource) (error (own $error))))
;;+graph.load    (canon lift (core func $b "load") (memory $memory) (realloc $realloc) (post-return $reset)))
;;+tensor.new  (func $tensor-new
;;+tensor.new    (param "dimensions" (list u32))
;;+tensor.new    (param "ty" (enum "FP16" "FP32" "FP64" "BF16" "U8" "I32" "I64"))
;;+tensor.new    (param "data" (list u8)) (result (own $tensor-resource))
;;+tensor.new    (canon lift (core func $b "tensor") (memory $memory) (realloc $realloc) (post-return $reset)))
;;+graph.load-by-name  (alias export $graph "load-by-name" (func $load-by-name))
;;+graph.init  (alias export $graph "[method]graph.init-execution-context" (func $init))
;;+tensor.dimensions  (alias export $tensor "[method]tensor.dimensions" (func $dimensions))
;;+tensor.ty  (alias export $tensor "[method]tensor.ty" (func $ty))
;;+tensor.data  (alias export $tensor "[method]tensor.data" (func $data))

  ;; The instances the guest gets: named and typed as wasi:nn declares them.
  (component $tensor-shape
    (import "tensor" (type $t (sub resource)))
    (type $type' (enum "FP16" "FP32" "FP64" "BF16" "U8" "I32" "I64"))
    (import "tensor-type" (type $type (eq $type')))
    (type $dims' (list u32))
    (import "tensor-dimensions" (type $dims (eq $dims')))
    (type $data' (list u8))
    (import "tensor-data" (type $data-type (eq $data')))
;;+tensor.new    (import "[constructor]tensor"
;;+tensor.new      (func $new (param "dimensions" $dims) (param "ty" $type) (param "data" $data-type) (result (own $t))))
;;+tensor.dimensions    (import "[method]tensor.dimensions" (func $dimensions (param "self" (borrow $t)) (result $dims)))
;;+tensor.ty    (import "[method]tensor.ty" (func $ty (param "self" (borrow $t)) (result $type)))
;;+tensor.data    (import "[method]tensor.data" (func $data (param "self" (borrow $t)) (result $data-type)))
    (export $t' "tensor" (type $t))
    (export $type2 "tensor-type" (type $type))
    (export $dims2 "tensor-dimensions" (type $dims))
    (export $data2 "tensor-data" (type $data-type))
;;+tensor.new    (export "[constructor]tensor" (func $new)
;;+tensor.new      (func (param "dimensions" $dims2) (param "ty" $type2) (param "data" $data2) (result (own $t'))))
;;+tensor.dimensions    (export "[method]tensor.dimensions" (func $dimensions)
;;+tensor.dimensions      (func (param "self" (borrow $t')) (result $dims2)))
;;+tensor.ty    (export "[method]tensor.ty" (func $ty) (func (param "self" (borrow $t')) (result $type2)))
;;+tensor.data    (export "[method]tensor.data" (func $data) (func (param "self" (borrow $t')) (result $data2)))
    )
  (type $tensor-type (enum "FP16" "FP32" "FP64" "BF16" "U8" "I32" "I64"))
  (type $tensor-dimensions (list u32))
  (type $tensor-data (list u8))
  (instance $tensor-out (instantiate $tensor-shape
    (with "tensor" (type $tensor-resource))
    (with "tensor-type" (type $tensor-type))
    (with "tensor-dimensions" (type $tensor-dimensions))
    (with "tensor-data" (type $tensor-data))
;;+tensor.new    (with "[constructor]tensor" (func $tensor-new))
;;+tensor.dimensions    (with "[method]tensor.dimensions" (func $dimensions))
;;+tensor.ty    (with "[method]tensor.ty" (func $ty))
;;+tensor.data    (with "[method]tensor.data" (func $data))
    ))

  (component $graph-shape
    (import "graph" (type $g (sub resource)))
    (import "error" (type $e (sub resource)))
    (import "graph-execution-context" (type $c (sub resource)))
    (import "tensor" (type $t (sub resource)))
    (type $builder' (list u8))
    (import "graph-builder" (type $builder (eq $builder')))
    (type $encoding' (enum "openvino" "onnx" "tensorflow" "pytorch" "tensorflowlite" "ggml" "autodetect"))
    (import "graph-encoding" (type $encoding (eq $encoding')))
    (type $target' (enum "cpu" "gpu" "tpu"))
    (import "execution-target" (type $target (eq $target')))
;;+graph.init    (import "[method]graph.init-execution-context"
;;+graph.init      (func $init (param "self" (borrow $g)) (result (result (own $c) (error (own $e))))))
;;+graph.load    (import "load" (func $load (param "builder" (list $builder)) (param "encoding" $encoding)
;;+graph.load      (param "target" $target) (result (result (own $g) (error (own $e))))))
;;+graph.load-by-name    (import "load-by-name" (func $load-by-name (param "name" string)
;;+graph.load-by-name      (result (result (own $g) (error (own $e))))))
    (export $g' "graph" (type $g))
    (export $e' "error" (type $e))
    (export $c' "graph-execution-context" (type $c))
    (export "tensor" (type $t))
    (export $builder2 "graph-builder" (type $builder))
    (export $encoding2 "graph-encoding" (type $encoding))
    (export $target2 "execution-target" (type $target))
;;+graph.init    (export "[method]graph.init-execution-context" (func $init)
;;+graph.init      (func (param "self" (borrow $g')) (result (result (own $c') (error (own $e'))))))
;;+graph.load    (export "load" (func $load) (func (param "builder" (list $builder2)) (param "encoding" $encoding2)
;;+graph.load      (param "target" $target2) (result (result (own $g') (error (own $e'))))))
;;+graph.load-by-name    (export "load-by-name" (func $load-by-name)
;;+graph.load-by-name      (func (param "name" string) (result (result (own $g') (error (own $e'))))))
    )
  (type $graph-builder (list u8))
  (type $graph-encoding (enum "openvino" "onnx" "tensorflow" "pytorch" "tensorflowlite" "ggml" "autodetect"))
  (type $execution-target (enum "cpu" "gpu" "tpu"))
  (instance $graph-out (instantiate $graph-shape
    (with "graph" (type $graph-resource))
    (with "error" (type $error))
    (with "graph-execution-context" (type $context))
    (with "tensor" (type $tensor-resource))
    (with "graph-builder" (type $graph-builder))
    (with "graph-encoding" (type $graph-encoding))
    (with "execution-target" (type $execution-target))
;;+graph.init    (with "[method]graph.init-execution-context" (func $init))
;;+graph.load    (with "load" (func $load))
;;+graph.load-by-name    (with "load-by-name" (func $load-by-name))
    ))
  (export "wasi:nn/tensor@0.2.0-rc-2024-10-28" (instance $tensor-out))
  (export "wasi:nn/graph@0.2.0-rc-2024-10-28" (instance $graph-out)))
