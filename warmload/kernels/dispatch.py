"""Which build of the C kernels this process runs: CPU features -> the best variant built.

setup.py compiles warmload/kernels/*.c once per ISA level as `warmload.kernels._cpu_<variant>`
(as ggml's GGML_CPU_ALL_VARIANTS / ggml-cpu's per-variant score functions); a variant built for
instructions the CPU lacks would die with SIGILL, so nothing here imports a module before the
CPU is known to run it. Features come from warmload.kernels._features (cpuid + xgetbv on x86,
getauxval on Linux ARM, sysctl on macOS), or, if that tiny module was not built, from the
flags in /proc/cpuinfo. WARMLOAD_KERNELS=<variant> forces one (an unknown name, a variant not
built or one this CPU cannot run is an UnsupportedError); `native` (WARMLOAD_NATIVE=1 builds)
is taken only when forced.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from warmload.errors import UnsupportedError

ENV = "WARMLOAD_KERNELS"
_AVX2 = ("avx", "avx2", "fma", "f16c", "bmi2")
# variant -> the features it is compiled for (setup.py's flags), best variant first
X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "avx512": (*_AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "avxvnni": (*_AVX2, "avx_vnni"),
    "avx2": _AVX2,
    "generic": (),
}
ARM_VARIANTS: dict[str, tuple[str, ...]] = {
    "i8mm": ("neon", "fp16", "dotprod", "i8mm"),
    "dotprod": ("neon", "fp16", "dotprod"),
    "neon": ("neon",),
    "generic": (),
}
FORCED_ONLY = ("native",)  # -march=native builds: nothing says which CPU they need
# /proc/cpuinfo spellings of the features _features names differently
_PROC_NAMES = {"avx_vnni": "avx_vnni", "neon": "asimd", "dotprod": "asimddp", "fp16": "asimdhp"}


def machine_variants() -> dict[str, tuple[str, ...]]:
    """The variants of this machine's family, best first, with the features each needs."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return X86_VARIANTS
    if machine in ("aarch64", "arm64"):
        return ARM_VARIANTS
    return {"generic": ()}


@functools.cache
def cpu_features() -> dict[str, bool]:
    """Feature name -> whether this CPU and OS support it (x86 names as /proc/cpuinfo's)."""
    try:
        from warmload.kernels import _features
    except ImportError:
        return _proc_cpuinfo_features()
    found = dict(_features.features())
    found.pop("brand", None)
    return found


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (cpuid brand string, sysctl or /proc/cpuinfo), or the machine."""
    try:
        from warmload.kernels import _features

        name = " ".join(str(_features.features().get("brand", "")).split())
    except ImportError:
        name = ""
    if not name:
        for key in ("model name", "Hardware", "Model"):
            name = _proc_cpuinfo_field(key)
            if name:
                break
    return name or platform.processor() or platform.machine()


def feature_source() -> str:
    """How cpu_features() asked: the module's method, or /proc/cpuinfo."""
    if importlib.util.find_spec("warmload.kernels._features") is None:
        return "/proc/cpuinfo flags (warmload.kernels._features not built)"
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "sysctl hw.optional.arm" if platform.system() == "Darwin" else "getauxval(AT_HWCAP)"
    return "cpuid + xgetbv"


def _proc_cpuinfo_field(key: str) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def _proc_cpuinfo_features() -> dict[str, bool]:
    flags = set((_proc_cpuinfo_field("flags") or _proc_cpuinfo_field("Features")).split())
    names = {f for features in machine_variants().values() for f in features}
    return {n: _PROC_NAMES.get(n, n) in flags for n in sorted(names)}


def built_variants() -> list[str]:
    """Variants whose module was built, in preference order (found without importing them)."""
    known = [*machine_variants(), *FORCED_ONLY]
    return [v for v in known if importlib.util.find_spec(f"warmload.kernels._cpu_{v}")]


def missing_features(variant: str) -> list[str]:
    """The features `variant` needs that this CPU lacks ([] for native: it cannot tell)."""
    have = cpu_features()
    return [f for f in machine_variants().get(variant, ()) if not have.get(f, False)]


def runnable_variants() -> list[str]:
    """Built variants this CPU runs, best first (native only if forced: not listed)."""
    return [
        v
        for v in built_variants()
        if v not in FORCED_ONLY and v in machine_variants() and not missing_features(v)
    ]


@dataclass(frozen=True)
class Choice:
    variant: str | None  # None: no variant built or runnable
    reason: str


def choose() -> Choice:
    """The variant this process runs, and why."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        check_runnable(forced)
        return Choice(forced, f"forced by {ENV}={forced}")
    built = built_variants()
    runnable = runnable_variants()
    if not runnable:
        what = ", ".join(built) or "none"
        return Choice(None, f"no kernel variant this CPU runs was built (built: {what})")
    best = runnable[0]
    needs = machine_variants()[best]
    why = f"CPU has {', '.join(needs)}" if needs else "no SIMD variant above it"
    skipped = [
        f"{v} (lacks {', '.join(missing_features(v))})"
        for v in machine_variants()
        if v in built and v not in runnable
    ]
    unbuilt = [v for v in machine_variants() if v not in built]
    reason = f"best built variant this CPU runs ({why})"
    if skipped:
        reason += f"; not runnable: {'; '.join(skipped)}"
    if unbuilt:
        reason += f"; not built: {', '.join(unbuilt)}"
    return Choice(best, reason)


def check_runnable(variant: str) -> None:
    """UnsupportedError unless `variant` is built and this CPU can run it."""
    known = [*machine_variants(), *FORCED_ONLY]
    if variant not in known:
        raise UnsupportedError(
            f"{ENV}={variant}: no such kernel variant on {platform.machine()}; "
            f"known: {', '.join(known)}"
        )
    if variant not in built_variants():
        raise UnsupportedError(
            f"{ENV}={variant}: that kernel variant was not built (built: "
            f"{', '.join(built_variants()) or 'none'}); reinstall with a compiler that "
            "supports it (`make install`), or unset it"
        )
    lacking = missing_features(variant)
    if lacking:
        raise UnsupportedError(
            f"{ENV}={variant}: this CPU ({cpu_name()}) lacks {', '.join(lacking)}; "
            f"it can run: {', '.join(runnable_variants()) or 'none'}"
        )


def load(variant: str) -> ModuleType:
    """The module of `variant` after check_runnable (importing one the CPU cannot run could
    execute instructions it does not have)."""
    check_runnable(variant)
    return importlib.import_module(f"warmload.kernels._cpu_{variant}")
