//! nn-probe: one wasi:nn@0.2.0-rc-2024-10-28 call per run, its outcome on stdout.
//!
//! ```text
//! nn-probe load-by-name NAME
//! nn-probe load ENCODING TARGET [FILE...]          (the files are the graph builders)
//! nn-probe compute MODEL [NAME=TYPE:D0,D1,..:SOURCE ...]
//!                   SOURCE: a file, or zeros:N (N zero bytes); TYPE: FP16 FP32 FP64 BF16 U8 I32 I64
//! nn-probe contexts MODEL N                        (N contexts, all kept)
//! nn-probe tensor                                  (a 2x3 U8 tensor's dimensions, ty, data)
//! nn-probe tensors BYTES N                         (N tensors of BYTES bytes, all kept)
//! nn-probe stale-context MODEL                     (compute on a dropped context's handle)
//! ```
//!
//! Prints `ok ...` on success, `error <code>: <message>` for a wasi:nn error (exit 0 both);
//! exit 2 on a usage error.

#[path = "../../../../../examples/classify-component/src/nn.rs"]
#[allow(dead_code)]
mod nn;

use nn::{ExecutionTarget, Graph, GraphEncoding, Tensor, TensorType};

fn usage(msg: &str) -> ! {
    eprintln!("nn-probe: {}", msg);
    std::process::exit(2)
}

fn report<T>(r: Result<T, nn::Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            println!("error {}: {}", e.code, e.data);
            None
        }
    }
}

fn encoding(name: &str) -> GraphEncoding {
    match name {
        "openvino" => GraphEncoding::Openvino,
        "onnx" => GraphEncoding::Onnx,
        "tensorflow" => GraphEncoding::Tensorflow,
        "pytorch" => GraphEncoding::Pytorch,
        "tensorflowlite" => GraphEncoding::Tensorflowlite,
        "ggml" => GraphEncoding::Ggml,
        "autodetect" => GraphEncoding::Autodetect,
        _ => usage("unknown encoding"),
    }
}

fn target(name: &str) -> ExecutionTarget {
    match name {
        "cpu" => ExecutionTarget::Cpu,
        "gpu" => ExecutionTarget::Gpu,
        "tpu" => ExecutionTarget::Tpu,
        _ => usage("unknown target"),
    }
}

fn tensor_type(name: &str) -> TensorType {
    match name {
        "FP16" => TensorType::Fp16,
        "FP32" => TensorType::Fp32,
        "FP64" => TensorType::Fp64,
        "BF16" => TensorType::Bf16,
        "U8" => TensorType::U8,
        "I32" => TensorType::I32,
        "I64" => TensorType::I64,
        _ => usage("unknown tensor type"),
    }
}

/// `NAME=TYPE:D0,D1,..:SOURCE` as a named tensor.
fn named_tensor(spec: &str) -> (String, Tensor) {
    let (name, rest) = spec.split_once('=').unwrap_or_else(|| usage("input: NAME=TYPE:DIMS:SOURCE"));
    let parts: Vec<&str> = rest.splitn(3, ':').collect();
    if parts.len() != 3 {
        usage("input: NAME=TYPE:DIMS:SOURCE");
    }
    let dims: Vec<u32> = if parts[1].is_empty() {
        Vec::new()
    } else {
        parts[1].split(',').map(|d| d.parse().unwrap_or_else(|_| usage("bad dims"))).collect()
    };
    let data = match parts[2].strip_prefix("zeros:") {
        Some(n) => vec![0u8; n.parse().unwrap_or_else(|_| usage("bad zeros:N"))],
        None => std::fs::read(parts[2]).unwrap_or_else(|e| usage(&format!("{}: {}", parts[2], e))),
    };
    (name.to_string(), Tensor::new(&dims, tensor_type(parts[0]), &data))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(|s| s.as_str()).unwrap_or_else(|| usage("missing argument")) };
    match arg(0) {
        "load-by-name" => {
            if report(Graph::load_by_name(arg(1))).is_some() {
                println!("ok");
            }
        }
        "load" => {
            let files: Vec<Vec<u8>> = args[3..]
                .iter()
                .map(|f| std::fs::read(f).unwrap_or_else(|e| usage(&format!("{}: {}", f, e))))
                .collect();
            if report(Graph::load(&files, encoding(arg(1)), target(arg(2)))).is_some() {
                println!("ok");
            }
        }
        "compute" => {
            let graph = match report(Graph::load_by_name(arg(1))) {
                Some(g) => g,
                None => return,
            };
            let mut ctx = match report(graph.init_execution_context()) {
                Some(c) => c,
                None => return,
            };
            let inputs: Vec<(String, Tensor)> = args[2..].iter().map(|s| named_tensor(s)).collect();
            if let Some(outputs) = report(ctx.compute(inputs)) {
                for (name, tensor) in outputs {
                    let data = tensor.data();
                    let argmax = if tensor.ty() == TensorType::Fp32 as u32 {
                        let floats: Vec<f32> = data
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect();
                        let mut best = 0;
                        for (i, v) in floats.iter().enumerate() {
                            if *v > floats[best] {
                                best = i;
                            }
                        }
                        best as i64
                    } else {
                        -1
                    };
                    println!(
                        "ok output {} ty {} dims {:?} bytes {} argmax {}",
                        name,
                        tensor.ty(),
                        tensor.dimensions(),
                        data.len(),
                        argmax
                    );
                }
            }
        }
        "contexts" => {
            let graph = match report(Graph::load_by_name(arg(1))) {
                Some(g) => g,
                None => return,
            };
            let n: usize = arg(2).parse().unwrap_or_else(|_| usage("bad N"));
            let mut kept = Vec::new();
            for i in 0..n {
                match report(graph.init_execution_context()) {
                    Some(c) => kept.push(c),
                    None => {
                        println!("failed at {}", i);
                        return;
                    }
                }
            }
            println!("ok {}", kept.len());
        }
        "tensor" => {
            let t = Tensor::new(&[2, 3], TensorType::U8, &[1, 2, 3, 4, 5, 6]);
            println!("ok dims {:?} ty {} data {:?}", t.dimensions(), t.ty(), t.data());
        }
        "tensors" => {
            let bytes: usize = arg(1).parse().unwrap_or_else(|_| usage("bad BYTES"));
            let n: usize = arg(2).parse().unwrap_or_else(|_| usage("bad N"));
            let data = vec![7u8; bytes];
            let mut kept = Vec::new();
            for i in 0..n {
                kept.push(Tensor::new(&[bytes as u32], TensorType::U8, &data));
                println!("held {}", i + 1);
            }
            println!("ok {}", kept.len());
        }
        "stale-context" => {
            let graph = match report(Graph::load_by_name(arg(1))) {
                Some(g) => g,
                None => return,
            };
            let ctx = match report(graph.init_execution_context()) {
                Some(c) => c,
                None => return,
            };
            let handle = ctx.handle();
            drop(ctx);
            println!("dropped");
            let mut stale = unsafe { nn::ExecutionContext::from_handle(handle) };
            let _ = stale.compute(Vec::new());
            std::mem::forget(stale);
            println!("ok (not reached)");
        }
        other => usage(&format!("unknown probe {}", other)),
    }
}
