"""Inter-process file locks, the one place that knows how each OS does them.

POSIX: fcntl.flock on a lock file (released by the kernel when the process dies, so a killed
builder never leaves a lock behind). Windows: msvcrt.locking on the lock file's first byte.
`file_lock(path)` waits for the lock; with `remove=True` the holder unlinks the lock file on the
way out, and a waiter that then wins a lock on the unlinked file notices (its inode is no longer
the path's) and locks the new file instead, so removing it never lets two holders in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

log = logging.getLogger(__name__)
_POLL_S = 0.05


class LockTimeout(OSError):
    """The lock was still held by another process after the timeout."""


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # EACCES/EDEADLOCK: held by another process
        return False
    return True


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _still_the_path(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino) or fcntl is None


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], timeout_s: float | None = None, remove: bool = False
) -> Iterator[Path]:
    """Hold an exclusive lock on the file `path` (created when missing) for the `with` body.

    Waits for another holder (polling; `timeout_s=None` waits as long as it takes) and raises
    LockTimeout after timeout_s. OSError from creating the lock file (read-only folder, a file
    where the folder should be) is the caller's to handle.
    """
    lock_path = Path(path)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    logged = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() > deadline:
                    raise LockTimeout(f"{lock_path}: still locked by another process")
                if not logged:
                    log.info("waiting for %s (another process holds it)", lock_path)
                    logged = True
                time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        if _still_the_path(fd, lock_path):
            break
        _unlock(fd)  # the previous holder removed it after we opened it: lock the new one
        os.close(fd)
    try:
        yield lock_path
    finally:
        if remove and fcntl is not None:
            with contextlib.suppress(OSError):
                lock_path.unlink()
        _unlock(fd)
        os.close(fd)
