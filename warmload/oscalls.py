"""The operating-system calls warmload makes that not every OS has, each behind one guard.

Linux has them all. macOS has no posix_fadvise, MADV_POPULATE_READ, malloc_trim, /proc or
sched_getaffinity; Windows has no `resource` module, os.pread/os.preadv, os.posix_fadvise,
madvise/mlock/mincore in a C library, or mmap.MAP_ANONYMOUS. Where a call is absent its wrapper
returns None (or does the portable thing) and the log says so once per call and process, naming
what is lost; nothing here raises for a missing call. Callers (loader/warm.py, memstats.py,
formats/source.py, threads.py) never touch these modules and functions directly.

References: Python's os, mmap, resource and ctypes docs; madvise(2), mlock(2), mincore(2),
posix_fadvise(2), sysctlbyname(3); Windows GetProcessMemoryInfo.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable
from functools import cache
from types import ModuleType

log = logging.getLogger(__name__)

_reported: set[str] = set()
_reported_lock = threading.Lock()


def report_missing(call: str, effect: str) -> None:
    """One log line per process for each absent call: what is missing and what it costs."""
    with _reported_lock:
        if call in _reported:
            return
        _reported.add(call)
    log.info("%s is not available on this system (%s): %s", call, sys.platform, effect)


def resource_module() -> ModuleType | None:
    """The POSIX `resource` module, or None (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource


@cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except (OSError, TypeError):
        return None


def libc_function(name: str, argtypes: list, effect: str) -> Callable[..., int] | None:
    """The C library's `name` with its argument types set, or None (logged once)."""
    lib = _libc()
    fn = getattr(lib, name, None) if lib is not None else None
    if fn is None:
        report_missing(name, effect)
        return None
    fn.argtypes = argtypes
    return fn


def _errno_of(rc: int) -> int:
    return ctypes.get_errno() if rc != 0 else 0


def madvise(address: int, length: int, advice: int) -> int | None:
    """madvise(2): 0 or the errno; None where there is no madvise."""
    fn = libc_function(
        "madvise",
        [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int],
        "no readahead hint or populate on mapped files; warm-up reads the files instead",
    )
    return None if fn is None else _errno_of(fn(address, length, advice))


def mlock(address: int, length: int) -> int | None:
    """mlock(2): 0 or the errno; None where there is no mlock."""
    fn = libc_function(
        "mlock", [ctypes.c_void_p, ctypes.c_size_t], "mlock=True cannot lock the weights in RAM"
    )
    return None if fn is None else _errno_of(fn(address, length))


def mincore(address: int, length: int, vec_address: int) -> int | None:
    """mincore(2) into a byte per page at vec_address: 0 or the errno; None where absent."""
    fn = libc_function(
        "mincore",
        [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p],
        "page-cache residency of model files is unknown",
    )
    return None if fn is None else _errno_of(fn(address, length, vec_address))


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): free heap pages back to the OS; False where absent."""
    fn = libc_function(
        "malloc_trim", [ctypes.c_size_t], "freed C heap pages stay with the process until reused"
    )
    if fn is None:
        return False
    fn(0)
    return True


def fadvise_willneed(fd: int, nbytes: int) -> bool:
    """posix_fadvise(POSIX_FADV_WILLNEED) on the first nbytes of fd; False where absent."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None:
        report_missing("os.posix_fadvise", "no readahead hint; warm-up reads the files instead")
        return False
    fadvise(fd, 0, nbytes, os.POSIX_FADV_WILLNEED)
    return True


def pread_into(fd: int, out: memoryview, offset: int) -> int:
    """Read len(out) bytes of fd at offset into out; the bytes read. Without os.preadv, through
    os.pread (one copy); without that either (Windows), lseek + read, so callers that have no
    pread must give each thread its own descriptor (formats/source.py does)."""
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [out], offset)
    report_missing("os.preadv", "reads go through one extra copy")
    pread = getattr(os, "pread", None)
    if pread is not None:
        data = pread(fd, len(out), offset)
    else:
        report_missing("os.pread", "reads seek a descriptor per thread instead")
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(out))
    out[: len(data)] = data
    return len(data)


def has_pread() -> bool:
    return hasattr(os, "preadv") or hasattr(os, "pread")


def anonymous_map(nbytes: int) -> mmap.mmap:
    """Fresh private anonymous memory (zero pages on first touch) on any OS."""
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if None in flags:
        return mmap.mmap(-1, nbytes)  # Windows: an anonymous mapping backed by the paging file
    return mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes (-1: unlimited); None where there is no `resource`."""
    resource = resource_module()
    if resource is None or not hasattr(resource, "RLIMIT_MEMLOCK"):
        report_missing("resource.RLIMIT_MEMLOCK", "the mlock limit cannot be shown")
        return None
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return -1 if limit == resource.RLIM_INFINITY else int(limit)


def _windows_peak_rss() -> int | None:
    class Counters(ctypes.Structure):
        _fields_ = [("cb", ctypes.c_uint32), ("PageFaultCount", ctypes.c_uint32)] + [
            (name, ctypes.c_size_t)
            for name in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                "PagefileUsage", "PeakPagefileUsage",
            )
        ]  # fmt: skip

    try:
        kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        process = kernel32.GetCurrentProcess()
        if kernel32.K32GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return int(counters.PeakWorkingSetSize)
    except (AttributeError, OSError):
        pass
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident set in bytes, or None where the OS does not say."""
    resource = resource_module()
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
    if sys.platform == "win32":
        return _windows_peak_rss()
    report_missing("resource.getrusage", "peak RSS is unknown")
    return None


def sysctl_int(name: str) -> int | None:
    """An integer sysctl by name (macOS, BSD: sysctlbyname(3)), or None."""
    fn = getattr(_libc(), "sysctlbyname", None)  # None without a C library (Windows)
    if fn is None:
        return None
    value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
    pointer = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, pointer, pointer, pointer, ctypes.c_size_t]
    if fn(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return None
    return int(value.value) if size.value == 8 else int(ctypes.c_int32(value.value).value)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on: its affinity where the OS has one (Linux), else every
    logical CPU os.cpu_count() reports (on Windows that counts all processor groups)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return sorted(affinity(0))
        except OSError:
            pass
    else:
        report_missing("os.sched_getaffinity", "every logical CPU counts as usable")
    return list(range(os.cpu_count() or 1))
