/* NNCache: one run's validated wasi-nn calls, answered again in C.
 *
 * A guest's inference loop repeats the calls of its first inference: `set_input` with the same
 * tensor record, `compute`, `get_output` into the same buffer. Each reaching Python costs more
 * host time than a small model's inference leaves room for (a few microseconds of Python per
 * call, and OpenVINO's threads idle sooner the longer the pause between inferences). Python
 * validates every first call and tells the cache what it may answer next time:
 *
 * - `remember_input`: a `set_input` whose tensor record and dimension bytes repeat the ones
 *   validated and bound for that context and index is answered as a success;
 * - `remember_compute`: a `compute` on a context whose inputs are still the ones its last
 *   compute ran with, bound in place, runs that request again by calling its OpenVINO methods
 *   from here (start, wait or wait under the run's deadline, each adopted output's size);
 * - `remember_output`: a `get_output` repeating validated arguments, while the context's last
 *   compute ran the request the entry was made from, copies that request's kept buffer.
 *
 * Why a cached answer stays right: linear memory neither moves nor shrinks (the engine sets
 * `memory_may_move` off and memory only grows), so a range checked once stays inside memory; a
 * new store starts a new generation of the memory, and entries of another one are void; a
 * `set_input` or `compute` that is not a cached repeat drops what depended on the context's
 * inputs and outputs before Python sees it; `get_output` is answered only while `computed`
 * holds the serial of the request the entry was made from (serials are never reused), whose
 * kept output buffer is alive as long as the Python context that holds that request. A
 * `compute` is answered only while nothing Python did since it remembered it could have changed
 * the request (any `set_input`, `compute` or `get_output` Python answers drops it), and leaves
 * Python's context as its own repeat would: the same request, bindings and outputs. An adopted
 * output whose size changed is handed to Python's `settled`, and an inference that fails is
 * dropped here and run by Python, which owns the retry. The outputs are current only while
 * `computed` is set: Python asks `stale`.
 */
#include "_hostcall.h"

#include <math.h>
#include <string.h>
#include <time.h>

#define RECORD_SIZE 20 /* a wasi-nn tensor record */
#define MAX_RANK 8

typedef struct {
    uint64_t generation; /* 0: empty */
    unsigned char record[RECORD_SIZE];
    uint32_t rank;
    unsigned char dims[4 * MAX_RANK];
} InputEntry;

typedef struct {
    uint64_t serial; /* 0: empty */
    uint64_t generation;
    uint32_t out_ptr, out_max, written;
    uint64_t source;
    uint32_t nbytes;
} OutputEntry;

typedef struct {
    uint64_t serial; /* the request's; 0: empty */
    uint64_t generation;
    double deadline;      /* CLOCK_MONOTONIC seconds (Python's time.monotonic), or INFINITY */
    PyObject *start;      /* start(*start_args) begins the inference */
    PyObject *start_args;
    PyObject *wait;       /* wait(), or under a deadline wait(ms) -> finished in time */
    PyObject *checks;     /* ((size, nbytes), ...): an adopted output's size() was nbytes */
    PyObject *settled;    /* settled() -> serial: a size changed; Python drops that buffer */
    PyObject *expire;     /* expire(): the wait timed out; cancels the inference and raises */
} ComputeEntry;

typedef struct {
    PyObject_HEAD
    MemoryObject *memory; /* the run's memory: every entry is of one of its generations */
    uint64_t computed[NN_CONTEXTS]; /* the serial of each context's last compute, 0: none */
    InputEntry inputs[NN_CONTEXTS][NN_PORTS];
    OutputEntry outputs[NN_CONTEXTS][NN_PORTS];
    ComputeEntry computes[NN_CONTEXTS];
} NNCacheObject;

static void compute_drop(ComputeEntry *e)
{
    e->serial = 0;
    Py_CLEAR(e->start);
    Py_CLEAR(e->start_args);
    Py_CLEAR(e->wait);
    Py_CLEAR(e->checks);
    Py_CLEAR(e->settled);
    Py_CLEAR(e->expire);
}

static int nncache_init(NNCacheObject *c, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"memory", NULL};
    MemoryObject *memory;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!", keywords, &MemoryType, &memory))
        return -1;
    Py_INCREF(memory);
    Py_XSETREF(c->memory, memory);
    return 0;
}

static int nncache_traverse(NNCacheObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->memory);
    for (int i = 0; i < NN_CONTEXTS; i++) {
        const ComputeEntry *e = &c->computes[i];
        Py_VISIT(e->start);
        Py_VISIT(e->start_args);
        Py_VISIT(e->wait);
        Py_VISIT(e->checks);
        Py_VISIT(e->settled);
        Py_VISIT(e->expire);
    }
    return 0;
}

static int nncache_clear(NNCacheObject *c)
{
    Py_CLEAR(c->memory);
    for (int i = 0; i < NN_CONTEXTS; i++)
        compute_drop(&c->computes[i]);
    return 0;
}

static void nncache_dealloc(NNCacheObject *c)
{
    PyObject_GC_UnTrack(c);
    nncache_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

MemoryObject *nncache_memory(PyObject *cache)
{
    return ((NNCacheObject *)cache)->memory;
}

/* The memory's generation, 0 if it is unbound (nothing may be remembered then). */
static uint64_t generation_of(const NNCacheObject *c)
{
    return c->memory != NULL ? c->memory->generation : 0;
}

static PyObject *nncache_remember_input(NNCacheObject *c, PyObject *args)
{
    unsigned int ctx, index;
    Py_buffer record, dims;
    if (!PyArg_ParseTuple(args, "IIy*y*", &ctx, &index, &record, &dims))
        return NULL;
    uint64_t generation = generation_of(c);
    if (generation && ctx < NN_CONTEXTS && index < NN_PORTS && record.len == RECORD_SIZE &&
        dims.len >= 4 && dims.len <= 4 * MAX_RANK && dims.len % 4 == 0) {
        InputEntry *e = &c->inputs[ctx][index];
        memcpy(e->record, record.buf, RECORD_SIZE);
        memcpy(e->dims, dims.buf, (size_t)dims.len);
        e->rank = (uint32_t)(dims.len / 4);
        e->generation = generation;
    }
    PyBuffer_Release(&record);
    PyBuffer_Release(&dims);
    Py_RETURN_NONE;
}

static PyObject *nncache_remember_output(NNCacheObject *c, PyObject *args)
{
    unsigned int ctx, index, out_ptr, out_max, written, nbytes;
    unsigned long long serial, source;
    if (!PyArg_ParseTuple(args, "IIIIIKKI", &ctx, &index, &out_ptr, &out_max, &written, &serial,
                          &source, &nbytes))
        return NULL;
    uint64_t generation = generation_of(c);
    if (generation && ctx < NN_CONTEXTS && index < NN_PORTS && serial) {
        OutputEntry *e = &c->outputs[ctx][index];
        e->serial = serial;
        e->generation = generation;
        e->out_ptr = out_ptr;
        e->out_max = out_max;
        e->written = written;
        e->source = source;
        e->nbytes = nbytes;
    }
    Py_RETURN_NONE;
}

static bool valid_checks(PyObject *checks)
{
    if (!PyTuple_Check(checks))
        return false;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(checks); i++) {
        PyObject *pair = PyTuple_GET_ITEM(checks, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyCallable_Check(PyTuple_GET_ITEM(pair, 0)) || !PyLong_Check(PyTuple_GET_ITEM(pair, 1)))
            return false;
    }
    return true;
}

static PyObject *nncache_remember_compute(NNCacheObject *c, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ctx", "serial", "start", "start_args", "wait", "deadline",
                               "checks", "settled", "expire", NULL};
    unsigned int ctx;
    unsigned long long serial;
    PyObject *start, *start_args, *wait, *checks, *settled, *expire;
    double deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "IK$OO!OdOOO", keywords, &ctx, &serial, &start,
                                     &PyTuple_Type, &start_args, &wait, &deadline, &checks,
                                     &settled, &expire))
        return NULL;
    if (!PyCallable_Check(start) || !PyCallable_Check(wait) || !PyCallable_Check(settled) ||
        !PyCallable_Check(expire) || !valid_checks(checks) || isnan(deadline)) {
        PyErr_SetString(PyExc_TypeError,
                        "remember_compute: start, wait, settled and expire must be callable, "
                        "checks a tuple of (callable, int) and deadline a number");
        return NULL;
    }
    uint64_t generation = generation_of(c);
    if (generation && ctx < NN_CONTEXTS && serial) {
        ComputeEntry *e = &c->computes[ctx];
        compute_drop(e);
        e->start = Py_NewRef(start);
        e->start_args = Py_NewRef(start_args);
        e->wait = Py_NewRef(wait);
        e->checks = Py_NewRef(checks);
        e->settled = Py_NewRef(settled);
        e->expire = Py_NewRef(expire);
        e->deadline = deadline;
        e->generation = generation;
        e->serial = serial;
    }
    Py_RETURN_NONE;
}

static PyObject *nncache_computed(NNCacheObject *c, PyObject *args)
{
    unsigned int ctx;
    unsigned long long serial;
    if (!PyArg_ParseTuple(args, "IK", &ctx, &serial))
        return NULL;
    if (ctx < NN_CONTEXTS)
        c->computed[ctx] = serial;
    Py_RETURN_NONE;
}

static PyObject *nncache_stale(NNCacheObject *c, PyObject *arg)
{
    unsigned long ctx = PyLong_AsUnsignedLong(arg);
    if (ctx == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(ctx < NN_CONTEXTS && c->computed[ctx] == 0);
}

static PyMethodDef nncache_methods[] = {
    {"remember_input", (PyCFunction)nncache_remember_input, METH_VARARGS,
     "remember_input(ctx, index, record, dims): a set_input validated and bound."},
    {"remember_output", (PyCFunction)nncache_remember_output, METH_VARARGS,
     "remember_output(ctx, index, out_ptr, out_max, written, serial, source, nbytes): "
     "a get_output validated, copying `nbytes` from `source`, the kept output buffer of "
     "request `serial`."},
    {"remember_compute", (PyCFunction)(void (*)(void))nncache_remember_compute,
     METH_VARARGS | METH_KEYWORDS,
     "remember_compute(ctx, serial, *, start, start_args, wait, deadline, checks, settled, "
     "expire): how to run request `serial` again while the context's inputs stay as bound."},
    {"computed", (PyCFunction)nncache_computed, METH_VARARGS,
     "computed(ctx, serial): the context's compute ran request `serial`."},
    {"stale", (PyCFunction)nncache_stale, METH_O,
     "stale(ctx): the context's outputs are not current (no compute since a set_input answered "
     "here, or its compute failed)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject NNCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wasinn_operator.runtime.nn._hostcall.NNCache",
    .tp_doc = "One run's validated wasi-nn calls, answered again without Python.",
    .tp_basicsize = sizeof(NNCacheObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)nncache_init,
    .tp_traverse = (traverseproc)nncache_traverse,
    .tp_clear = (inquiry)nncache_clear,
    .tp_dealloc = (destructor)nncache_dealloc,
    .tp_methods = nncache_methods,
};

/* ---- the inference loop's repeats --------------------------------------------------------- */

static inline uint32_t u32_at(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* wasm32 and every host OpenVINO runs on are little-endian */
    return v;
}

static bool set_input_again(NNCacheObject *c, const MemoryObject *m, const raw_t *slots)
{
    uint32_t ctx = (uint32_t)slots[0].i32, index = (uint32_t)slots[1].i32;
    uint64_t record_at = (uint32_t)slots[2].i32;
    if (index >= NN_PORTS)
        return false;
    InputEntry *e = &c->inputs[ctx][index];
    if (e->generation != m->generation || record_at + RECORD_SIZE > m->size)
        goto miss;
    const unsigned char *record = (const unsigned char *)(uintptr_t)(m->base + record_at);
    uint64_t dims_at = u32_at(record);
    if (memcmp(record, e->record, RECORD_SIZE) != 0 || dims_at + 4ULL * e->rank > m->size ||
        memcmp((const void *)(uintptr_t)(m->base + dims_at), e->dims, 4 * e->rank) != 0)
        goto miss;
    return true;
miss:
    e->generation = 0; /* Python binds another tensor (or refuses): this one is no more */
    return false;
}

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what Python's time.monotonic reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Call `fn(*args)`, `fn(arg)` or `fn()`; -1 with the exception set, else 0 and, when `truth`
 * is given, the result's truth in it. */
static int call_discard(PyObject *fn, PyObject *args, PyObject *arg, int *truth)
{
    PyObject *result = args != NULL  ? PyObject_Call(fn, args, NULL)
                       : arg != NULL ? PyObject_CallOneArg(fn, arg)
                                     : PyObject_CallNoArgs(fn);
    if (result == NULL)
        return -1;
    int ok = 0;
    if (truth != NULL) {
        *truth = PyObject_IsTrue(result);
        ok = *truth < 0 ? -1 : 0;
    }
    Py_DECREF(result);
    return ok;
}

/* The adopted outputs' sizes: 1 all held, 0 one changed, -1 an exception is set. */
static int sizes_held(PyObject *checks)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(checks); i++) {
        PyObject *pair = PyTuple_GET_ITEM(checks, i);
        PyObject *size = PyObject_CallNoArgs(PyTuple_GET_ITEM(pair, 0));
        if (size == NULL)
            return -1;
        int same = PyObject_RichCompareBool(size, PyTuple_GET_ITEM(pair, 1), Py_EQ);
        Py_DECREF(size);
        if (same <= 0)
            return same;
    }
    return 1;
}

/* Run the remembered request again: 1 done, 0 Python's turn (the entry dropped), -1 a Python
 * exception set (the deadline's). A failed inference is Python's to run again and report. */
static int compute_again(NNCacheObject *c, const MemoryObject *m, uint32_t ctx)
{
    ComputeEntry *e = &c->computes[ctx];
    if (e->serial == 0 || e->generation != m->generation)
        return 0;
    double left = INFINITY;
    if (!isinf(e->deadline)) {
        left = e->deadline - monotonic_now();
        if (left <= 0)
            return 0; /* Python's check ends the run */
    }
    /* Owned here for the calls: a callee may drop the entry. */
    ComputeEntry run = *e;
    PyObject *owned[] = {run.start, run.start_args, run.wait, run.checks, run.settled, run.expire};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        Py_INCREF(owned[i]);
    int result = -1, finished = 1;
    if (call_discard(run.start, run.start_args, NULL, NULL) < 0)
        goto failed;
    if (isinf(left)) {
        if (call_discard(run.wait, NULL, NULL, NULL) < 0)
            goto failed;
    } else {
        double ms = floor(left * 1000.0);
        PyObject *timeout = PyLong_FromDouble(ms < 1 ? 1 : ms);
        int status = timeout ? call_discard(run.wait, NULL, timeout, &finished) : -1;
        Py_XDECREF(timeout);
        if (status < 0)
            goto failed;
    }
    if (!finished) {
        compute_drop(e);
        if (call_discard(run.expire, NULL, NULL, NULL) == 0) /* it raises; if not, a trap */
            PyErr_SetString(PyExc_RuntimeError, "the run's deadline passed during compute");
        goto done;
    }
    int held = sizes_held(run.checks);
    if (held < 0)
        goto failed;
    uint64_t serial = run.serial;
    if (!held) {
        compute_drop(e); /* the next compute is Python's, which remembers the new buffers */
        PyObject *now = PyObject_CallNoArgs(run.settled);
        serial = now ? PyLong_AsUnsignedLongLong(now) : (unsigned long long)-1;
        Py_XDECREF(now);
        if (serial == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
    }
    c->computed[ctx] = serial;
    result = 1;
    goto done;
failed:
    compute_drop(e);
    if (PyErr_ExceptionMatches(PyExc_RuntimeError)) { /* OpenVINO's: the inference failed */
        PyErr_Clear();
        result = 0;
    }
done:
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        Py_DECREF(owned[i]);
    return result;
}

static bool get_output_again(const NNCacheObject *c, const MemoryObject *m, const raw_t *slots)
{
    uint32_t ctx = (uint32_t)slots[0].i32, index = (uint32_t)slots[1].i32;
    if (index >= NN_PORTS || c->computed[ctx] == 0)
        return false;
    const OutputEntry *e = &c->outputs[ctx][index];
    if (e->serial != c->computed[ctx] || e->generation != m->generation ||
        e->out_ptr != (uint32_t)slots[2].i32 || e->out_max != (uint32_t)slots[3].i32 ||
        e->written != (uint32_t)slots[4].i32)
        return false;
    memcpy((void *)(uintptr_t)(m->base + e->out_ptr), (const void *)(uintptr_t)e->source,
           e->nbytes);
    memcpy((void *)(uintptr_t)(m->base + e->written), &e->nbytes, 4);
    return true;
}

int nncache_again(PyObject *cache, int kind, MemoryObject *m, bool present, const raw_t *slots)
{
    NNCacheObject *c = (NNCacheObject *)cache;
    uint32_t ctx = (uint32_t)slots[0].i32;
    if (ctx >= NN_CONTEXTS)
        return 0;
    switch (kind) {
    case KIND_SET_INPUT:
        c->computed[ctx] = 0; /* any set_input ends what the last compute's outputs were */
        if (present && set_input_again(c, m, slots))
            return 1;
        compute_drop(&c->computes[ctx]); /* Python may record other inputs */
        return 0;
    case KIND_COMPUTE: {
        c->computed[ctx] = 0; /* set again when the compute succeeds */
        int done = present ? compute_again(c, m, ctx) : 0;
        if (done == 0)
            compute_drop(&c->computes[ctx]); /* Python's compute remembers afresh */
        return done;
    }
    case KIND_GET_OUTPUT:
        if (present && get_output_again(c, m, slots))
            return 1;
        compute_drop(&c->computes[ctx]); /* Python's may give the request an output buffer */
        return 0;
    default:
        return 0;
    }
}
