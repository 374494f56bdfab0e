//! Bindings for `wasi:nn@0.2.0-rc-2024-10-28`, written by hand against the canonical ABI.
//!
//! Generated bindings (wit-bindgen) need a newer rustc than Debian's 1.63, and this interface
//! is small: each import below is the core function `wasm-tools component new` lowers the WIT
//! function to (wit/deps/wasi-nn/wasi-nn.wit), and the safe wrappers own the handles they get.
//!
//! Lowering rules used: a `list`/`string` parameter is (pointer, length); a result that does
//! not fit one core value is written to a return area whose address is the last parameter;
//! `result<T, E>` is a u8 discriminant then the payload at the payload's alignment; lists the
//! host returns are allocated in this module's memory through `cabi_realloc` (below), so they
//! become `Vec`s owned here.

use std::alloc::{alloc, handle_alloc_error, realloc, Layout};

const VERSION: &str = "0.2.0-rc-2024-10-28";

/// `tensor-type`, in WIT order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(dead_code)]
pub enum TensorType {
    Fp16 = 0,
    Fp32 = 1,
    Fp64 = 2,
    Bf16 = 3,
    U8 = 4,
    I32 = 5,
    I64 = 6,
}

/// `graph-encoding`, in WIT order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(dead_code)]
pub enum GraphEncoding {
    Openvino = 0,
    Onnx = 1,
    Tensorflow = 2,
    Pytorch = 3,
    Tensorflowlite = 4,
    Ggml = 5,
    Autodetect = 6,
}

/// `execution-target`, in WIT order (this version has no `auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExecutionTarget {
    Cpu = 0,
    Gpu = 1,
    Tpu = 2,
}

const ERROR_CODES: [&str; 9] = [
    "invalid-argument",
    "invalid-encoding",
    "timeout",
    "runtime-error",
    "unsupported-operation",
    "too-large",
    "not-found",
    "security",
    "unknown",
];

mod raw {
    /// `result<own<T>, own<error>>`: discriminant, then the handle.
    #[repr(C)]
    pub struct HandleResult {
        pub is_err: u8,
        pub handle: u32,
    }

    /// A `list<T>` or `string` return: pointer and length (elements).
    #[repr(C)]
    pub struct ListReturn {
        pub ptr: *mut u8,
        pub len: usize,
    }

    /// `result<list<named-tensor>, own<error>>`: discriminant, then the list (or the error
    /// handle in the pointer's place).
    #[repr(C)]
    pub struct ListResult {
        pub is_err: u8,
        pub ptr: *mut u8,
        pub len: usize,
    }

    /// One `tuple<string, own<tensor>>` element, as passed in and returned.
    #[repr(C)]
    pub struct NamedTensor {
        pub name_ptr: *mut u8,
        pub name_len: usize,
        pub tensor: u32,
    }

    /// One `graph-builder` (list<u8>) of `load`'s list.
    #[repr(C)]
    pub struct Bytes {
        pub ptr: *const u8,
        pub len: usize,
    }

    #[link(wasm_import_module = "wasi:nn/tensor@0.2.0-rc-2024-10-28")]
    extern "C" {
        #[link_name = "[constructor]tensor"]
        pub fn tensor_new(
            dims_ptr: *const u32,
            dims_len: usize,
            ty: u32,
            data_ptr: *const u8,
            data_len: usize,
        ) -> u32;
        #[link_name = "[method]tensor.dimensions"]
        pub fn tensor_dimensions(tensor: u32, ret: *mut ListReturn);
        #[link_name = "[method]tensor.ty"]
        pub fn tensor_ty(tensor: u32) -> u32;
        #[link_name = "[method]tensor.data"]
        pub fn tensor_data(tensor: u32, ret: *mut ListReturn);
        #[link_name = "[resource-drop]tensor"]
        pub fn tensor_drop(tensor: u32);
    }

    #[link(wasm_import_module = "wasi:nn/graph@0.2.0-rc-2024-10-28")]
    extern "C" {
        #[link_name = "load"]
        pub fn load(
            builders_ptr: *const Bytes,
            builders_len: usize,
            encoding: u32,
            target: u32,
            ret: *mut HandleResult,
        );
        #[link_name = "load-by-name"]
        pub fn load_by_name(name_ptr: *const u8, name_len: usize, ret: *mut HandleResult);
        #[link_name = "[method]graph.init-execution-context"]
        pub fn init_execution_context(graph: u32, ret: *mut HandleResult);
        #[link_name = "[resource-drop]graph"]
        pub fn graph_drop(graph: u32);
    }

    #[link(wasm_import_module = "wasi:nn/inference@0.2.0-rc-2024-10-28")]
    extern "C" {
        #[link_name = "[method]graph-execution-context.compute"]
        pub fn compute(
            ctx: u32,
            inputs_ptr: *const NamedTensor,
            inputs_len: usize,
            ret: *mut ListResult,
        );
        #[link_name = "[resource-drop]graph-execution-context"]
        pub fn context_drop(ctx: u32);
    }

    #[link(wasm_import_module = "wasi:nn/errors@0.2.0-rc-2024-10-28")]
    extern "C" {
        #[link_name = "[method]error.code"]
        pub fn error_code(error: u32) -> u32;
        #[link_name = "[method]error.data"]
        pub fn error_data(error: u32, ret: *mut ListReturn);
        #[link_name = "[resource-drop]error"]
        pub fn error_drop(error: u32);
    }
}

/// The canonical ABI's allocator: the host calls it to place returned lists and strings in
/// this module's memory. Every block is one `Vec`'s buffer (same size and alignment), which
/// the wrappers below take over with `Vec::from_raw_parts`.
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8; // dangling and aligned, as an empty Vec's
    }
    let layout = Layout::from_size_align_unchecked(new_len, align);
    let ptr = if old_len == 0 {
        alloc(layout)
    } else {
        realloc(old, Layout::from_size_align_unchecked(old_len, align), new_len)
    };
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    ptr
}

unsafe fn take_vec<T>(ret: &raw::ListReturn) -> Vec<T> {
    Vec::from_raw_parts(ret.ptr as *mut T, ret.len, ret.len)
}

unsafe fn take_string(ptr: *mut u8, len: usize) -> String {
    // The canonical ABI guarantees valid UTF-8 for `string`.
    String::from_utf8_unchecked(Vec::from_raw_parts(ptr, len, len))
}

/// An owned `error` resource's content: its code's WIT name and the host's message.
#[derive(Debug)]
pub struct Error {
    pub code: &'static str,
    pub data: String,
}

impl Error {
    fn take(handle: u32) -> Error {
        unsafe {
            let code = raw::error_code(handle) as usize;
            let mut ret = raw::ListReturn { ptr: std::ptr::null_mut(), len: 0 };
            raw::error_data(handle, &mut ret);
            raw::error_drop(handle);
            Error {
                code: ERROR_CODES.get(code).copied().unwrap_or("unknown"),
                data: take_string(ret.ptr, ret.len),
            }
        }
    }
}

fn handle_result(ret: raw::HandleResult) -> Result<u32, Error> {
    if ret.is_err == 0 {
        Ok(ret.handle)
    } else {
        Err(Error::take(ret.handle))
    }
}

/// A `tensor` resource.
pub struct Tensor(u32);

impl Tensor {
    pub fn new(dimensions: &[u32], ty: TensorType, data: &[u8]) -> Tensor {
        Tensor(unsafe {
            raw::tensor_new(
                dimensions.as_ptr(),
                dimensions.len(),
                ty as u32,
                data.as_ptr(),
                data.len(),
            )
        })
    }

    #[allow(dead_code)]
    pub fn dimensions(&self) -> Vec<u32> {
        let mut ret = raw::ListReturn { ptr: std::ptr::null_mut(), len: 0 };
        unsafe {
            raw::tensor_dimensions(self.0, &mut ret);
            take_vec(&ret)
        }
    }

    /// The element type's index in `tensor-type`.
    pub fn ty(&self) -> u32 {
        unsafe { raw::tensor_ty(self.0) }
    }

    pub fn data(&self) -> Vec<u8> {
        let mut ret = raw::ListReturn { ptr: std::ptr::null_mut(), len: 0 };
        unsafe {
            raw::tensor_data(self.0, &mut ret);
            take_vec(&ret)
        }
    }

    /// The handle, given up (passing `own<tensor>` moves it to the host).
    fn into_handle(self) -> u32 {
        let handle = self.0;
        std::mem::forget(self);
        handle
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        unsafe { raw::tensor_drop(self.0) }
    }
}

/// A `graph` resource.
pub struct Graph(u32);

impl Graph {
    pub fn load(
        builders: &[Vec<u8>],
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> Result<Graph, Error> {
        let list: Vec<raw::Bytes> = builders
            .iter()
            .map(|b| raw::Bytes { ptr: b.as_ptr(), len: b.len() })
            .collect();
        let mut ret = raw::HandleResult { is_err: 0, handle: 0 };
        unsafe {
            raw::load(list.as_ptr(), list.len(), encoding as u32, target as u32, &mut ret);
        }
        handle_result(ret).map(Graph)
    }

    pub fn load_by_name(name: &str) -> Result<Graph, Error> {
        let mut ret = raw::HandleResult { is_err: 0, handle: 0 };
        unsafe { raw::load_by_name(name.as_ptr(), name.len(), &mut ret) };
        handle_result(ret).map(Graph)
    }

    pub fn init_execution_context(&self) -> Result<ExecutionContext, Error> {
        let mut ret = raw::HandleResult { is_err: 0, handle: 0 };
        unsafe { raw::init_execution_context(self.0, &mut ret) };
        handle_result(ret).map(ExecutionContext)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        unsafe { raw::graph_drop(self.0) }
    }
}

/// A `graph-execution-context` resource.
pub struct ExecutionContext(u32);

impl ExecutionContext {
    /// `compute`: the inputs move to the host; the outputs come back named.
    pub fn compute(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
        // The names stay in `names` until the call returns; the tensor handles move.
        let mut names = Vec::with_capacity(inputs.len());
        let mut list = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            list.push(raw::NamedTensor {
                name_ptr: name.as_ptr() as *mut u8,
                name_len: name.len(),
                tensor: tensor.into_handle(),
            });
            names.push(name);
        }
        let mut ret = raw::ListResult { is_err: 0, ptr: std::ptr::null_mut(), len: 0 };
        unsafe { raw::compute(self.0, list.as_ptr(), list.len(), &mut ret) };
        drop(names);
        if ret.is_err != 0 {
            return Err(Error::take(ret.ptr as usize as u32));
        }
        let outputs: Vec<raw::NamedTensor> =
            unsafe { Vec::from_raw_parts(ret.ptr as *mut raw::NamedTensor, ret.len, ret.len) };
        Ok(outputs
            .into_iter()
            .map(|o| (unsafe { take_string(o.name_ptr, o.name_len) }, Tensor(o.tensor)))
            .collect())
    }
}

impl ExecutionContext {
    /// The raw handle (for tests of the host's handle checks).
    #[allow(dead_code)]
    pub fn handle(&self) -> u32 {
        self.0
    }

    /// A context from a raw handle; the caller answers for it being live (tests pass stale ones).
    #[allow(dead_code)]
    pub unsafe fn from_handle(handle: u32) -> ExecutionContext {
        ExecutionContext(handle)
    }
}

impl Drop for ExecutionContext {
    fn drop(&mut self) {
        unsafe { raw::context_drop(self.0) }
    }
}

/// The interface version these bindings speak (for messages).
pub fn version() -> &'static str {
    VERSION
}
