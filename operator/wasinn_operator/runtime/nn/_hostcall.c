/* Host functions for wasmtime in C: the trampoline, and the caller's linear memory.
 *
 * wasmtime calls `trampoline` (its unchecked callback form) for every host function defined by
 * hostcall.py. It binds the caller's exported linear memory (looked up once per store) and calls
 * the function's Python implementation with that memory and its i32 arguments. For the three
 * wasi-nn calls a guest makes per inference it first asks the run's `NNCache` (_nncache.c),
 * which answers the repeats of an inference loop without Python. Everything else, and every
 * first call, goes to Python, which validates it and tells the cache what it may answer next
 * time.
 *
 * wasmtime's C functions are reached through the addresses wasmtime-py's own bindings opened
 * (`configure`), so this links against no library but Python.
 */
#include "_hostcall.h"

#include <stddef.h>
#include <string.h>

#define MAX_ARITY 8

typedef void *(*caller_context_fn)(void *caller);
typedef bool (*caller_export_get_fn)(void *caller, const char *name, size_t len, void *item);
typedef uint8_t *(*memory_data_fn)(void *context, const void *memory);
typedef size_t (*memory_data_size_fn)(void *context, const void *memory);
typedef void *(*trap_new_fn)(const char *message, size_t len);

static struct {
    caller_context_fn caller_context;
    caller_export_get_fn caller_export_get;
    memory_data_fn memory_data;
    memory_data_size_fn memory_data_size;
    trap_new_fn trap_new;
    size_t extern_size;
    size_t extern_of;
    int extern_kind_memory;
    PyObject *host_trap_error; /* ends the run with its message as the trap */
    PyObject *func_module;     /* wasmtime._func: LAST_EXCEPTION is re-raised by wasmtime-py */
    uint64_t generation;       /* bumped at every store a Memory binds */
} api;

/* ---- Memory ------------------------------------------------------------------------------ */

/* Bind `m` to the caller's store; false if the caller exports no memory. */
static bool memory_bind(MemoryObject *m, void *caller)
{
    void *context = api.caller_context(caller);
    if (context != m->context) {
        m->context = context;
        m->generation = ++api.generation;
        memset(m->item, 0, sizeof m->item);
        m->present = api.caller_export_get(caller, "memory", 6, m->item) &&
                     (int)m->item[0] == api.extern_kind_memory;
        m->base = m->size = 0;
        if (m->present) {
            const void *memory = m->item + api.extern_of;
            m->base = (uint64_t)(uintptr_t)api.memory_data(context, memory);
            m->size = (uint64_t)api.memory_data_size(context, memory);
        }
    }
    return m->present;
}

static PyObject *memory_grown(MemoryObject *m, PyObject *Py_UNUSED(ignored))
{
    if (m->present)
        m->size = (uint64_t)api.memory_data_size(m->context, m->item + api.extern_of);
    return PyLong_FromUnsignedLongLong(m->size);
}

static PyObject *memory_get_base(MemoryObject *m, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(m->base);
}

static PyObject *memory_get_size(MemoryObject *m, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(m->size);
}

static PyMethodDef memory_methods[] = {
    {"grown", (PyCFunction)memory_grown, METH_NOARGS,
     "The memory's current byte length (after a memory.grow, larger than `size`)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef memory_getset[] = {
    {"base", (getter)memory_get_base, NULL, "Host address of guest offset 0.", NULL},
    {"size", (getter)memory_get_size, NULL, "Byte length as last read.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wasinn_operator.runtime.nn._hostcall.Memory",
    .tp_doc = "The caller's exported linear memory, looked up once per store.",
    .tp_basicsize = sizeof(MemoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_methods = memory_methods,
    .tp_getset = memory_getset,
};

/* ---- the trampoline ---------------------------------------------------------------------- */

typedef struct {
    PyObject *fn;
    int arity;
    int kind;
    MemoryObject *memory;
    PyObject *cache; /* an NNCache of `memory`; NULL for KIND_GENERIC */
} HostFunc;

static void *trap_from(const char *message, Py_ssize_t len)
{
    return api.trap_new(message, (size_t)len);
}

/* The trap for the Python exception being raised (cleared). */
static void *exception_trap(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (value != NULL && PyErr_GivenExceptionMatches(value, api.host_trap_error)) {
        PyObject *text = PyObject_Str(value);
        Py_ssize_t len = 0;
        const char *message = text ? PyUnicode_AsUTF8AndSize(text, &len) : NULL;
        void *trap = message ? trap_from(message, len) : trap_from("host trap", 9);
        PyErr_Clear();
        Py_XDECREF(text);
        Py_DECREF(value);
        return trap;
    }
    /* Anything else (KeyboardInterrupt and the like) is re-raised by wasmtime-py. */
    if (value != NULL && PyObject_SetAttrString(api.func_module, "LAST_EXCEPTION", value) < 0)
        PyErr_Clear();
    Py_XDECREF(value);
    return trap_from("python exception", 16);
}

static void *call_python(HostFunc *f, bool present, raw_t *slots)
{
    PyObject *argv[1 + MAX_ARITY] = {NULL};
    PyObject *result = NULL;
    void *trap = NULL;
    argv[0] = present ? (PyObject *)f->memory : Py_None;
    int n = 1;
    for (; n <= f->arity; n++) {
        argv[n] = PyLong_FromLong(slots[n - 1].i32);
        if (argv[n] == NULL)
            goto failed;
    }
    result = PyObject_Vectorcall(f->fn, argv, (size_t)n, NULL);
    if (result == NULL)
        goto failed;
    long value = PyLong_AsLong(result);
    if (value == -1 && PyErr_Occurred())
        goto failed;
    slots[0].i32 = (int32_t)value;
    goto done;
failed:
    trap = exception_trap();
done:
    Py_XDECREF(result);
    for (int i = 1; i < n; i++)
        Py_XDECREF(argv[i]);
    return trap;
}

static size_t trampoline(void *env, void *caller, raw_t *slots, size_t nslots)
{
    HostFunc *f = env;
    PyGILState_STATE gil = PyGILState_Ensure();
    void *trap = NULL;
    bool present = memory_bind(f->memory, caller);
    int answered = 0;
    if (f->kind != KIND_GENERIC)
        answered = nncache_again(f->cache, f->kind, f->memory, present, slots);
    if (answered > 0)
        slots[0].i32 = 0;
    else if (answered < 0)
        trap = exception_trap();
    else
        trap = call_python(f, present, slots);
    PyGILState_Release(gil);
    (void)nslots;
    return (size_t)(uintptr_t)trap;
}

static void finalize(void *env)
{
    HostFunc *f = env;
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(f->fn);
    Py_XDECREF((PyObject *)f->memory);
    Py_XDECREF(f->cache);
    PyMem_RawFree(f);
    PyGILState_Release(gil);
}

/* ---- module functions -------------------------------------------------------------------- */

static void *address_of(PyObject *value)
{
    return PyLong_AsVoidPtr(value);
}

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"caller_context", "caller_export_get", "memory_data",
                               "memory_data_size", "trap_new", "extern_size", "extern_of",
                               "extern_kind_memory", "raw_size", "host_trap_error",
                               "func_module", NULL};
    PyObject *fns[5];
    Py_ssize_t extern_size, extern_of, raw_size;
    int kind_memory;
    PyObject *host_trap_error, *func_module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOnninOO", keywords, &fns[0], &fns[1],
                                     &fns[2], &fns[3], &fns[4], &extern_size, &extern_of,
                                     &kind_memory, &raw_size, &host_trap_error, &func_module))
        return NULL;
    if (raw_size != RAW_SIZE || extern_size > EXTERN_MAX || extern_of >= extern_size) {
        PyErr_Format(PyExc_RuntimeError,
                     "wasmtime's raw value (%zd bytes) or extern (%zd bytes) is not the layout "
                     "this module was built for",
                     raw_size, extern_size);
        return NULL;
    }
    void *addresses[5];
    for (int i = 0; i < 5; i++) {
        addresses[i] = address_of(fns[i]);
        if (addresses[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a wasmtime function address is 0");
            return NULL;
        }
    }
    api.caller_context = (caller_context_fn)addresses[0];
    api.caller_export_get = (caller_export_get_fn)addresses[1];
    api.memory_data = (memory_data_fn)addresses[2];
    api.memory_data_size = (memory_data_size_fn)addresses[3];
    api.trap_new = (trap_new_fn)addresses[4];
    api.extern_size = (size_t)extern_size;
    api.extern_of = (size_t)extern_of;
    api.extern_kind_memory = kind_memory;
    Py_INCREF(host_trap_error);
    Py_XSETREF(api.host_trap_error, host_trap_error);
    Py_INCREF(func_module);
    Py_XSETREF(api.func_module, func_module);
    Py_RETURN_NONE;
}

static PyObject *new_env(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *fn, *cache;
    int arity, kind;
    MemoryObject *memory;
    if (!PyArg_ParseTuple(args, "OiiO!O", &fn, &arity, &kind, &MemoryType, &memory, &cache))
        return NULL;
    if (api.trap_new == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    if (arity < 0 || arity > MAX_ARITY || kind < KIND_GENERIC || kind > KIND_GET_OUTPUT) {
        PyErr_Format(PyExc_ValueError, "arity %d (0 to %d) or kind %d is out of range", arity,
                     MAX_ARITY, kind);
        return NULL;
    }
    if (kind != KIND_GENERIC && (!PyObject_TypeCheck(cache, &NNCacheType) ||
                                 nncache_memory(cache) != memory)) {
        PyErr_SetString(PyExc_TypeError, "a wasi-nn kind needs an NNCache of its memory");
        return NULL;
    }
    int needed[] = {0, 3, 1, 5};
    if (kind != KIND_GENERIC && arity != needed[kind]) {
        PyErr_Format(PyExc_ValueError, "kind %d takes %d arguments, not %d", kind, needed[kind],
                     arity);
        return NULL;
    }
    HostFunc *f = PyMem_RawMalloc(sizeof *f);
    if (f == NULL)
        return PyErr_NoMemory();
    Py_INCREF(fn);
    Py_INCREF(memory);
    f->fn = fn;
    f->arity = arity;
    f->kind = kind;
    f->memory = memory;
    f->cache = NULL;
    if (kind != KIND_GENERIC) {
        Py_INCREF(cache);
        f->cache = cache;
    }
    return PyLong_FromVoidPtr(f);
}

static PyObject *free_env(PyObject *Py_UNUSED(module), PyObject *arg)
{
    void *env = PyLong_AsVoidPtr(arg);
    if (env == NULL && PyErr_Occurred())
        return NULL;
    if (env != NULL)
        finalize(env);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Give the module wasmtime's C functions and layouts (once, at import of hostcall)."},
    {"new_env", new_env, METH_VARARGS,
     "new_env(fn, arity, kind, memory, cache) -> the env address of one host function."},
    {"free_env", free_env, METH_O, "Free an env wasmtime never took."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wasinn_operator.runtime.nn._hostcall",
    .m_doc = "wasmtime host functions in C: the trampoline and wasi-nn's repeated calls.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__hostcall(void)
{
    if (PyType_Ready(&MemoryType) < 0 || PyType_Ready(&NNCacheType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Memory", (PyObject *)&MemoryType) < 0 ||
        PyModule_AddObjectRef(module, "NNCache", (PyObject *)&NNCacheType) < 0 ||
        PyModule_AddObject(module, "TRAMPOLINE", PyLong_FromVoidPtr((void *)trampoline)) < 0 ||
        PyModule_AddObject(module, "FINALIZER", PyLong_FromVoidPtr((void *)finalize)) < 0 ||
        PyModule_AddIntConstant(module, "GENERIC", KIND_GENERIC) < 0 ||
        PyModule_AddIntConstant(module, "SET_INPUT", KIND_SET_INPUT) < 0 ||
        PyModule_AddIntConstant(module, "COMPUTE", KIND_COMPUTE) < 0 ||
        PyModule_AddIntConstant(module, "GET_OUTPUT", KIND_GET_OUTPUT) < 0 ||
        PyModule_AddIntConstant(module, "NN_CONTEXTS", NN_CONTEXTS) < 0 ||
        PyModule_AddIntConstant(module, "NN_PORTS", NN_PORTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
