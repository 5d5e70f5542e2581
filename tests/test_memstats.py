"""Process memory helpers (warmload/memstats.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmload import oscalls

SCRIPT = """
from warmload.memstats import current_rss_bytes, release_freed_memory
pairs = [(bytearray(64 * 1024), bytearray(64)) for _ in range(3000)]  # ~190 MiB of C heap
keep = [small for _, small in pairs]  # live blocks between the freed ones: holes, no free top
del pairs
held = current_rss_bytes()
release_freed_memory()
print(held - current_rss_bytes())
"""


@pytest.mark.skipif(oscalls.libc_function("malloc_trim", [], "") is None, reason="not glibc")
def test_release_freed_memory_hands_heap_holes_back_to_the_os():
    """What an unloaded model leaves: freed blocks between live ones stay resident until the
    trim (in a fresh process, so the suite's own heap does not blur the numbers)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 150 * 2**20
