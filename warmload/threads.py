"""How many threads a model runs on: the machine's physical performance cores (as llama.cpp
defaults to; efficiency cores of hybrid CPUs left out), or what `warmload bench --tune-threads`
measured fastest on this machine for models of that size, at most the kernels' 64.

Tuned values live in cache_dir()/threads.json, keyed by machine (CPU model and the CPUs this
process may use) and model size (power-of-two buckets), kept as a checked record
(warmload.caches: locked, atomic, checksummed). A missing, damaged or unreadable file just means
"not tuned" (with one warning).
"""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path

from warmload import oscalls
from warmload.caches import read_record, update_record
from warmload.config import cache_dir

log = logging.getLogger(__name__)


# The C kernels' thread team holds at most this many threads (kernels.h MAX_THREADS).
MAX_KERNEL_THREADS = 64
# An efficiency core is below this fraction of the fastest CPU's capacity (ARM LITTLE cores:
# ~0.25-0.5 of the big ones; mid cores ~0.7-0.9 count as performance) or of its top frequency
# (Intel E-cores: ~0.7-0.8 of the P-cores' clock; a non-hybrid CPU's favoured cores differ < 0.1).
_PERFORMANCE_FRACTION = {"cpu_capacity": 0.6, "cpufreq/cpuinfo_max_freq": 0.85}
_SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (affinity where the OS has one, else all of them)."""
    return oscalls.usable_cpus()


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_list(text: str) -> set[int]:
    """ "0-7,16-23" -> {0..7, 16..23} (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def performance_cpus(cpus: list[int], sys_cpu: Path = _SYS_CPU) -> list[int]:
    """The performance cores' CPUs among `cpus` on a hybrid (P/E, big.LITTLE) Linux machine,
    else `cpus`: Intel's cpu_core PMU list, else each CPU's cpu_capacity, else its cpufreq
    cpuinfo_max_freq; CPUs below _PERFORMANCE_FRACTION of the fastest are efficiency cores."""
    try:
        core = _cpu_list((sys_cpu.parent.parent / "cpu_core" / "cpus").read_text())
        if core & set(cpus):
            return [c for c in cpus if c in core]
    except (OSError, ValueError):
        pass
    for name, fraction in _PERFORMANCE_FRACTION.items():
        speed = {c: _read_int(sys_cpu / f"cpu{c}" / name) for c in cpus}
        if cpus and all(v for v in speed.values()):
            top = max(speed.values())
            return [c for c in cpus if speed[c] >= fraction * top]
    return cpus


def physical_cores(sys_cpu: Path = _SYS_CPU) -> int:
    """Physical performance cores among the usable CPUs: SMT siblings count once (distinct
    (package, core) pairs) and efficiency cores not at all, as llama.cpp's default. macOS:
    hw.perflevel0.physicalcpu (Apple silicon's P-cores), else hw.physicalcpu. Elsewhere
    (Windows: no topology read) every usable logical CPU."""
    if sys.platform == "darwin":
        for name in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            count = oscalls.sysctl_int(name)
            if count:
                return count
    cpus = performance_cpus(usable_cpus(), sys_cpu)
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def machine_key() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} / {len(usable_cpus())} cpus"


def size_bucket(model_nbytes: int) -> str:
    """Models within a factor of two share a tuning: "2^27" holds 128 MiB..256 MiB."""
    return f"2^{max(0, int(model_nbytes).bit_length() - 1)}"


def tuning_file() -> Path:
    return cache_dir() / "threads.json"


def _valid(key: str, value: object) -> bool:
    """An entry is {size bucket: {"threads": int, ...}} for one machine."""
    return isinstance(value, dict) and all(
        isinstance(v, dict) and type(v.get("threads")) is int for v in value.values()
    )


def _read() -> dict:
    return read_record(tuning_file(), "threads", _valid)


def tuned_threads(model_nbytes: int) -> int | None:
    entry = _read().get(machine_key(), {}).get(size_bucket(model_nbytes))
    threads = entry.get("threads") if isinstance(entry, dict) else None
    return threads if isinstance(threads, int) and 1 <= threads <= len(usable_cpus()) else None


def record_tuned_threads(model_nbytes: int, tokens_per_second: dict[int, float]) -> int:
    """Store the fastest of the measured thread counts for this machine and model size."""
    best = max(tokens_per_second, key=lambda n: tokens_per_second[n])
    entry = {
        "threads": best,
        "tokens_per_second": {str(n): round(v, 2) for n, v in sorted(tokens_per_second.items())},
    }
    key, bucket = machine_key(), size_bucket(model_nbytes)
    # locked read-modify-write; an unusable cache folder is one warning, not an error
    update_record(
        tuning_file(), "threads", _valid, lambda d: d.setdefault(key, {}).update({bucket: entry})
    )
    return best


def default_threads(model_nbytes: int | None = None) -> int:
    """The tuned thread count for a model of this size on this machine, else the physical
    performance cores; at most MAX_KERNEL_THREADS (machines with more cores use 64)."""
    tuned = tuned_threads(model_nbytes) if model_nbytes else None
    if tuned is not None:
        log.info("using %d threads (tuned on this machine, %s)", tuned, tuning_file())
        return min(tuned, MAX_KERNEL_THREADS)
    return min(physical_cores(), MAX_KERNEL_THREADS)
