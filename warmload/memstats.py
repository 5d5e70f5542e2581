"""Process memory statistics for --stats: peak RSS and how much of a mapped model is resident.

Reads /proc/self/smaps_rollup-style data from /proc/self/smaps (Linux); elsewhere the numbers
are reported as unknown rather than guessed. The POSIX calls (getrusage, malloc_trim) go
through warmload.oscalls, which degrades them where the OS has none (macOS, Windows).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from warmload import oscalls


@dataclass(frozen=True, slots=True)
class MappedFile:
    mapped_bytes: int  # virtual size of all mappings of the file
    resident_bytes: int  # of which in RAM for this process


def peak_rss_bytes() -> int:
    """Peak resident set of this process in bytes; 0 where the OS does not say (logged once)."""
    return oscalls.peak_rss_bytes() or 0


def release_freed_memory() -> None:
    """Collect reference cycles, then hand the C heap's free pages back to the OS. Called when
    a model is unloaded: without it glibc keeps them for reuse, and after Gemma 3 was closed
    ~90 MB stayed resident, so the next load peaked ~30 MB higher (measured). Other C
    libraries (macOS, musl, Windows) have no malloc_trim: there only the collection runs."""
    gc.collect()
    oscalls.malloc_trim()


def current_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mapped_file(path: str | Path) -> MappedFile | None:
    """Mapped and resident bytes of every mapping of `path` in this process, or None."""
    target = str(Path(path).resolve())
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    mapped = resident = 0
    inside = False
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5].strip() == target
        elif inside and line.startswith("Size:"):
            mapped += int(line.split()[1]) * 1024
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1]) * 1024
    return MappedFile(mapped, resident)
