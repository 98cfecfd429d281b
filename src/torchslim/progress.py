"""Progress bars (rich) that stay quiet when output is not a terminal, and quieted loggers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextmanager
def quiet_logs(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers (``""``: the root logger) to ``level`` for the block only.

    ONNX Runtime's quantizers and torchao log advice and warnings through the root logger;
    the levels are restored afterwards, so the caller's logging setup is left as it was.
    """
    loggers = [logging.getLogger(name or None) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)


class _Bar:
    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task_id = task_id
        self._fields: dict[str, str] = {"loss": "", "metric": ""}

    def advance(self, steps: int = 1, **values: float) -> None:
        """Move the bar by ``steps`` and show the latest ``loss`` / ``metric`` values."""
        if self._progress is None or self._task_id is None:
            return
        for key, value in values.items():
            self._fields[key] = f"{key} {value:.4f}"
        self._progress.update(self._task_id, advance=steps, **self._fields)  # type: ignore[arg-type]  # rich takes extra fields as **kwargs


def enabled_by_default() -> bool:
    """Bars show on a terminal unless ``TORCHSLIM_PROGRESS=0``."""
    return console.is_terminal and os.environ.get("TORCHSLIM_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A progress bar with loss and metric fields; a no-op off a terminal."""
    if not (enabled and enabled_by_default()):
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task_id = progress.add_task(description, total=total, loss="", metric="")
        yield _Bar(progress, task_id)
