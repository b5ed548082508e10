"""The README's commands: `make course` runs the full settings, `make test` and `make check` the quick ones.

The quick setting (COURSE_QUICK=1, course_lib.config) shortens training and Ray Tune for the notebook tests;
it must never be on by accident in `make course`, and every notebook says when it is on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import types
from pathlib import Path

import pytest

from course_lib import pipeline
from course_lib.config import QUICK_CLIPS, QUICK_EPOCHS, ConfigError, _quick_clips, load_config, quick_summary
from course_lib.train import recipe_settings

REPO = Path(__file__).resolve().parents[1]


def run_course_module():
    spec = importlib.util.spec_from_file_location("run_course", REPO / "scripts" / "run_course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_dry_run(target: str) -> str:
    """The commands `make -n target` would run (the venv stamp is assumed built)."""
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed-stamp", target], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return done.stdout


def test_make_course_never_sets_the_quick_setting_and_removes_it_from_the_notebooks_environment() -> None:
    commands = make_dry_run("course")
    assert "scripts/run_course.py" in commands and "COURSE_QUICK" not in commands
    environment = run_course_module().full_course_environment({"COURSE_QUICK": "1", "HOME": "/home/learner"})
    assert environment == {"HOME": "/home/learner"}


def test_make_test_runs_every_notebook_and_make_check_none() -> None:
    test, check = make_dry_run("test"), make_dry_run("check")
    assert "--nbmake" in test and " notebooks tests" in test and "scripts/test_widgets_77.sh" in test and "--durations" in test
    assert "--nbmake" not in check and "notebooks" not in check and "ruff check" in check and "pytest" in check
    assert '-m "not e2e"' in check and "e2e" not in test  # the end-to-end tests run in make test only


def test_the_suite_starts_with_the_notebooks_then_the_long_files_longest_first_and_xdist_keeps_that_order() -> None:
    spec = importlib.util.spec_from_file_location("root_conftest", REPO / "conftest.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    def item(path: str, *marks):
        def closest(name: str):
            return next((mark.mark for mark in marks if mark.name == name), None)

        return types.SimpleNamespace(path=Path(path), get_closest_marker=closest, name=f"{path}::{len(marks)}")

    items = [item("tests/test_a.py"), item("tests/test_train.py", pytest.mark.long(55)), item("tests/test_a.py"),
             item("notebooks/05_training.ipynb"), item("tests/test_b.py", pytest.mark.e2e),
             item("tests/test_tune.py", pytest.mark.e2e, pytest.mark.long(75)), item("notebooks/06_evaluation.ipynb")]
    hooks.pytest_collection_modifyitems(items)
    assert [str(i.path) for i in items] == ["notebooks/05_training.ipynb", "notebooks/06_evaluation.ipynb", "tests/test_tune.py",
                                            "tests/test_train.py", "tests/test_a.py", "tests/test_a.py", "tests/test_b.py"]
    with pytest.raises(pytest.UsageError, match="test_c.py: mark a long file pytest.mark.long\\(seconds\\)"):
        hooks.pytest_collection_modifyitems([item("tests/test_c.py", pytest.mark.long)])
    for target in ("test", "check"):  # xdist's default would hand out the files with the most tests first instead
        assert "--dist loadfile --no-loadscope-reorder" in make_dry_run(target)


def test_the_quick_setting_cuts_every_recipe_to_a_couple_of_epochs_and_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COURSE_QUICK", "1")
    quick = load_config("synthetic", data_root=tmp_path)
    full = load_config("synthetic", data_root=tmp_path, quick=False)
    assert quick.quick and not full.quick
    for name in full.training:
        assert recipe_settings(quick, name)[1] == {**recipe_settings(full, name)[1], "max_epochs": QUICK_EPOCHS}
        assert recipe_settings(full, name)[1]["max_epochs"] > QUICK_EPOCHS
    # The status line comes before any stage: a stand-in dataset stage keeps this test free of data.
    monkeypatch.setattr(pipeline, "_STAGES", {**pipeline._STAGES, "dataset": (lambda done, progress: "stub", lambda cfg: [])})
    pipeline.prepare(quick, until="dataset")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("quick") and "COURSE_QUICK=1" in first and f"{QUICK_EPOCHS} epochs" in first
    pipeline.prepare(full, until="dataset")
    assert "quick" not in capsys.readouterr().out


def test_the_quick_setting_generates_a_smaller_synthetic_set_beside_the_full_one_never_in_its_place(tmp_path) -> None:
    full = load_config("synthetic", data_root=tmp_path, quick=False)
    quick = load_config("synthetic", data_root=tmp_path, quick=True)
    assert quick.settings["synth"]["clips"] == QUICK_CLIPS != full.settings["synth"]["clips"]
    assert quick.profile_dir == tmp_path / "synthetic-quick" and full.profile_dir == tmp_path / "synthetic"
    assert "32/16/48 synthetic clips in synthetic-quick/" in quick_summary(quick)
    (full.dataset_dir / "development").mkdir(parents=True)
    (full.dataset_dir / "development" / "mine.wav").write_bytes(b"a learner's full set")
    small = quick.settings["synth"] | {"clips": {"development": 2, "validation": 1, "evaluation": 1},
                                       "min_seconds": 1.0, "max_seconds": 1.5}
    quick = dataclasses.replace(quick, settings={**quick.settings, "synth": small})
    pipeline.prepare(quick, until="dataset", verbose=False)
    assert len(list(quick.dataset_dir.rglob("*.wav"))) == 4
    assert [path.name for path in full.dataset_dir.rglob("*.wav")] == ["mine.wav"]  # the full set is left alone
    assert _quick_clips(8) == {"development": 8, "validation": 8, "evaluation": 8}  # smaller sets stay as they are
    assert _quick_clips({"development": 100, "evaluation": 3}) == {"development": 32, "validation": 0, "evaluation": 3}
    clotho = load_config("clotho", data_root=tmp_path, quick=True)
    assert clotho.profile_dir == tmp_path / "clotho"  # real data is the same data in the quick setting


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_an_unknown_quick_value_is_refused_saying_what_to_set(tmp_path, monkeypatch, value) -> None:
    monkeypatch.setenv("COURSE_QUICK", value)
    with pytest.raises(ConfigError, match=rf"COURSE_QUICK is set to '{value}'.*Set it to 1"):
        load_config("synthetic", data_root=tmp_path)


def test_unset_or_zero_means_the_full_course(tmp_path, monkeypatch) -> None:
    for value in ("", "0"):
        monkeypatch.setenv("COURSE_QUICK", value)
        assert not load_config("synthetic", data_root=tmp_path).quick
