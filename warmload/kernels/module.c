/* Python bindings of warmload.kernels._cpu. Tensors arrive as data pointers (ints) with their
   shapes, checked by the Python wrappers in warmload/kernels/__init__.py; every call releases
   the GIL while it computes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernels.h"

/* One module per ISA variant (setup.py): its name, e.g. _cpu_avx2, comes from the build. */
#ifndef WARMLOAD_MODULE
#define WARMLOAD_MODULE _cpu
#endif
#ifndef WARMLOAD_VARIANT
#define WARMLOAD_VARIANT "unnamed"
#endif
/* a plan belongs to the variant that made it: another variant's module refuses it */
#define PLAN_CAPSULE "warmload.plan." WARMLOAD_VARIANT

#define PTR(type, v) ((type *)(uintptr_t)(v))

/* A (type_id, w_ptr, n_rows, y_ptr, mode) tuple -> part; 0, or -1 with a Python error set. */
static int parse_part(PyObject *item, long long k, part_t *p) {
    int type_id, mode;
    unsigned long long w, y;
    long long n_rows;
    if (!PyArg_ParseTuple(item, "iKLKi", &type_id, &w, &n_rows, &y, &mode)) return -1;
    if (mode < MODE_FLOAT || mode > MODE_DEQUANT_BF16) {
        PyErr_Format(PyExc_ValueError, "unknown product mode %d", mode);
        return -1;
    }
    const qtype *type = find_type(type_id);
    if (!type) {
        PyErr_Format(PyExc_ValueError, "ggml type %d has no kernel", type_id);
        return -1;
    }
    if (n_rows <= 0 || k % type->block) {
        PyErr_Format(PyExc_ValueError, "bad shape: %lld rows of %lld", n_rows, k);
        return -1;
    }
    make_part(p, type, PTR(void, w), n_rows, k, PTR(float, y), mode);
    return 0;
}

static PyObject *product_error(int rc) {
    if (rc == -2) return PyErr_Format(PyExc_ValueError, "product too large for one call");
    if (rc == -3) return PyErr_Format(PyExc_ValueError, "position outside the KV cache");
    if (rc == -4) return PyErr_Format(PyExc_ValueError, "a step or chunk the plan cannot take");
    return PyErr_NoMemory();
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x;
    long long k, n_tokens;
    PyObject *parts;
    if (!PyArg_ParseTuple(args, "LKLO!", &k, &x, &n_tokens, &PyTuple_Type, &parts)) return NULL;
    Py_ssize_t n_parts = PyTuple_GET_SIZE(parts);
    if (n_parts < 1 || n_parts > MAX_PARTS || n_tokens <= 0 || k <= 0 || k % QK)
        return PyErr_Format(PyExc_ValueError, "bad product: %zd parts, k=%lld, %lld tokens",
                            n_parts, k, n_tokens);
    part_t staged[MAX_PARTS];
    for (Py_ssize_t i = 0; i < n_parts; ++i)
        if (parse_part(PyTuple_GET_ITEM(parts, i), k, &staged[i]) < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    kernels_lock();
    rc = product(staged, (int)n_parts, PTR(const float, x), k, n_tokens);
    kernels_unlock();
    Py_END_ALLOW_THREADS
    if (rc) return product_error(rc);
    Py_RETURN_NONE;
}

static PyObject *py_rms_norm(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, w, y;
    long long n_rows, dim;
    double eps, offset;
    if (!PyArg_ParseTuple(args, "KKLLddK", &x, &w, &n_rows, &dim, &eps, &offset, &y)) return NULL;
    if (n_rows < 0 || dim <= 0) return PyErr_Format(PyExc_ValueError, "bad shape");
    rms_norm_rows(PTR(const float, x), PTR(const float, w), n_rows, dim, (float)eps,
                  (float)offset, PTR(float, y));
    Py_RETURN_NONE;
}

static PyObject *py_act_mul(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long gate, up, out;
    long long n;
    int act;
    if (!PyArg_ParseTuple(args, "KKLiK", &gate, &up, &n, &act, &out)) return NULL;
    if (n < 0 || (act != ACT_SILU && act != ACT_GELU_TANH))
        return PyErr_Format(PyExc_ValueError, "bad activation call");
    act_mul(PTR(const float, gate), PTR(const float, up), n, act, PTR(float, out));
    Py_RETURN_NONE;
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long q, k, v, ck, cv, pos_p, cos, sin, out;
    long long n, H, KV, D, max_ctx, pos0, window, rope_row, rope_step;
    double scale, softcap = 0.0;
    int chunk, interleaved;
    if (!PyArg_ParseTuple(args, "KKKKKLLLLLKLiLdKKLLiK|d", &q, &k, &v, &ck, &cv, &n, &H, &KV,
                          &D, &max_ctx, &pos_p, &pos0, &chunk, &window, &scale, &cos, &sin,
                          &rope_row, &rope_step, &interleaved, &out, &softcap))
        return NULL;
    if (!(softcap >= 0.0) || isinf(softcap))
        return PyErr_Format(PyExc_ValueError, "attention softcap must be finite and >= 0");
    if (n <= 0 || H <= 0 || KV <= 0 || H % KV || D <= 0 || D % 2 || D > MAX_HEAD_DIM ||
        max_ctx <= 0 || (chunk && pos_p))
        return PyErr_Format(PyExc_ValueError, "bad attention shape");
    const int64_t *positions = PTR(const int64_t, pos_p);
    for (long long i = 0; i < n; ++i) {
        long long pos = chunk ? pos0 + i : positions ? positions[i] : pos0;
        if (pos < 0 || pos >= max_ctx)
            return PyErr_Format(PyExc_ValueError, "position %lld outside the cache of %lld", pos,
                                max_ctx);
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rope_t rope = {PTR(const float, cos), PTR(const float, sin), rope_row, 0, rope_step,
                   interleaved};
    kernels_lock();
    rc = attend_step(PTR(const float, q), PTR(const float, k), PTR(const float, v),
                     PTR(float, ck), PTR(float, cv), n, H, KV, D, max_ctx, NULL, positions, pos0,
                     chunk, window, (float)scale, (float)softcap, rope, PTR(float, out));
    kernels_unlock();
    Py_END_ALLOW_THREADS
    if (rc) return product_error(rc);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ decode plans */

static void plan_capsule_free(PyObject *capsule) {
    plan_free(PyCapsule_GetPointer(capsule, PLAN_CAPSULE));
}

static int parse_matrix(PyObject *item, long long k, part_t *p) {
    int type_id;
    unsigned long long w;
    long long n_rows;
    if (!PyArg_ParseTuple(item, "iKL", &type_id, &w, &n_rows)) return -1;
    const qtype *type = find_type(type_id);
    int integer = type && (type->dot || (type->to_q8 && gemm_available() == GEMM_ALL_STEPS));
    if (!integer || k % type->block || n_rows <= 0) {
        PyErr_Format(PyExc_ValueError, "matrix of type %d, %lld x %lld: no integer kernel",
                     type_id, n_rows, k);
        return -1;
    }
    make_part(p, type, PTR(void, w), n_rows, k, NULL, MODE_INT8); /* y: set per step */
    return 0;
}

/* One layer's tuple: 7 matrices (q k v o gate up down as (type, ptr, rows)), 6 norm weight
   pointers (0: absent), 3 q/k/v bias pointers (0: absent), cache_k, cache_v, cos, sin,
   rope_pos_stride, rope_step, interleaved, window, scale, softcap (0: none). */
static int parse_layer(PyObject *item, plan_t *P, layer_plan_t *L) {
    PyObject *m[7];
    unsigned long long w[6], b[3], ck, cv, cos, sin;
    long long pos_stride, step, window;
    int interleaved;
    double scale, softcap;
    if (!PyArg_ParseTuple(item, "(OOOOOOO)(KKKKKK)(KKK)KKKKLLiLdd", &m[0], &m[1], &m[2], &m[3],
                          &m[4], &m[5], &m[6], &w[0], &w[1], &w[2], &w[3], &w[4], &w[5], &b[0],
                          &b[1], &b[2], &ck, &cv, &cos, &sin, &pos_stride, &step, &interleaved,
                          &window, &scale, &softcap))
        return -1;
    if (!(softcap >= 0.0) || isinf(softcap)) {
        PyErr_SetString(PyExc_ValueError, "layer softcap must be finite and >= 0");
        return -1;
    }
    int64_t hd = P->H * P->D, kvd = P->KV * P->D;
    if (parse_matrix(m[0], P->hidden, &L->q) || parse_matrix(m[1], P->hidden, &L->k) ||
        parse_matrix(m[2], P->hidden, &L->v) || parse_matrix(m[3], hd, &L->o) ||
        parse_matrix(m[4], P->hidden, &L->gate) || parse_matrix(m[5], P->hidden, &L->up) ||
        parse_matrix(m[6], P->inter, &L->down))
        return -1;
    if (L->q.n_rows != hd || L->k.n_rows != kvd || L->v.n_rows != kvd ||
        L->o.n_rows != P->hidden || L->gate.n_rows != P->inter || L->up.n_rows != P->inter ||
        L->down.n_rows != P->hidden) {
        PyErr_SetString(PyExc_ValueError, "layer matrices disagree with the plan's dimensions");
        return -1;
    }
    const float **norms[6] = {&L->w_in, &L->w_attn_out, &L->w_ffn_in, &L->w_ffn_out,
                              &L->w_q_norm, &L->w_k_norm};
    for (int i = 0; i < 6; ++i) *norms[i] = PTR(const float, w[i]);
    L->b_q = PTR(const float, b[0]), L->b_k = PTR(const float, b[1]);
    L->b_v = PTR(const float, b[2]);
    L->cache_k = PTR(float, ck), L->cache_v = PTR(float, cv);
    L->cos = PTR(const float, cos), L->sin = PTR(const float, sin);
    L->rope_pos_stride = pos_stride, L->rope_step = step, L->interleaved = interleaved;
    L->window = window, L->scale = (float)scale, L->softcap = (float)softcap;
    return 0;
}

static PyObject *py_plan_new(PyObject *self, PyObject *args) {
    (void)self;
    long long rows, chunk_tokens, hidden, H, KV, D, inter, max_ctx;
    double eps, offset;
    int act;
    PyObject *layers;
    if (!PyArg_ParseTuple(args, "(LLLLLLLLddi)O!", &rows, &chunk_tokens, &hidden, &H, &KV, &D,
                          &inter, &max_ctx, &eps, &offset, &act, &PyTuple_Type, &layers))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(layers);
    if (n < 1 || rows < 1 || chunk_tokens < 0 || H <= 0 || KV <= 0 || H % KV || D <= 0 ||
        D % 2 || D > MAX_HEAD_DIM || hidden % QK || (H * D) % QK || inter % QK || max_ctx <= 0 ||
        (act != 0 && act != 1))
        return PyErr_Format(PyExc_ValueError, "unsupported decode plan dimensions");
    plan_t *P = plan_alloc(n, rows, chunk_tokens, hidden, H, KV, D, inter, max_ctx);
    if (!P) return PyErr_NoMemory();
    P->eps = (float)eps, P->offset = (float)offset, P->act = act;
    for (Py_ssize_t i = 0; i < n; ++i) {
        if (parse_layer(PyTuple_GET_ITEM(layers, i), P, &P->layers[i]) < 0) {
            plan_free(P);
            return NULL;
        }
    }
    PyObject *capsule = PyCapsule_New(P, PLAN_CAPSULE, plan_capsule_free);
    if (!capsule) plan_free(P);
    return capsule;
}

static PyObject *py_plan_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule;
    unsigned long long x, rows, positions;
    long long n_tokens, pos0;
    int chunk;
    if (!PyArg_ParseTuple(args, "OKLKKLp", &capsule, &x, &n_tokens, &rows, &positions, &pos0,
                          &chunk))
        return NULL;
    plan_t *P = PyCapsule_GetPointer(capsule, PLAN_CAPSULE);
    if (!P) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    kernels_lock();
    rc = plan_run(P, PTR(float, x), n_tokens, PTR(const int64_t, rows),
                  PTR(const int64_t, positions), pos0, chunk);
    kernels_unlock();
    Py_END_ALLOW_THREADS
    if (rc) return product_error(rc);
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------------- threads */

static PyObject *py_set_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n, rc;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1 || n > MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "threads must be in 1..%d, not %d", MAX_THREADS, n);
    Py_BEGIN_ALLOW_THREADS
    kernels_lock();
    rc = set_thread_count(n);
    kernels_unlock();
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_Format(PyExc_OSError, "could not start %d kernel threads", n - 1);
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyLong_FromLong(thread_count());
}

static PyObject *py_types(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    PyObject *out = PyDict_New();
    for (int i = 0; out && i < N_QTYPES; ++i) {
        PyObject *key = PyLong_FromLong(QTYPES[i].id);
        int int8 = QTYPES[i].dot || (QTYPES[i].to_q8 && gemm_available() == GEMM_ALL_STEPS);
        PyObject *val = PyUnicode_FromString(int8 ? "int8" : "float");
        int failed = !key || !val || PyDict_SetItem(out, key, val) < 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (failed) Py_CLEAR(out);
    }
    return out;
}

static PyObject *py_gemm_types(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    PyObject *out = PyList_New(0);
    for (int i = 0; out && i < N_QTYPES; ++i) {
        if (!QTYPES[i].to_q8 || !gemm_available()) continue;
        PyObject *id = PyLong_FromLong(QTYPES[i].id);
        if (!id || PyList_Append(out, id) < 0) Py_CLEAR(out);
        Py_XDECREF(id);
    }
    return out;
}

/* quantize_k(type_id, x, out[, simd]): x a float32 buffer of whole 256-weight blocks, out a
   writable buffer of the same number of K-quant blocks; simd False forces the one-group-at-a-
   time searches. The GIL is released while it runs, so threads quantize chunks at once. */
static PyObject *py_quantize_k(PyObject *self, PyObject *args) {
    (void)self;
    int type_id, simd = KQUANT_SIMD;
    Py_buffer x, y;
    if (!PyArg_ParseTuple(args, "iy*w*|p", &type_id, &x, &y, &simd)) return NULL;
    int64_t size = kquant_block_size(type_id);
    int64_t n_blocks = (int64_t)(x.len / (Py_ssize_t)(QK_K * sizeof(float)));
    PyObject *result = NULL;
    if (!size)
        PyErr_Format(PyExc_ValueError, "ggml type %d has no K-quant kernel", type_id);
    else if (x.len % (Py_ssize_t)(QK_K * sizeof(float)) || y.len != n_blocks * size)
        PyErr_Format(PyExc_ValueError, "quantize_k: %zd input bytes and %zd output bytes are not "
                     "whole blocks of one another", x.len, y.len);
    else {
        Py_BEGIN_ALLOW_THREADS
        kquant_blocks(type_id, (const float *)x.buf, n_blocks, (uint8_t *)y.buf, simd);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

static PyObject *py_quantize_k_simd(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyBool_FromLong(KQUANT_SIMD);
}

static PyObject *py_gemm_available(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyLong_FromLong(gemm_available());
}

static PyMethodDef METHODS[] = {
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(k, x_ptr, n_tokens, ((ggml_type, w_ptr, n_rows, y_ptr, mode), ...)): per part,\n"
     "y[t, n] = W[n] . x[t] (x float32 (n_tokens, k); W GGML rows; y float32 (n_tokens, n_rows));\n"
     "mode 0: float dots, 1: 8-bit x and integer dots, 2: y (n_rows, k) = W dequantized,\n"
     "3: 8-bit x and unpacked weight rows for many tokens (gemm_types only, else mode 0),\n"
     "4: mode 1's per-row dots even where mode 1 takes mode 3,\n"
     "5: mode 2 rounded to bfloat16 (y then uint16 (n_rows, k))"},
    {"rms_norm", py_rms_norm, METH_VARARGS,
     "rms_norm(x_ptr, w_ptr, n_rows, dim, eps, offset, y_ptr): float32 RMSNorm of each row"},
    {"act_mul", py_act_mul, METH_VARARGS,
     "act_mul(gate_ptr, up_ptr, n, act, out_ptr): act(gate) * up, act 0 = SiLU, 1 = GELU tanh"},
    {"attention", py_attention, METH_VARARGS,
     "attention(q, k, v, cache_k, cache_v, n, H, KV, D, max_ctx, positions, pos0, chunk, window,\n"
     "scale, cos, sin, rope_row, rope_step, interleaved, out[, softcap]): rope, cache write and\n"
     "attention of a decode step (n rows) or, with chunk, of n prompt tokens of one sequence from\n"
     "pos0; softcap > 0 caps the scores to softcap * tanh(s / softcap)"},
    {"plan_new", py_plan_new, METH_VARARGS,
     "plan_new((rows, chunk_tokens, hidden, H, KV, D, inter, max_ctx, eps, offset, act),\n"
     "layers): a plan"},
    {"plan_step", py_plan_step, METH_VARARGS,
     "plan_step(plan, x_ptr, n_tokens, rows_ptr, positions_ptr, pos0, chunk): x through every\n"
     "layer, in place; a decode step (row b at positions[b] (int64), or all at pos0 when\n"
     "positions_ptr is 0), with chunk a prompt chunk of the plan's one row at pos0.., or with\n"
     "chunk and rows a ragged step (kernels.h plan_run)"},
    {"set_threads", py_set_threads, METH_VARARGS, "set_threads(n): threads per product"},
    {"get_threads", py_get_threads, METH_NOARGS, "threads per product"},
    {"types", py_types, METH_NOARGS,
     "{ggml type id: 'int8' | 'float'}: how the kernels compute a decode step"},
    {"gemm_types", py_gemm_types, METH_NOARGS, "ggml type ids with integer prompt products"},
    {"gemm_available", py_gemm_available, METH_NOARGS,
     "0: no products of many tokens (generic build), 2: one that decode steps take too"},
    {"quantize_k", py_quantize_k, METH_VARARGS,
     "quantize_k(ggml_type, x, out[, simd]): float32 buffer x of 256-weight blocks -> K-quant\n"
     "blocks in out (Q2_K .. Q6_K, llama.cpp's reference quantizers, byte for byte)"},
    {"quantize_k_simd", py_quantize_k_simd, METH_NOARGS,
     "whether quantize_k runs its searches 8 groups at a time (AVX2 build)"},
    {NULL, NULL, 0, NULL},
};

#define NAME_STR_(name) #name
#define NAME_STR(name) NAME_STR_(name)
#define INIT_NAME_(name) PyInit_##name
#define INIT_NAME(name) INIT_NAME_(name)

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, NAME_STR(WARMLOAD_MODULE), NULL, -1,
                                    METHODS};

PyMODINIT_FUNC INIT_NAME(WARMLOAD_MODULE)(void) {
    PyObject *m = PyModule_Create(&MODULE);
    if (m && PyModule_AddStringConstant(m, "VARIANT", WARMLOAD_VARIANT) < 0) Py_CLEAR(m);
    return m;
}
