"""Every course_lib module marks its lesson API with ``__all__``, and every name listed there exists."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MODULES = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "course_lib").glob("[a-z]*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_each_module_lists_its_lesson_api_and_every_listed_name_exists(name: str) -> None:
    module = importlib.import_module(f"course_lib.{name}")
    assert isinstance(getattr(module, "__all__", None), list), f"course_lib/{name}.py: add __all__ with its lesson API"
    missing = [item for item in module.__all__ if not hasattr(module, item)]
    assert not missing and len(set(module.__all__)) == len(module.__all__), (name, missing)
