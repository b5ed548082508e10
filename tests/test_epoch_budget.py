"""One training recipe, the baseline's, and an epoch budget per profile: train and ensure_trained stop there,
an explicit max_epochs goes on, and Tune's baseline trial (notebook 08) still runs all of the recipe's epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny import write_tiny_profile

from course_lib import train
from course_lib.config import BASELINE_YAML, QUICK_EPOCHS, ConfigError, load_config, read_yaml
from course_lib.model import run_dir_for


def test_the_course_has_one_recipe_and_each_profile_a_budget_of_its_epochs(tmp_path: Path) -> None:
    course = read_yaml(BASELINE_YAML)
    assert list(course["training"]) == ["baseline"] and course["training"]["baseline"]["max_epochs"] == 80
    for profile in ("synthetic", "clotho"):
        cfg = load_config(profile, data_root=tmp_path, quick=False)
        name, settings = train.recipe_settings(cfg)
        assert name == "baseline" and settings["max_epochs"] == 80
        assert 1 <= train.epoch_budget(cfg, settings) == cfg.settings["epoch_budget"] < 80
    quick = load_config("synthetic", data_root=tmp_path, quick=True)
    assert train.epoch_budget(quick, train.recipe_settings(quick)[1]) == QUICK_EPOCHS


def budget_profile(folder: Path, budget: int):
    """A tiny profile on disk whose recipe has 80 epochs and whose profile budgets ``budget`` of them."""
    cfg = write_tiny_profile(folder, {"max_epochs": 80})
    path = folder / "course.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["profiles"]["synthetic"]["epoch_budget"] = budget
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return load_config("synthetic", data_root=cfg.data_root, yaml_path=path, quick=False)


def test_train_and_ensure_trained_stop_at_the_budget_and_max_epochs_goes_on(tmp_path: Path, capsys) -> None:
    cfg = budget_profile(tmp_path, budget=2)
    assert train.recipe_settings(cfg)[1]["max_epochs"] == 80
    train.train(cfg, verbose=False)
    assert list(train.read_history(run_dir_for(cfg))["epoch"]) == [0, 1, 2]
    capsys.readouterr()
    train.ensure_trained(cfg)
    assert "Reusing the trained model" in capsys.readouterr().out, "the budget's run is done: reused, not trained on"
    train.train(cfg, max_epochs=3, verbose=False)
    assert list(train.read_history(run_dir_for(cfg))["epoch"]) == [0, 1, 2, 3]


def test_a_budget_that_is_not_a_whole_number_of_epochs_is_refused(tmp_path: Path) -> None:
    settings = yaml.safe_load(BASELINE_YAML.read_text(encoding="utf-8"))
    settings["profiles"]["synthetic"]["epoch_budget"] = 0
    path = tmp_path / "course.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    with pytest.raises(ConfigError, match="profiles.synthetic.epoch_budget is 0; it must be a whole number at least 1"):
        load_config("synthetic", data_root=tmp_path / "root", yaml_path=path)
