/*
 * nn_hog: a guest that tries to make the wasi-nn host use as much memory as it can.
 *
 * Build:  clang --target=wasm32-wasi -O2 -Wall -Wextra -o nn_hog.wasm nn_hog.c
 *         (tests/runtime/conftest.py builds it on demand)
 *
 * Usage:  nn_hog MODE N [DIR]   (DIR: an OpenVINO IR model directory, default
 *                                /models/efficientnet-lite0)
 *   distinct N   load() DIR's IR N times, each with a different comment appended to the xml
 *                (new bytes every time: nothing can be shared by content)
 *   same N       load() DIR's IR N times, the same bytes every time
 *   padded N     load() DIR's IR once with N MiB of weights (model.bin + zeros)
 *   garbage N    load() one N MiB onnx builder of zeros
 *   named N      load_by_name("efficientnet-lite0") N times
 *   contexts N   load_by_name once, then init_execution_context N times
 *   batches N    load_by_name("efficientnet-lite0"), then set_input + compute with batch
 *                sizes 1..N (each size past 1 is a compiled variant of its own)
 *   endless N    load_by_name, then compute on a batch of N forever (until the deadline)
 *
 * Output, one line per call: "<call> <i> <errno>", then "done". Every call is made even
 * after a failure, so the host's refusals can be seen to repeat.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NN_IMPORT(n) __attribute__((import_module("wasi_ephemeral_nn"), import_name(n)))
NN_IMPORT("load")
int32_t nn_load(uint32_t builders, uint32_t n, uint32_t encoding, uint32_t target, uint32_t out);
NN_IMPORT("load_by_name")
int32_t nn_load_by_name(uint32_t name, uint32_t name_len, uint32_t out);
NN_IMPORT("init_execution_context")
int32_t nn_init_execution_context(uint32_t graph, uint32_t out);
NN_IMPORT("set_input")
int32_t nn_set_input(uint32_t ctx, uint32_t index, uint32_t tensor);
NN_IMPORT("compute")
int32_t nn_compute(uint32_t ctx);

#define P(x) ((uint32_t)(uintptr_t)(x))

typedef struct {
    uint32_t ptr, len;
} builder;

typedef struct {
    uint32_t dims_ptr, dims_len;
    uint8_t type, pad[3];
    uint32_t data_ptr, data_len;
} tensor;

static char *slurp(const char *path, size_t extra, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = calloc(1, (size_t)size + extra);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "nn_hog: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    *len = (size_t)size;
    return data;
}

static void report(const char *call, int i, int32_t rc) {
    printf("%s %d %d\n", call, i, (int)rc);
    fflush(stdout);
}

static int32_t load_ir(char *xml, size_t xml_len, char *bin, size_t bin_len) {
    builder b[2] = {{P(xml), (uint32_t)xml_len}, {P(bin), (uint32_t)bin_len}};
    uint32_t graph;
    return nn_load(P(b), 2, 0, 0, P(&graph));
}

static uint32_t load_named(void) {
    static const char name[] = "efficientnet-lite0";
    uint32_t graph = 0;
    int32_t rc = nn_load_by_name(P(name), sizeof name - 1, P(&graph));
    if (rc != 0) {
        report("load_by_name", 0, rc);
        exit(1);
    }
    return graph;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: nn_hog MODE N [DIR]\n", stderr);
        return 2;
    }
    const char *mode = argv[1];
    int n = atoi(argv[2]);
    const char *dir = argc > 3 ? argv[3] : "/models/efficientnet-lite0";
    char path[512];
    size_t xml_len = 0, bin_len = 0;

    if (!strcmp(mode, "distinct") || !strcmp(mode, "same") || !strcmp(mode, "padded")) {
        size_t pad = !strcmp(mode, "padded") ? (size_t)n << 20 : 0;
        snprintf(path, sizeof path, "%s/model.xml", dir);
        char *xml = slurp(path, 64, &xml_len);
        snprintf(path, sizeof path, "%s/model.bin", dir);
        char *bin = slurp(path, pad, &bin_len);
        if (pad) {
            report("load", 0, load_ir(xml, xml_len, bin, pad > bin_len ? pad : bin_len));
        } else {
            for (int i = 0; i < n; i++) {
                size_t len = xml_len;
                if (!strcmp(mode, "distinct"))
                    len += (size_t)snprintf(xml + xml_len, 64, "<!-- %d -->", i);
                report("load", i, load_ir(xml, len, bin, bin_len));
            }
        }
    } else if (!strcmp(mode, "garbage")) {
        size_t size = (size_t)n << 20;
        char *junk = calloc(1, size);
        if (!junk) {
            fputs("nn_hog: out of memory\n", stderr);
            return 1;
        }
        builder b = {P(junk), (uint32_t)size};
        uint32_t graph;
        report("load", 0, nn_load(P(&b), 1, 1, 0, P(&graph)));
    } else if (!strcmp(mode, "named")) {
        static const char name[] = "efficientnet-lite0";
        for (int i = 0; i < n; i++) {
            uint32_t graph;
            report("load_by_name", i, nn_load_by_name(P(name), sizeof name - 1, P(&graph)));
        }
    } else if (!strcmp(mode, "contexts")) {
        uint32_t graph = load_named();
        for (int i = 0; i < n; i++) {
            uint32_t ctx;
            report("init_execution_context", i, nn_init_execution_context(graph, P(&ctx)));
        }
    } else if (!strcmp(mode, "endless")) {
        uint32_t graph = load_named(), ctx;
        const uint32_t item = 3 * 224 * 224;
        float *data = calloc((size_t)n * item, sizeof(float));
        uint32_t dims[4] = {(uint32_t)n, 3, 224, 224};
        tensor t = {P(dims), 4, 1, {0}, P(data), (uint32_t)n * item * 4};
        if (!data || nn_init_execution_context(graph, P(&ctx)) || nn_set_input(ctx, 0, P(&t))) {
            fputs("nn_hog: cannot set up the inference\n", stderr);
            return 1;
        }
        puts("computing");
        fflush(stdout);
        for (;;)
            if (nn_compute(ctx) != 0)
                return 1;
    } else if (!strcmp(mode, "batches")) {
        uint32_t graph = load_named(), ctx;
        int32_t rc = nn_init_execution_context(graph, P(&ctx));
        if (rc != 0) {
            report("init_execution_context", 0, rc);
            return 1;
        }
        const uint32_t item = 3 * 224 * 224;
        float *data = calloc((size_t)n * item, sizeof(float));
        if (!data) {
            fputs("nn_hog: out of memory\n", stderr);
            return 1;
        }
        for (int i = 1; i <= n; i++) {
            uint32_t dims[4] = {(uint32_t)i, 3, 224, 224};
            tensor t = {P(dims), 4, 1, {0}, P(data), (uint32_t)i * item * 4};
            rc = nn_set_input(ctx, 0, P(&t));
            if (rc == 0)
                rc = nn_compute(ctx);
            report("compute", i, rc);
        }
    } else {
        fprintf(stderr, "nn_hog: unknown mode %s\n", mode);
        return 2;
    }
    puts("done");
    return 0;
}
