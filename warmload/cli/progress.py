"""Progress bars for long CLI operations (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
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
