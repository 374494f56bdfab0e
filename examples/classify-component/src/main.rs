//! classify: image classification through `wasi:nn@0.2.0-rc-2024-10-28` from a component.
//!
//! The same program as examples/classify-rust (same flags, output and exit codes), on the
//! component-model interface instead of preview1's `wasi_ephemeral_nn`: tensors are resources,
//! `compute` takes named input tensors and returns named outputs, errors are `error` resources
//! (code and message). Bindings: src/nn.rs. Build: `hack/build-guests.sh OUTDIR` (Debian rustc
//! 1.63 for wasm32-wasi, then `wasm-tools component embed` + `component new` with the WASI
//! preview1 adapter).
//!
//! ```text
//! classify [OPTIONS] TENSOR...
//!   --model NAME      load-by-name(NAME)                              (default env MODEL_NAME)
//!   --model-dir DIR   load() DIR/model.xml+model.bin (openvino), else DIR/model.onnx (onnx),
//!                     else DIR/model.tflite (tensorflowlite)          (default env MODEL_DIR)
//!                     Precedence: --model-dir > --model > MODEL_DIR > MODEL_NAME >
//!                     efficientnet-lite0 (named).
//!   --target cpu|gpu|tpu   execution target for load() (default cpu; this interface has no auto)
//!   --input NAME      the model input's name in compute (default "0": the first input)
//!   --labels FILE     one label per line (default <model dir>/labels.txt; a named model's dir
//!                     is /models/<name>); unreadable -> "class <index>" and one warning
//!   --top K           classes to print (default 5)
//!   --dims D0,D1,...  f32 input dims (default 1,3,224,224)
//!   --batch N         replicate each tensor N times; dims[0] := N (default 1)
//!   --classes N       output floats per batch item (default 1000)
//!   --repeat N        run tensor/compute/data N times; if N > 1, stderr gets
//!                     "run <i> <microseconds>" per run (i from 1)
//!   --dump DIR        write the last run's raw output bytes to DIR/<tensor basename>.out
//!   TENSOR            raw little-endian f32 file of product(dims[1:])*4 bytes
//! ```
//!
//! Output per tensor: the path, then `  <rank>. <label> (<index>) <softmax %.6f>` for the
//! top K classes of batch item 0 (softmax in f64; ties -> lower index), from the first output
//! tensor `compute` returns. Exit codes: 0 ok, 1 wasi-nn/file error, 2 usage error.

mod nn;

use std::io::Write;
use std::path::Path;
use std::time::Instant;
use nn::{ExecutionContext, ExecutionTarget, Graph, GraphEncoding, Tensor, TensorType};

const USAGE: &str = "usage: classify [OPTIONS] TENSOR...
  --model NAME        load the named model with load_by_name (default env MODEL_NAME)
  --model-dir DIR     load DIR/model.xml+model.bin, DIR/model.onnx or DIR/model.tflite
                      (default env MODEL_DIR; default model: efficientnet-lite0)
  --target T          cpu|gpu|tpu (default cpu)
  --input NAME        the model input's name for compute (default 0: the first input)
  --labels FILE       labels, one per line (default <model dir>/labels.txt)
  --top K             classes to print (default 5)
  --dims D0,D1,...    f32 input dims (default 1,3,224,224)
  --batch N           replicate each tensor N times into one input (default 1)
  --classes N         output floats per batch item (default 1000)
  --repeat N          runs per tensor; N > 1 prints 'run <i> <us>' to stderr (default 1)
  --dump DIR          write the raw output bytes to DIR/<tensor basename>.out
";

const KNOWN_FLAGS: [&str; 11] = [
    "--model",
    "--model-dir",
    "--target",
    "--input",
    "--labels",
    "--top",
    "--dims",
    "--batch",
    "--classes",
    "--repeat",
    "--dump",
];

/// Exit code 2 (usage) adds a usage hint; 1 is for wasi-nn and file errors.
fn die(code: i32, msg: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("classify: {}", msg);
    if code == 2 {
        eprintln!("usage: classify [OPTIONS] TENSOR...  (--help for details)");
    }
    std::process::exit(code)
}

/// A wasi:nn failure: the error resource's code and the host's message.
fn nn_check<T>(call: &str, r: Result<T, nn::Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => die(1, &format!("{} failed: {} ({})", call, e.code, e.data)),
    }
}

/// strerror text without Rust's " (os error N)" suffix, to match the C guest.
fn io_msg(e: &std::io::Error) -> String {
    let mut s = e.to_string();
    if let Some(i) = s.find(" (os error ") {
        s.truncate(i);
    }
    s
}

/// Digits only (no sign, no spaces) so C and Rust accept exactly the same strings.
fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: u64 = 0;
    for b in s.bytes() {
        v = v * 10 + u64::from(b - b'0');
        if v > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(v as u32)
}

fn parse_count(flag: &str, s: &str) -> u32 {
    match parse_u32(s) {
        Some(v) if v > 0 => v,
        _ => die(
            2,
            &format!(
                "invalid value for {}: '{}' (expected a positive integer)",
                flag, s
            ),
        ),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{}{}", dir, name)
    } else {
        format!("{}/{}", dir, name)
    }
}

fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| die(1, &format!("cannot read {}: {}", path, io_msg(&e))))
}

fn load_labels(path: &str) -> Vec<String> {
    match std::fs::read(path) {
        Ok(text) => {
            let mut v: Vec<String> = text
                .split(|b| *b == b'\n')
                .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
                .collect();
            // A final newline does not start another label.
            if text.is_empty() || text.ends_with(b"\n") {
                v.pop();
            }
            v
        }
        Err(e) => {
            eprintln!(
                "classify: warning: cannot read labels {}: {}; printing class indices",
                path,
                io_msg(&e)
            );
            Vec::new()
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut model_name: Option<String> = None;
    let mut model_dir: Option<String> = None;
    let mut labels_path: Option<String> = None;
    let mut dump_dir: Option<String> = None;
    let mut target = ExecutionTarget::Cpu;
    let mut input_name = "0".to_string();
    let (mut top, mut batch, mut classes, mut repeat) = (5u32, 1u32, 1000u32, 1u32);
    let mut dims: Vec<u32> = vec![1, 3, 224, 224];
    let mut tensors: Vec<String> = Vec::new();
    let mut opts_done = false;

    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if opts_done || !a.starts_with('-') || a == "-" {
            tensors.push(a.clone());
            continue;
        }
        if a == "--" {
            opts_done = true;
            continue;
        }
        if a == "-h" || a == "--help" {
            print!("{}", USAGE);
            let _ = std::io::stdout().flush();
            return;
        }
        // --flag VALUE or --flag=VALUE
        let (flag, inline) = match a.find('=') {
            Some(p) => (&a[..p], Some(a[p + 1..].to_string())),
            None => (a.as_str(), None),
        };
        if !KNOWN_FLAGS.contains(&flag) {
            die(2, &format!("unknown option '{}'", a));
        }
        let val = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => die(2, &format!("option '{}' requires a value", flag)),
        };
        match flag {
            "--model" => model_name = Some(val),
            "--model-dir" => model_dir = Some(val),
            "--target" => {
                target = match val.as_str() {
                    "cpu" => ExecutionTarget::Cpu,
                    "gpu" => ExecutionTarget::Gpu,
                    "tpu" => ExecutionTarget::Tpu,
                    _ => die(
                        2,
                        &format!(
                            "invalid value for --target: '{}' (expected cpu, gpu or tpu: wasi:nn@{} has no auto)",
                            val,
                            nn::version()
                        ),
                    ),
                }
            }
            "--input" => input_name = val,
            "--labels" => labels_path = Some(val),
            "--top" => top = parse_count(flag, &val),
            "--dims" => {
                let parsed: Option<Vec<u32>> = val
                    .split(',')
                    .map(|t| parse_u32(t).filter(|d| *d > 0))
                    .collect();
                dims = match parsed {
                    Some(d) if d.len() <= 16 => d,
                    _ => die(
                        2,
                        &format!(
                            "invalid value for --dims: '{}' (expected 1 to 16 positive integers like 1,3,224,224)",
                            val
                        ),
                    ),
                };
            }
            "--batch" => batch = parse_count(flag, &val),
            "--classes" => classes = parse_count(flag, &val),
            "--repeat" => repeat = parse_count(flag, &val),
            "--dump" => dump_dir = Some(val),
            _ => unreachable!(),
        }
    }
    if tensors.is_empty() {
        die(2, "no TENSOR given");
    }

    // Flags beat env vars; a directory beats a name at the same level.
    if model_dir.is_none() && model_name.is_none() {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(d) = env("MODEL_DIR") {
            model_dir = Some(d);
        } else {
            model_name =
                Some(env("MODEL_NAME").unwrap_or_else(|| "efficientnet-lite0".to_string()));
        }
    }
    if model_dir.is_some() {
        model_name = None;
    }

    // Sizes: input = batch * product(dims[1:]) f32, output = batch * classes f32 (all < 4 GiB).
    dims[0] = batch;
    let mut item_bytes: u64 = 4;
    for d in &dims[1..] {
        item_bytes *= u64::from(*d);
        if item_bytes > u64::from(u32::MAX) {
            die(2, "input too large: --dims product overflows 32 bits");
        }
    }
    if item_bytes * u64::from(batch) > u64::from(u32::MAX) {
        die(
            2,
            "input too large: --batch times the tensor size overflows 32 bits",
        );
    }
    if u64::from(classes) * u64::from(batch) * 4 > u64::from(u32::MAX) {
        die(
            2,
            "output too large: --batch times --classes overflows 32 bits",
        );
    }
    let top = top.min(classes) as usize;
    let classes = classes as usize;
    let item_bytes = item_bytes as usize;

    // Labels: read before the model so the warning comes first and once.
    let labels_path = labels_path.unwrap_or_else(|| match (&model_dir, &model_name) {
        (Some(d), _) => join(d, "labels.txt"),
        (None, Some(n)) => join(&join("/models", n), "labels.txt"),
        (None, None) => unreachable!(),
    });
    let labels = load_labels(&labels_path);

    let graph = match (&model_dir, &model_name) {
        (Some(dir), _) => {
            let (files, enc) = if Path::new(&join(dir, "model.xml")).exists() {
                (
                    vec![join(dir, "model.xml"), join(dir, "model.bin")],
                    GraphEncoding::Openvino,
                )
            } else if Path::new(&join(dir, "model.onnx")).exists() {
                (vec![join(dir, "model.onnx")], GraphEncoding::Onnx)
            } else if Path::new(&join(dir, "model.tflite")).exists() {
                (
                    vec![join(dir, "model.tflite")],
                    GraphEncoding::Tensorflowlite,
                )
            } else {
                die(
                    1,
                    &format!("no model.xml, model.onnx or model.tflite in {}", dir),
                )
            };
            // Read ourselves (not build_from_files) so file errors name the path.
            let bufs: Vec<Vec<u8>> = files.iter().map(|f| read_file(f)).collect();
            nn_check("load", Graph::load(&bufs, enc, target))
        }
        (None, Some(name)) => nn_check("load-by-name", Graph::load_by_name(name)),
        (None, None) => unreachable!(),
    };
    let mut ctx: ExecutionContext =
        nn_check("init-execution-context", graph.init_execution_context());

    let out_bytes = classes * batch as usize * 4;
    let mut out: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();

    for path in &tensors {
        let mut data = read_file(path);
        if data.len() != item_bytes {
            die(
                1,
                &format!(
                    "{}: size {} bytes, expected {} (product of dims[1:] * 4)",
                    path,
                    data.len(),
                    item_bytes
                ),
            );
        }
        if batch > 1 {
            data = data.repeat(batch as usize);
        }

        for r in 1..=repeat {
            let t0 = Instant::now();
            // Each compute consumes its input tensors (own<tensor>): one per run.
            let input = Tensor::new(&dims, TensorType::Fp32, &data[..]);
            let outputs = nn_check("compute", ctx.compute(vec![(input_name.clone(), input)]));
            let first = match outputs.into_iter().next() {
                Some((_, tensor)) => tensor,
                None => die(1, "compute returned no output tensor"),
            };
            if first.ty() != TensorType::Fp32 as u32 {
                die(
                    1,
                    &format!("output 0 has tensor-type {}, not FP32", first.ty()),
                );
            }
            out = first.data();
            let us = t0.elapsed().as_micros();
            if repeat > 1 {
                eprintln!("run {} {}", r, us);
            }
        }
        drop(data);
        let written = out.len();
        if let Some(dir) = &dump_dir {
            let base = path.rsplit('/').next().unwrap_or(path);
            let dp = join(dir, &format!("{}.out", base));
            if let Err(e) = std::fs::write(&dp, &out[..written]) {
                die(1, &format!("cannot write {}: {}", dp, io_msg(&e)));
            }
        }
        if written != out_bytes {
            die(
                1,
                &format!(
                    "output 0 has {} bytes, expected {} (--classes {} x --batch {} x 4)",
                    written, out_bytes, classes, batch
                ),
            );
        }

        let logits: Vec<f32> = out[..classes * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();

        // Softmax over batch item 0, in f64.
        let mut max = f64::NEG_INFINITY;
        for &x in &logits {
            if f64::from(x) > max {
                max = f64::from(x);
            }
        }
        let mut probs: Vec<f64> = logits.iter().map(|&x| (f64::from(x) - max).exp()).collect();
        let sum: f64 = probs.iter().fold(0.0, |s, p| s + p);
        for p in probs.iter_mut() {
            *p /= sum;
        }

        // Selection on the raw logits: exact comparisons; strict '>' keeps the lower index on ties.
        let mut chosen = vec![false; classes];
        let mut text = format!("{}\n", path);
        for rank in 1..=top {
            let mut best: Option<usize> = None;
            for c in 0..classes {
                if !chosen[c] && best.map_or(true, |b| logits[c] > logits[b]) {
                    best = Some(c);
                }
            }
            let best = best.unwrap();
            chosen[best] = true;
            match labels.get(best) {
                Some(l) => text += &format!("  {}. {} ({}) {:.6}\n", rank, l, best, probs[best]),
                None => {
                    text += &format!("  {}. class {} ({}) {:.6}\n", rank, best, best, probs[best])
                }
            }
        }
        let mut lock = stdout.lock();
        let _ = lock.write_all(text.as_bytes());
    }
    let _ = stdout.lock().flush();
}
