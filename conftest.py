"""Under nbmake, each notebook runs alone on its own empty data root.

That is the path a learner takes who opens a notebook on a fresh runtime (a Colab badge, say): the
notebook must build what it is missing through course_lib.pipeline, and say so. The kernel that
nbmake starts inherits this process's environment, so COURSE_DATA_DIR is set just before it runs.
"""

from __future__ import annotations

import os

import pytest

_previous = pytest.StashKey[str | None]()  # the COURSE_DATA_DIR to restore after a notebook

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path.suffix == ".ipynb":
        item.stash[_previous] = os.environ.get("COURSE_DATA_DIR")
        os.environ["COURSE_DATA_DIR"] = str(item.config._tmp_path_factory.mktemp(f"data-{item.path.stem}"))


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _previous in item.stash:
        previous = item.stash[_previous]
        if previous is None:
            os.environ.pop("COURSE_DATA_DIR", None)
        else:
            os.environ["COURSE_DATA_DIR"] = previous
