/*
 * classify: image classification through wasi-nn (preview1, module "wasi_ephemeral_nn").
 *
 * Build:  clang --target=wasm32-wasi -O2 -Wall -Wextra -o classify-c.wasm classify.c
 *         (or hack/build-guests.sh OUTDIR, which builds this and the Rust twin)
 *
 * Usage:  classify [OPTIONS] TENSOR...
 *   --model NAME      load_by_name(NAME)                              (default env MODEL_NAME)
 *   --model-dir DIR   load() DIR/model.xml+model.bin (openvino), else DIR/model.onnx (onnx),
 *                     else DIR/model.tflite (tensorflowlite)          (default env MODEL_DIR)
 *                     Precedence: --model-dir > --model > MODEL_DIR > MODEL_NAME >
 *                     efficientnet-lite0 (named).
 *   --target cpu|gpu|tpu|auto   execution target for load() (default cpu)
 *   --labels FILE     one label per line (default <model dir>/labels.txt; a named model's dir
 *                     is /models/<name>); unreadable -> "class <index>" and one warning
 *   --top K           classes to print (default 5)
 *   --dims D0,D1,...  f32 input dims (default 1,3,224,224)
 *   --batch N         replicate each tensor N times; dims[0] := N (default 1)
 *   --classes N       output floats per batch item (default 1000)
 *   --repeat N        run set_input/compute/get_output N times; if N > 1, stderr gets
 *                     "run <i> <microseconds>" per run (i from 1), in batches of 256
 *   --dump DIR        write the last run's raw output bytes to DIR/<tensor basename>.out
 *   TENSOR            raw little-endian f32 file of product(dims[1:])*4 bytes
 *
 * Output per tensor: the path, then "  <rank>. <label> (<index>) <softmax %.6f>" for the
 * top K classes of batch item 0 (softmax in double; ties -> lower index).
 * Exit codes: 0 ok, 1 wasi-nn/file error, 2 usage error.
 *
 * Must stay behaviourally identical to examples/classify-rust (tests compare both).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- wasi-nn preview1 ABI (see wasi-nn-abi.md) ---- */

enum { ENC_OPENVINO = 0, ENC_ONNX = 1, ENC_TFLITE = 4 };
enum { TYPE_F32 = 1 }; /* post-2023-08 numbering; f32 is 1 in both */

typedef struct {
    uint32_t ptr, len;
} nn_builder;

typedef struct {
    uint32_t dims_ptr, dims_len;
    uint8_t type;
    uint8_t pad[3]; /* WasmEdge reads type as u32: must be zero */
    uint32_t data_ptr, data_len;
} nn_tensor;
_Static_assert(sizeof(nn_tensor) == 20, "wasi-nn tensor record is 20 bytes");

#define NN_IMPORT(n) __attribute__((import_module("wasi_ephemeral_nn"), import_name(n)))
NN_IMPORT("load")
int32_t nn_load(uint32_t builders, uint32_t n, uint32_t encoding, uint32_t target, uint32_t graph_out);
NN_IMPORT("load_by_name")
int32_t nn_load_by_name(uint32_t name, uint32_t name_len, uint32_t graph_out);
NN_IMPORT("init_execution_context")
int32_t nn_init_execution_context(uint32_t graph, uint32_t ctx_out);
NN_IMPORT("set_input")
int32_t nn_set_input(uint32_t ctx, uint32_t index, uint32_t tensor);
NN_IMPORT("compute")
int32_t nn_compute(uint32_t ctx);
NN_IMPORT("get_output")
int32_t nn_get_output(uint32_t ctx, uint32_t index, uint32_t out, uint32_t out_max, uint32_t written_out);

#define P(x) ((uint32_t)(uintptr_t)(x))

static const char *errno_name(int32_t e) {
    static const char *names[] = {"success", "invalid_argument", "invalid_encoding",
                                  "missing_memory", "busy", "runtime_error",
                                  "unsupported_operation", "too_large", "not_found"};
    return (e >= 0 && e <= 8) ? names[e] : "unknown";
}

/* ---- errors ---- */

/* Exit code 2 (usage) adds a usage hint; 1 is for wasi-nn and file errors. */
static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die(int code, const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fputs("classify: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (code == 2)
        fputs("usage: classify [OPTIONS] TENSOR...  (--help for details)\n", stderr);
    exit(code);
}

static void nn_check(const char *call, int32_t rc) {
    if (rc != 0)
        die(1, "%s failed: errno %d (%s)", call, (int)rc, errno_name(rc));
}

static const char *USAGE =
    "usage: classify [OPTIONS] TENSOR...\n"
    "  --model NAME        load the named model with load_by_name (default env MODEL_NAME)\n"
    "  --model-dir DIR     load DIR/model.xml+model.bin, DIR/model.onnx or DIR/model.tflite\n"
    "                      (default env MODEL_DIR; default model: efficientnet-lite0)\n"
    "  --target T          cpu|gpu|tpu|auto (default cpu)\n"
    "  --labels FILE       labels, one per line (default <model dir>/labels.txt)\n"
    "  --top K             classes to print (default 5)\n"
    "  --dims D0,D1,...    f32 input dims (default 1,3,224,224)\n"
    "  --batch N           replicate each tensor N times into one input (default 1)\n"
    "  --classes N         output floats per batch item (default 1000)\n"
    "  --repeat N          runs per tensor; N > 1 prints 'run <i> <us>' to stderr (default 1)\n"
    "  --dump DIR          write the raw output bytes to DIR/<tensor basename>.out\n";

/* ---- helpers ---- */

/* Digits only (no sign, no spaces) so C and Rust accept exactly the same strings. */
static int parse_u32n(const char *s, size_t n, uint32_t *out) {
    uint64_t v = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > UINT32_MAX)
            return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

static uint32_t parse_count(const char *flag, const char *s) {
    uint32_t v;
    if (!parse_u32n(s, strlen(s), &v) || v == 0)
        die(2, "invalid value for %s: '%s' (expected a positive integer)", flag, s);
    return v;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    int slash = n > 0 && dir[n - 1] == '/';
    char *p = malloc(n + strlen(name) + 2);
    if (!p)
        die(1, "out of memory");
    sprintf(p, "%s%s%s", dir, slash ? "" : "/", name);
    return p;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Reads a whole file; NULL with errno set on failure. */
static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f)
        return NULL;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return NULL;
    }
    /* Size from fstat avoids regrowing an 18 MB weights buffer; the spare byte detects EOF
     * and leaves room for a NUL (load_labels relies on it). */
    size_t cap = (size_t)st.st_size + 1, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            die(1, "out of memory reading %s", path);
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        free(buf);
        errno = err;
        return NULL;
    }
    *len = n;
    return buf;
}

/* Reads a whole file; exits 1 naming the path on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
    unsigned char *buf = slurp(path, len);
    if (!buf)
        die(1, "cannot read %s: %s", path, strerror(errno));
    return buf;
}

static const char *basename_of(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- labels ---- */

static char **labels;
static size_t n_labels;

static void load_labels(const char *path) {
    size_t len;
    char *text = (char *)slurp(path, &len);
    if (!text) {
        fprintf(stderr, "classify: warning: cannot read labels %s: %s; printing class indices\n", path,
                strerror(errno));
        return;
    }
    size_t cap = 1024;
    labels = malloc(cap * sizeof *labels);
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        char *end = nl ? nl : text + len;
        if (end > line && end[-1] == '\r')
            end--;
        *end = '\0';
        if (n_labels == cap)
            labels = realloc(labels, (cap *= 2) * sizeof *labels);
        labels[n_labels++] = line;
        if (!nl)
            break;
        line = nl + 1;
    }
}

/* ---- main ---- */

int main(int argc, char **argv) {
    const char *model_name = NULL, *model_dir = NULL, *labels_path = NULL, *dump_dir = NULL;
    uint32_t top = 5, batch = 1, classes = 1000, repeat = 1, target = 0;
    uint32_t dims[16] = {1, 3, 224, 224};
    uint32_t n_dims = 4;
    const char **tensors = calloc((size_t)argc + 1, sizeof *tensors);
    int n_tensors = 0, opts_done = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (opts_done || a[0] != '-' || a[1] == '\0') {
            tensors[n_tensors++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            opts_done = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        /* --flag VALUE or --flag=VALUE */
        char flag[32];
        const char *val = NULL, *eq = strchr(a, '=');
        size_t flen = eq ? (size_t)(eq - a) : strlen(a);
        if (flen >= sizeof flag)
            die(2, "unknown option '%s'", a);
        memcpy(flag, a, flen);
        flag[flen] = '\0';
        static const char *known[] = {"--model", "--model-dir", "--target", "--labels", "--top", "--dims",
                                      "--batch", "--classes", "--repeat", "--dump", NULL};
        int k = 0;
        while (known[k] && strcmp(known[k], flag))
            k++;
        if (!known[k])
            die(2, "unknown option '%s'", a);
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            die(2, "option '%s' requires a value", flag);

        if (!strcmp(flag, "--model")) {
            model_name = val;
        } else if (!strcmp(flag, "--model-dir")) {
            model_dir = val;
        } else if (!strcmp(flag, "--target")) {
            static const char *targets[] = {"cpu", "gpu", "tpu", "auto"};
            for (target = 0; target < 4 && strcmp(targets[target], val); target++)
                ;
            if (target == 4)
                die(2, "invalid value for --target: '%s' (expected cpu, gpu, tpu or auto)", val);
        } else if (!strcmp(flag, "--labels")) {
            labels_path = val;
        } else if (!strcmp(flag, "--top")) {
            top = parse_count(flag, val);
        } else if (!strcmp(flag, "--dims")) {
            const char *s = val;
            n_dims = 0;
            for (;;) {
                const char *c = strchr(s, ',');
                size_t l = c ? (size_t)(c - s) : strlen(s);
                if (n_dims == 16 || !parse_u32n(s, l, &dims[n_dims]) || dims[n_dims] == 0)
                    die(2, "invalid value for --dims: '%s' (expected 1 to 16 positive integers like 1,3,224,224)", val);
                n_dims++;
                if (!c)
                    break;
                s = c + 1;
            }
        } else if (!strcmp(flag, "--batch")) {
            batch = parse_count(flag, val);
        } else if (!strcmp(flag, "--classes")) {
            classes = parse_count(flag, val);
        } else if (!strcmp(flag, "--repeat")) {
            repeat = parse_count(flag, val);
        } else if (!strcmp(flag, "--dump")) {
            dump_dir = val;
        }
    }
    if (n_tensors == 0)
        die(2, "no TENSOR given");

    /* Flags beat env vars; a directory beats a name at the same level. */
    if (!model_dir && !model_name) {
        const char *d = getenv("MODEL_DIR"), *n = getenv("MODEL_NAME");
        if (d && *d)
            model_dir = d;
        else if (n && *n)
            model_name = n;
        else
            model_name = "efficientnet-lite0";
    }
    if (model_dir)
        model_name = NULL;

    /* Sizes: input = batch * product(dims[1:]) f32, output = batch * classes f32 (all < 4 GiB). */
    dims[0] = batch;
    uint64_t item_bytes = 4;
    for (uint32_t d = 1; d < n_dims; d++) {
        item_bytes *= dims[d];
        if (item_bytes > UINT32_MAX)
            die(2, "input too large: --dims product overflows 32 bits");
    }
    if (item_bytes * batch > UINT32_MAX)
        die(2, "input too large: --batch times the tensor size overflows 32 bits");
    if ((uint64_t)classes * batch * 4 > UINT32_MAX)
        die(2, "output too large: --batch times --classes overflows 32 bits");
    if (top > classes)
        top = classes;

    /* Labels: read before the model so the warning comes first and once. */
    char *default_labels = NULL;
    if (!labels_path) {
        if (model_dir) {
            default_labels = join(model_dir, "labels.txt");
        } else {
            char *d = join("/models", model_name);
            default_labels = join(d, "labels.txt");
            free(d);
        }
        labels_path = default_labels;
    }
    load_labels(labels_path);

    /* Load the graph. */
    uint32_t graph = 0, ctx = 0;
    if (model_dir) {
        const char *files[2];
        char *xml = join(model_dir, "model.xml"), *bin = join(model_dir, "model.bin");
        char *onnx = join(model_dir, "model.onnx"), *tfl = join(model_dir, "model.tflite");
        uint32_t n_files, enc;
        if (exists(xml)) {
            files[0] = xml, files[1] = bin, n_files = 2, enc = ENC_OPENVINO;
        } else if (exists(onnx)) {
            files[0] = onnx, n_files = 1, enc = ENC_ONNX;
        } else if (exists(tfl)) {
            files[0] = tfl, n_files = 1, enc = ENC_TFLITE;
        } else {
            die(1, "no model.xml, model.onnx or model.tflite in %s", model_dir);
        }
        nn_builder builders[2];
        unsigned char *bufs[2];
        for (uint32_t f = 0; f < n_files; f++) {
            size_t len;
            bufs[f] = read_file(files[f], &len);
            builders[f].ptr = P(bufs[f]);
            builders[f].len = (uint32_t)len;
        }
        nn_check("load", nn_load(P(builders), n_files, enc, target, P(&graph)));
        for (uint32_t f = 0; f < n_files; f++)
            free(bufs[f]);
        free(xml), free(bin), free(onnx), free(tfl);
    } else {
        nn_check("load_by_name", nn_load_by_name(P(model_name), (uint32_t)strlen(model_name), P(&graph)));
    }
    nn_check("init_execution_context", nn_init_execution_context(graph, P(&ctx)));

    size_t out_bytes = (size_t)classes * batch * 4;
    float *out = malloc(out_bytes ? out_bytes : 1);
    double *probs = malloc((size_t)classes * sizeof *probs);
    char *chosen = malloc(classes);
    if (!out || !probs || !chosen)
        die(1, "out of memory");

    for (int t = 0; t < n_tensors; t++) {
        const char *path = tensors[t];
        size_t len;
        unsigned char *data = read_file(path, &len);
        if (len != item_bytes)
            die(1, "%s: size %zu bytes, expected %llu (product of dims[1:] * 4)", path, len,
                (unsigned long long)item_bytes);
        if (batch > 1) {
            data = realloc(data, item_bytes * batch);
            if (!data)
                die(1, "out of memory");
            for (uint32_t b = 1; b < batch; b++)
                memcpy(data + b * item_bytes, data, item_bytes);
        }
        nn_tensor tensor;
        memset(&tensor, 0, sizeof tensor);
        tensor.dims_ptr = P(dims);
        tensor.dims_len = n_dims;
        tensor.type = TYPE_F32;
        tensor.data_ptr = P(data);
        tensor.data_len = (uint32_t)(item_bytes * batch);

        uint32_t written = 0;
        /* Times are printed in batches, not after each run: a write between two runs costs
         * the next one tens of microseconds (the host's output path), which is no part of it. */
        static uint64_t times[256];
        uint32_t timed = 0;
        for (uint32_t r = 1; r <= repeat; r++) {
            uint64_t t0 = now_us();
            nn_check("set_input", nn_set_input(ctx, 0, P(&tensor)));
            nn_check("compute", nn_compute(ctx));
            nn_check("get_output", nn_get_output(ctx, 0, P(out), (uint32_t)out_bytes, P(&written)));
            uint64_t t1 = now_us();
            if (repeat > 1)
                times[timed++] = t1 - t0;
            if (timed == sizeof times / sizeof times[0] || (timed && r == repeat)) {
                for (uint32_t i = 0; i < timed; i++)
                    fprintf(stderr, "run %u %llu\n", r - timed + 1 + i, (unsigned long long)times[i]);
                timed = 0;
            }
        }
        free(data);

        if (written > out_bytes)
            die(1, "get_output wrote %u bytes, more than the %zu-byte buffer", written, out_bytes);
        if (dump_dir) {
            size_t bl = strlen(basename_of(path));
            char *name = malloc(bl + 5);
            sprintf(name, "%s.out", basename_of(path));
            char *dp = join(dump_dir, name);
            FILE *f = fopen(dp, "wb");
            if (!f || fwrite(out, 1, written, f) != written || fclose(f) != 0)
                die(1, "cannot write %s: %s", dp, strerror(errno));
            free(dp), free(name);
        }
        if (written != out_bytes)
            die(1, "get_output wrote %u bytes, expected %zu (--classes %u x --batch %u x 4)", written,
                out_bytes, classes, batch);

        /* Softmax over batch item 0, in double. */
        double max = -INFINITY, sum = 0;
        for (uint32_t c = 0; c < classes; c++)
            if ((double)out[c] > max)
                max = (double)out[c];
        for (uint32_t c = 0; c < classes; c++)
            sum += probs[c] = exp((double)out[c] - max);
        for (uint32_t c = 0; c < classes; c++)
            probs[c] /= sum;

        /* Selection on the raw logits: exact comparisons; strict '>' keeps the lower index on ties. */
        memset(chosen, 0, classes);
        printf("%s\n", path);
        for (uint32_t rank = 1; rank <= top; rank++) {
            int64_t best = -1;
            for (uint32_t c = 0; c < classes; c++)
                if (!chosen[c] && (best < 0 || out[c] > out[best]))
                    best = c;
            chosen[best] = 1;
            if ((size_t)best < n_labels)
                printf("  %u. %s (%lld) %.6f\n", rank, labels[best], (long long)best, probs[best]);
            else
                printf("  %u. class %lld (%lld) %.6f\n", rank, (long long)best, (long long)best, probs[best]);
        }
    }
    fflush(stdout);
    return 0;
}
