"""course_lib.lesson: the code a notebook shows (whole, or from a line on) and the list of the course's notebooks."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from course_lib import lesson, loss, train

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_show_source_from_a_line_gives_that_line_on_with_its_true_line_numbers():
    whole = lesson.show_source(train.fit)
    loop = lesson.show_source(train.fit, start="for epoch in range")
    lines, first = inspect.getsourcelines(train.fit)
    offset = next(k for k, line in enumerate(lines) if "for epoch in range" in line)
    assert loop.code.startswith("for epoch in range(")
    assert loop.where == f"course_lib/train.py, lines {first + offset}-{first + len(lines) - 1}"
    assert whole.code.endswith(loop.code.splitlines()[-1]) and len(loop.code) < len(whole.code)
    with pytest.raises(ValueError, match="no such line"):
        lesson.show_source(loss.infonce_loss, start="no such line")


def test_course_notebooks_lists_every_notebook_of_the_folder_with_its_title(tmp_path):
    listed = lesson.course_notebooks()
    assert list(listed.index) == [path.stem for path in NOTEBOOKS]
    assert listed.loc["05_infonce_training", "title"] == "Training the dual encoder with InfoNCE"
    for path in NOTEBOOKS[:2]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "09_beyond.ipynb").write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": ["print('set-up')"]},
        {"cell_type": "markdown", "source": ["Some words\n", "# 09 · Beyond the baseline\n"]}]}), encoding="utf-8")
    (tmp_path / "notes.ipynb").write_text("{}", encoding="utf-8")  # not a course notebook: no number
    listed = lesson.course_notebooks(tmp_path)
    assert list(listed.index) == [NOTEBOOKS[0].stem, NOTEBOOKS[1].stem, "09_beyond"]
    assert listed.loc["09_beyond", "title"] == "Beyond the baseline"


def test_course_notebooks_in_a_folder_without_any_says_which_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        lesson.course_notebooks(tmp_path)
