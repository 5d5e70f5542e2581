"""Progress bars for long CLI operations (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, unit: str = "B") -> Iterator[Callable[..., None]]:
    """Yields update(done, total, *_) for library progress callbacks."""
    if not sys.stderr.isatty():
        yield lambda *args: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "B" else (MofNCompleteColumn(),)
    columns = (description, BarColumn(), *amount, TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: float, total: float | None = None, *_: object) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def delayed_progress_bar(
    description: str, delay_s: float = 1.0, unit: str = "B"
) -> Iterator[Callable[..., None]]:
    """progress_bar that shows only once the operation has run for delay_s (a load that is
    done in under a second draws nothing)."""
    started = time.monotonic()
    with progress_bar(description, unit) as update:
        shown = False

        def maybe_update(done: float, total: float | None = None, *_: object) -> None:
            nonlocal shown
            if shown or time.monotonic() - started >= delay_s:
                shown = True
                update(done, total)

        yield maybe_update
