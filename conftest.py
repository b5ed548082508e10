"""Under nbmake, each notebook runs alone on its own empty data root, with the quick setting.

That is the path a learner takes who opens a notebook on a fresh runtime (a Colab badge, say): the
notebook must build what it is missing through course_lib.pipeline, and say so. The kernel that
nbmake starts inherits this process's environment, so COURSE_DATA_DIR is set just before it runs,
and COURSE_QUICK=1 (course_lib.config): the same code path with a couple of epochs and small Ray Tune
searches. Whether the model learns is tested once, in tests/test_learning.py; `make course` runs
the full settings.

Under pytest-xdist (`make test`: two workers on two cores, `make check`: three) each worker, and every kernel or
process it starts, gets its share of the cores for its math libraries (OMP_NUM_THREADS and kin): left at
the default, each of torch's thread pools spins on every core, and two notebooks side by side took three
times as long as one alone instead of twice (measured: benchmarks/README.md, "The test suite").
Ray's workers, which run the Tune trials, keep the normal priority (RAY_worker_niceness=0): by default Ray
starts them at nice 15 so that the driver stays responsive, and beside the other test workers' busy processes
they then got a few per cent of a core; test_tune.py took 428 s instead of 113 s beside two busy processes.

Notebooks come first, then the test files marked ``long(seconds)``, the longest first: pytest-xdist hands
files out in collection order (with --no-loadscope-reorder), so the long ones start at once on their own
workers and the short files fill the gaps, instead of a long file arriving last and running alone while the
other workers sit idle.
"""

from __future__ import annotations

import os
import sys

import pytest

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

_previous = pytest.StashKey[dict[str, str | None]]()  # the variables to restore after a notebook

def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, share)
        os.environ.setdefault("RAY_worker_niceness", "0")  # read by the Ray instances the tests and notebooks start
        if "torch" in sys.modules:  # imported before this hook: tell its pool directly
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_order)  # stable: a file's tests stay together and in order


def _start_order(item: pytest.Item) -> tuple[int, float]:
    """Notebooks first, then the files marked long, the longest first (``pytest.mark.long(seconds)``), then the rest."""
    if item.path.suffix == ".ipynb":
        return 0, 0.0
    long = item.get_closest_marker("long")  # set on the module, so every test of the file has it
    if long is None:
        return 2, 0.0
    if not (len(long.args) == 1 and isinstance(long.args[0], int | float)):
        raise pytest.UsageError(f"{item.path}: mark a long file pytest.mark.long(seconds), its tests' seconds together, alone")
    return 1, -long.args[0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path.suffix == ".ipynb":
        item.stash[_previous] = {name: os.environ.get(name) for name in ("COURSE_DATA_DIR", "COURSE_QUICK")}
        os.environ["COURSE_DATA_DIR"] = str(item.config._tmp_path_factory.mktemp(f"data-{item.path.stem}"))
        os.environ["COURSE_QUICK"] = "1"


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _previous in item.stash:
        for name, previous in item.stash[_previous].items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
