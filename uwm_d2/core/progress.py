"""Progress for long work, on a terminal and in a log, and the one process-pool loop.

:class:`Progress` draws a tqdm bar when stderr is a terminal. In a notebook cell, a log file or a
pipe, tqdm draws nothing useful (or floods the log with carriage returns), so there it prints a
plain line to stderr whenever another tenth of the work is done (and at the end)::

    infer: 120/480 slices (25%), 3/12 case-days, 41 s

:func:`parallel_map` is the worker-pool loop every data stage shares (phantom rendering, COCO
building): jobs run in ``spawn``-ed processes (OpenCV's thread pool does not survive a fork), the
results come back in job order, and the first failing job *in job order* raises, so the error a
user sees does not depend on timing.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")

#: Without a terminal, a line is printed each time this share of the total is newly done.
LINE_STEP = 0.1


class Progress:
    """A progress display: a tqdm bar on a terminal, a line per tenth of the work otherwise.

    Args:
        total: units of work (slices, say).
        desc: what is being done, the first word of every line.
        unit: the unit's name (plural is formed with an ``s``).
        enabled: ``False`` shows nothing at all (tests, library use).
        group_unit: the name of the chunks :meth:`update` is called with (``"case-day"``), counted
            in the lines.
        stream: where to write; stderr by default (stdout stays for results).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "slice",
        enabled: bool = True,
        group_unit: str | None = None,
        stream: TextIO | None = None,
        group_total: int | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc, self.unit, self.group_unit = desc, unit, group_unit
        self.group_total = group_total
        self.enabled = enabled
        self.done = 0
        self.groups = 0
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._next_line = LINE_STEP
        self._bar: tqdm | None = None
        if enabled and _is_terminal(self._stream):
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self._stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, amount: int = 1) -> None:
        """``amount`` more units done (one call per chunk: a case-day, say)."""
        self.done += int(amount)
        self.groups += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(amount)
            return
        fraction = self.done / self.total if self.total else 1.0
        if fraction + 1e-9 >= self._next_line or self.done >= self.total:
            self._print_line()
            while self._next_line <= fraction + 1e-9:
                self._next_line += LINE_STEP

    def line(self) -> str:
        """The text of the current progress line."""
        percent = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} {_plural(self.unit, self.total)}{percent}"
        if self.group_unit:
            of = f"/{self.group_total}" if self.group_total is not None else ""
            count = self.group_total if self.group_total is not None else self.groups
            text += f", {self.groups}{of} {_plural(self.group_unit, count)}"
        return f"{text}, {time.monotonic() - self._start:.0f} s"

    def _print_line(self) -> None:
        print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _plural(word: str, count: int) -> str:
    return word if count == 1 else f"{word}s"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def parallel_map(
    function: Callable[[Job], Result],
    jobs: Sequence[Job],
    workers: int,
    progress: Progress | None = None,
    weight: Callable[[Job], int] = lambda job: 1,
) -> list[Result]:
    """``[function(job) for job in jobs]``, in up to ``workers`` spawned processes.

    Args:
        function: a module-level function (it is pickled into the workers).
        jobs: picklable job descriptions.
        workers: processes; 1 (or a single job) runs everything in this process.
        progress: updated by ``weight(job)`` as each job completes (in job order).
        weight: the units of work of one job (its slices, say).

    Returns:
        The results in job order.

    Raises:
        Whatever the first failing job *in job order* raised; the pool is shut down and pending
        jobs are cancelled first.
    """
    workers = min(int(workers), len(jobs))
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(function(job))
            if progress is not None:
                progress.update(weight(job))
        return results
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: list[Future[Any]] = [pool.submit(function, job) for job in jobs]
        results = []
        for future, job in zip(futures, jobs, strict=True):
            results.append(future.result())
            if progress is not None:
                progress.update(weight(job))
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
