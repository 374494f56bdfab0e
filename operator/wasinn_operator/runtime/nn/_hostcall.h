/* What _hostcall.c (the linear memory binding, the trampoline, the module) and _nncache.c (the
 * wasi-nn repeats it answers without Python) share. */
#ifndef WASINN_HOSTCALL_H
#define WASINN_HOSTCALL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>

#define RAW_SIZE 16   /* sizeof(wasmtime_val_raw_t) */
#define EXTERN_MAX 64 /* room for a wasmtime_extern_t */
#define NN_CONTEXTS 64 /* contexts an NNCache answers for (the default max_contexts) */
#define NN_PORTS 4     /* inputs and outputs it answers for per context */

enum kind { KIND_GENERIC = 0, KIND_SET_INPUT = 1, KIND_COMPUTE = 2, KIND_GET_OUTPUT = 3 };

typedef union {
    int32_t i32;
    unsigned char bytes[RAW_SIZE];
} raw_t;

typedef struct {
    PyObject_HEAD
    void *context;           /* the store the binding belongs to */
    bool present;            /* the caller exports a linear memory "memory" */
    unsigned char item[EXTERN_MAX];
    uint64_t base;
    uint64_t size;           /* a lower bound: memory only grows */
    uint64_t generation;     /* a new one for every store bound */
} MemoryObject;

extern PyTypeObject MemoryType;
extern PyTypeObject NNCacheType;

/* The memory `cache` (an NNCache) was made for. */
MemoryObject *nncache_memory(PyObject *cache);

/* A wasi-nn call of `kind` with its i32 arguments in `slots`, the caller's memory bound to `m`
 * (`present`: it exports one): 1 when answered here (its result is 0), 0 when Python must
 * answer it, -1 with a Python exception set (which ends the call as a trap). */
int nncache_again(PyObject *cache, int kind, MemoryObject *m, bool present, const raw_t *slots);

#endif
