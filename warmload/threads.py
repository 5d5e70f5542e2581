"""How many threads a model runs on: the machine's physical cores (as llama.cpp defaults to), or
what `warmload bench --tune-threads` measured fastest on this machine for models of that size.

Tuned values live in cache_dir()/threads.json, keyed by machine (CPU model and the CPUs this
process may use) and model size (power-of-two buckets), kept as a checked record
(warmload.caches: locked, atomic, checksummed). A missing, damaged or unreadable file just means
"not tuned" (with one warning).
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from warmload.caches import read_record, update_record
from warmload.config import cache_dir

log = logging.getLogger(__name__)


def usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Distinct (package, core) pairs among the usable CPUs (SMT siblings count once)."""
    cores = set()
    for cpu in usable_cpus():
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(usable_cpus())
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
    """The tuned thread count for a model of this size on this machine, else physical cores."""
    tuned = tuned_threads(model_nbytes) if model_nbytes else None
    if tuned is not None:
        log.info("using %d threads (tuned on this machine, %s)", tuned, tuning_file())
        return tuned
    return physical_cores()
