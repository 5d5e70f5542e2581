/* warmload.kernels._features: what the CPU and the OS let the kernels use, asked the way
   ggml-cpu's cpu-feats-x86.cpp and its ARM counterpart do: cpuid with xgetbv on x86 (a feature
   counts only if the OS saves its registers: XCR0), getauxval(AT_HWCAP / AT_HWCAP2) on Linux
   ARM, sysctl hw.optional.* on macOS. Built with no ISA flags so it runs on any CPU of its
   family; warmload/kernels/dispatch.py picks the kernel variant from its answer. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FEATURES_X86 1
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#define FEATURES_MACOS_ARM 1
#include <sys/sysctl.h>
#elif defined(__aarch64__) && defined(__linux__)
#define FEATURES_LINUX_ARM 1
#include <sys/auxv.h>
#endif

static int put(PyObject *d, const char *name, long on) {
    PyObject *v = PyBool_FromLong(on);
    int rc = v ? PyDict_SetItemString(d, name, v) : -1;
    Py_XDECREF(v);
    return rc;
}

#if FEATURES_X86
static unsigned long long xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0)); /* only when OSXSAVE is set */
    return ((unsigned long long)hi << 32) | lo;
}

static int x86_features(PyObject *d, char *brand) {
    unsigned int a = 0, b = 0, c = 0, e = 0, max = __get_cpuid_max(0, NULL);
    unsigned int c1 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0;
    if (max >= 1) __cpuid_count(1, 0, a, b, c1, e);
    if (max >= 7) {
        __cpuid_count(7, 0, a, b7, c7, d7);
        if (a >= 1) __cpuid_count(7, 1, a71, b, c, e);
    }
    unsigned long long x = (c1 >> 27) & 1 ? xcr0() : 0; /* OSXSAVE */
    int os_avx = (x & 0x6) == 0x6, os_avx512 = os_avx && (x & 0xe0) == 0xe0;
    int os_amx = (x & 0x60000) == 0x60000;
    struct { const char *name; int on; } table[] = {
        {"sse3", c1 & 1},
        {"ssse3", (c1 >> 9) & 1},
        {"sse4_1", (c1 >> 19) & 1},
        {"sse4_2", (c1 >> 20) & 1},
        {"os_avx", os_avx},
        {"os_avx512", os_avx512},
        {"avx", os_avx && ((c1 >> 28) & 1)},
        {"fma", os_avx && ((c1 >> 12) & 1)},
        {"f16c", os_avx && ((c1 >> 29) & 1)},
        {"bmi1", (b7 >> 3) & 1},
        {"bmi2", (b7 >> 8) & 1},
        {"avx2", os_avx && ((b7 >> 5) & 1)},
        {"avx_vnni", os_avx && ((a71 >> 4) & 1)},
        {"avx512f", os_avx512 && ((b7 >> 16) & 1)},
        {"avx512dq", os_avx512 && ((b7 >> 17) & 1)},
        {"avx512bw", os_avx512 && ((b7 >> 30) & 1)},
        {"avx512vl", os_avx512 && ((b7 >> 31) & 1)},
        {"avx512_vnni", os_avx512 && ((c7 >> 11) & 1)},
        {"avx512_bf16", os_avx512 && ((a71 >> 5) & 1)},
        {"amx_tile", os_amx && ((d7 >> 24) & 1)},
        {"amx_int8", os_amx && ((d7 >> 25) & 1)},
        {"amx_bf16", os_amx && ((d7 >> 22) & 1)},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; ++i)
        if (put(d, table[i].name, table[i].on) < 0) return -1;
    unsigned int ext = __get_cpuid_max(0x80000000, NULL), r[12];
    if (ext >= 0x80000004) {
        for (unsigned int i = 0; i < 3; ++i)
            __cpuid(0x80000002 + i, r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
        memcpy(brand, r, 48);
        brand[48] = 0;
    }
    return 0;
}
#endif

#if FEATURES_MACOS_ARM
static int sysctl_on(const char *name) {
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname(name, &v, &n, NULL, 0) == 0 && v;
}
#endif

#if FEATURES_LINUX_ARM
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_FPHP
#define HWCAP_FPHP (1 << 9)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1 << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

static PyObject *py_features(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    PyObject *d = PyDict_New();
    char brand[64] = "";
    int rc = d ? 0 : -1;
#if FEATURES_X86
    if (!rc) rc = x86_features(d, brand);
#elif FEATURES_MACOS_ARM
    size_t n = sizeof brand - 1;
    if (sysctlbyname("machdep.cpu.brand_string", brand, &n, NULL, 0) != 0) brand[0] = 0;
    if (!rc) rc = put(d, "neon", 1); /* every Apple arm64 CPU */
    if (!rc) rc = put(d, "fp16", sysctl_on("hw.optional.arm.FEAT_FP16"));
    if (!rc) rc = put(d, "dotprod", sysctl_on("hw.optional.arm.FEAT_DotProd"));
    if (!rc) rc = put(d, "i8mm", sysctl_on("hw.optional.arm.FEAT_I8MM"));
#elif FEATURES_LINUX_ARM
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (!rc) rc = put(d, "neon", (hw & HWCAP_ASIMD) != 0);
    if (!rc) rc = put(d, "fp16", (hw & HWCAP_FPHP) && (hw & HWCAP_ASIMDHP));
    if (!rc) rc = put(d, "dotprod", (hw & HWCAP_ASIMDDP) != 0);
    if (!rc) rc = put(d, "i8mm", (hw2 & HWCAP2_I8MM) != 0);
#endif
    PyObject *name = rc ? NULL : PyUnicode_DecodeLatin1(brand, (Py_ssize_t)strlen(brand), NULL);
    if (!name || PyDict_SetItemString(d, "brand", name) < 0) Py_CLEAR(d);
    Py_XDECREF(name);
    return d;
}

static PyMethodDef METHODS[] = {
    {"features", py_features, METH_NOARGS,
     "{feature: bool, ..., 'brand': CPU name}: what this CPU and OS support (x86: cpuid and\n"
     "xgetbv; Linux ARM: getauxval; macOS: sysctl); other machines give only 'brand'"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_features", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__features(void) { return PyModule_Create(&MODULE); }
