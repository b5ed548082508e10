"""One process pool for the course: map a function over jobs with N worker processes.

Used by course_lib.synth (rendering clips) and meant for course_lib.features (log-mels). Three
safeguards that a bare ``ProcessPoolExecutor`` lacks:

* Workers are started fresh ("forkserver" where it exists, else "spawn"), never forked from the
  caller: forking a process that runs threads (a Jupyter kernel) can deadlock the child.
* Workers exit when their parent dies, even after ``kill -9``: each worker watches the pipe its
  parent holds open and leaves as soon as it closes, instead of idling on with its memory.
* A script that starts the pool from top-level code without ``if __name__ == "__main__":`` would
  make every worker re-run the script (and fail with ``BrokenProcessPool``); the pool notices,
  says so and runs in one process instead.
"""

from __future__ import annotations

import ast
import importlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")

GUARD_NOTE = (
    "{script} starts worker processes from its top-level code, outside `if __name__ == \"__main__\":`. Each "
    "worker process imports the script again, so it would run the script's code once more instead of working. "
    "Running in one process instead; to use {workers} processes, put the script's top-level code under "
    "`if __name__ == \"__main__\":`."
)


def map_in_processes(function: Callable[[Job], Result], jobs: Iterable[Job], workers: int, *,
                     preload: Sequence[str] = (), chunksize: int | None = None) -> Iterator[Result]:
    """``function(job)`` for every job, in order, computed by ``workers`` processes (1: in this process).

    ``function`` must be importable (defined at a module's top level). ``preload`` names modules each
    worker imports before its first job (heavy imports paid once a worker, not once a job). Results are
    yielded as they are ready, so a caller can move a progress bar; stopping early (an error, Ctrl-C,
    closing the iterator) cancels the jobs not yet started.
    """
    jobs = list(jobs)
    if workers > 1 and len(jobs) > 1 and (script := _unguarded_main_script()) is not None:
        print(GUARD_NOTE.format(script=script, workers=workers), file=sys.stderr)
        workers = 1
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield function(job)
        return
    workers = min(workers, len(jobs))
    chunksize = chunksize or max(1, min(16, len(jobs) // (4 * workers)))
    pool = ProcessPoolExecutor(workers, mp_context=_context(preload), initializer=_start_worker,
                               initargs=(tuple(preload),))
    try:
        yield from pool.map(function, jobs, chunksize=chunksize)
    except BrokenProcessPool as exc:
        raise BrokenProcessPool(
            "A worker process died before finishing its jobs. Common causes: the machine ran out of memory (use "
            "fewer workers), the worker was killed, or a script started the pool without `if __name__ == "
            "\"__main__\":` around its top-level code (each worker imports the script again)."
        ) from exc
    finally:  # on an error or Ctrl-C, drop the jobs not yet started instead of waiting for them all
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers(jobs: int, at_least: int = 32, at_most: int = 8) -> int:
    """Worker processes worth starting for ``jobs`` jobs: 1 below ``at_least`` jobs, else the cores (at most ``at_most``)."""
    if jobs < at_least:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, at_most)


# --- after the lesson: how workers start and stop -----------------------------------------------------------


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """A fork server when the platform has one (it preloads ``preload`` once), else spawn: never a fork of this process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(list(preload))  # only takes effect when the fork server first starts
    return context


def _start_worker(preload: tuple[str, ...]) -> None:
    """In each worker: leave when the parent process is gone, then import ``preload``."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="exit-with-parent", daemon=True).start()
    for module in preload:
        importlib.import_module(module)


def _exit_with_parent(sentinel: int) -> None:
    """Block until the parent's end of the pipe closes (the parent exited or was killed), then exit at once."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(3)


def _unguarded_main_script() -> str | None:
    """The script's path when this call comes from its top-level code outside ``if __name__ == "__main__":``."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is None or main_file is None:
        return None  # Jupyter, python -c, stdin: workers have no script to re-run
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            return None if _inside_main_guard(str(Path(main_file).resolve()), frame.f_lineno) else main_file
        frame = frame.f_back
    return None


@lru_cache(maxsize=8)
def _guarded_lines(script: str) -> tuple[tuple[int, int], ...]:
    """The line ranges of ``script`` under ``if __name__ == "__main__":`` at its top level."""
    try:
        tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ((0, sys.maxsize),)  # cannot tell: assume guarded rather than slow a script down
    ranges = []
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            ranges.append((node.lineno, node.end_lineno or sys.maxsize))
    return tuple(ranges)


def _inside_main_guard(script: str, line: int) -> bool:
    return any(first <= line <= last for first, last in _guarded_lines(script))


def run_jobs(function: Callable[[Job], Any], jobs: Iterable[Job], workers: int, **options: Any) -> list[Any]:
    """All results of ``map_in_processes`` as a list."""
    return list(map_in_processes(function, jobs, workers, **options))
