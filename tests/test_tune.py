"""course_lib.tune: the course's trainer as a Ray Tune trial, its reports, checkpoints, stopping and resuming, a real cluster.

Everything runs on a tiny synthetic profile (4/3/2 clips of 1.5-2 s) with trials of 1-3 epochs. Ray is optional:
the tests that need it are skipped without it (CI installs the ``tune`` extra).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import signal
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from course_lib import train
from course_lib import tune as course_tune
from course_lib.config import load_config
from course_lib.train import recipe_settings

pytestmark = pytest.mark.long(75)  # collected first, so that a test worker starts it at once (conftest.py)
REPO = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed: pip install -e ".[tune]"')


@pytest.fixture(scope="module")
def local_ray():
    resources = course_tune.start_ray(num_cpus=2)
    yield resources
    course_tune.stop_ray()


# --- without Ray ---------------------------------------------------------------------------------


# Every public function of course_lib.tune: how to call it. Those that need Ray must say how to install it.
NEEDS_RAY = {
    "trial": lambda cfg, tmp: course_tune.trial({"recipe": "baseline"}, cfg),
    "search_space": lambda cfg, tmp: course_tune.search_space(),
    "asha": lambda cfg, tmp: course_tune.asha(max_epochs=3),
    "plateau_stopper": lambda cfg, tmp: course_tune.plateau_stopper(cfg),
    "make_tuner": lambda cfg, tmp: course_tune.make_tuner(cfg, {"recipe": "baseline"}, storage_path=tmp),
    "resume": lambda cfg, tmp: course_tune.resume(tmp / "search", cfg),
    "start_ray": lambda cfg, tmp: course_tune.start_ray(),
    "stop_ray": lambda cfg, tmp: course_tune.stop_ray(),
}
PLAIN = {"trial_recipe", "baseline_config", "results_table", "curves", "plot_curves", "trial_id"}  # read configs and results


def test_every_public_function_is_listed_here_as_needing_ray_or_not() -> None:
    public = {name for name in course_tune.__all__ if inspect.isfunction(getattr(course_tune, name))}
    assert public == set(NEEDS_RAY) | PLAIN, "add the new function to NEEDS_RAY (with a call) or to PLAIN"


@pytest.mark.parametrize("name", sorted(NEEDS_RAY))
def test_without_ray_every_function_says_how_to_install_it(name, monkeypatch, tmp_path) -> None:
    for module in [module for module in sys.modules if module == "ray" or module.startswith("ray.")] + ["ray"]:
        monkeypatch.setitem(sys.modules, module, None)  # what `import ray...` sees when Ray is not installed
    cfg = load_config("synthetic", data_root=tmp_path / "root", quick=False)
    with pytest.raises(ImportError, match=r'Ray Tune is not installed.*pip install -e "\.\[tune\]"'):
        NEEDS_RAY[name](cfg, tmp_path)


def fake_result(name: str, val_map10: list[float], done: bool = True, error: Exception | None = None, **config):
    """A Tune Result as results_table reads it: config, last metrics, the reported rows, the error."""
    rows = pd.DataFrame({"epoch": range(len(val_map10)), "val_t2a_map10": val_map10, "val_loss": [3.0 - v for v in val_map10],
                         "time_total_s": [30.0 * (k + 1) for k in range(len(val_map10))]})
    return types.SimpleNamespace(config={"max_epochs": 9, **config}, metrics={"trial_id": name, "done": done},
                                 metrics_dataframe=rows, error=error, path=f"/tmp/{name}")


def test_the_results_table_ranks_trials_by_their_best_epoch_not_their_last() -> None:
    """Listed worst first; trial b's last epoch is its worst, c's best epoch is the best of all."""
    results = [fake_result("a", [0.1, 0.2], lr=1e-3), fake_result("b", [0.1, 0.5, 0.3], lr=2e-3),
               fake_result("c", [0.2, 0.6, 0.1], lr=3e-3), fake_result("d", [0.0], error=RuntimeError("boom"), lr=4e-3)]
    table = course_tune.results_table(results)
    assert table["trial"].tolist() == ["c", "b", "a", "d"]
    assert table["best_val_map10"].tolist() == [0.6, 0.5, 0.2, 0.0]
    assert table["lr"].tolist() == [3e-3, 2e-3, 1e-3, 4e-3] and "max_epochs" not in table
    assert table["epochs"].tolist() == [2, 2, 1, 0] and table["minutes"].tolist() == [1.5, 1.5, 1.0, 0.5]
    assert table["status"].tolist() == ["ok", "ok", "ok", "error"]


class FakeTuner:
    """A Tuner whose fit() returns the given results, or raises what it is given."""

    def __init__(self, outcome):
        self.outcome = outcome

    def fit(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def get_results(self):
        return "the tuner's own method"


def test_an_interrupted_search_says_so_and_how_to_resume(tmp_path, capsys) -> None:
    """Tune's Ctrl-C handler ends the trials and returns: their last results are not done."""
    results = [fake_result("a", [0.1, 0.2]), fake_result("b", [0.1], done=False)]
    search = course_tune.Search(FakeTuner(results), tmp_path / "search-1")
    assert search.fit() is results
    said = capsys.readouterr().out
    assert "interrupted: 1 of 2 trials did not finish" in said
    assert f"course_tune.resume({str(tmp_path / 'search-1')!r}, cfg).fit()" in said
    assert course_tune.results_table(results).set_index("trial")["status"].to_dict() == {"a": "ok", "b": "interrupted"}
    assert search.get_results() == "the tuner's own method"  # everything else is the Tuner's
    course_tune.Search(FakeTuner(results[:1]), tmp_path / "search-2").fit()
    assert capsys.readouterr().out == "", "a finished search says nothing"


def test_a_keyboard_interrupt_out_of_fit_says_how_to_resume(tmp_path) -> None:
    """A second Ctrl-C (or Tune's handler switched off) raises out of Tuner.fit: it still stops, and says how to resume."""
    search = course_tune.Search(FakeTuner(KeyboardInterrupt()), tmp_path / "search-3")
    with pytest.raises(KeyboardInterrupt, match=r"interrupted\. Resume it with: course_tune\.resume\(.*search-3'"):
        search.fit()


def test_a_trial_replaces_recipe_values_and_refuses_unknown_ones(tune_profile) -> None:
    name, trial_cfg = course_tune.trial_recipe(tune_profile, {"recipe": "baseline", "lr": 3e-3, "temperature": 0.1, "seed": 2})
    _, settings = recipe_settings(trial_cfg, name)
    _, original = recipe_settings(tune_profile, "baseline")
    assert name == "baseline" and settings == {**original, "lr": 3e-3, "temperature": 0.1}
    assert recipe_settings(tune_profile, "baseline")[1]["lr"] == 1e-3  # the profile's own recipe is left alone
    with pytest.raises(ValueError, match="learning_rate"):
        course_tune.trial_recipe(tune_profile, {"recipe": "baseline", "learning_rate": 1e-3})


def test_the_baseline_trial_is_the_baseline_recipe_unchanged(tune_profile) -> None:
    name, trial_cfg = course_tune.trial_recipe(tune_profile, course_tune.baseline_config())
    settings = recipe_settings(trial_cfg, name)[1]
    assert name == "baseline" and settings == recipe_settings(tune_profile, "baseline")[1]
    assert (settings["lr"], settings["batch_size"], settings["temperature"], settings["max_epochs"]) == (1e-3, 32, 0.07, 80)


def received_by_train(cfg, config: dict, monkeypatch, tmp_path) -> dict:
    """Run course_lib.tune.trial on ``config`` outside Tune, with train.train replaced by a recorder: the recipe
    settings (max_epochs included) that train.train would train with."""
    from ray import tune

    received = {}

    def record(trial_cfg, recipe, seed=0, run_dir=None, max_epochs=None, callback=None, verbose=True):
        settings = recipe_settings(trial_cfg, recipe)[1]
        received.update(settings, max_epochs=settings["max_epochs"] if max_epochs is None else max_epochs, seed=seed)

    monkeypatch.setattr(course_tune.train, "train", record)
    monkeypatch.setattr(tune, "get_context", lambda: types.SimpleNamespace(get_trial_dir=lambda: str(tmp_path)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    course_tune.trial(config, cfg)
    return received


@needs_ray
def test_every_dimension_of_notebook_08s_search_space_changes_what_a_trial_trains(tune_profile, monkeypatch, tmp_path) -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    notebook = json.loads((REPO / "notebooks" / "08_tuning_with_ray.ipynb").read_text(encoding="utf-8"))
    assert any("course_tune.search_space(" in "".join(cell["source"]) for cell in notebook["cells"])
    space = course_tune.search_space(max_epochs=3)
    for key, domain in space.items():
        if isinstance(domain, Categorical):
            one, other = domain.categories[0], domain.categories[-1]
        elif isinstance(domain, Float | Integer):
            one, other = domain.lower, domain.upper
        else:  # a fixed value
            one, other = domain, domain + 1
        draw = {name: value.sample() if hasattr(value, "sample") else value for name, value in space.items()}
        first = received_by_train(tune_profile, {**draw, key: one}, monkeypatch, tmp_path)
        second = received_by_train(tune_profile, {**draw, key: other}, monkeypatch, tmp_path)
        changed = {name for name in first if first[name] != second[name]}
        assert changed == {key}, f"search space dimension {key!r}: {one!r} -> {other!r} changed {sorted(changed)} of a trial"


@needs_ray
def test_the_baseline_trial_runs_all_the_recipes_epochs_not_the_profiles_budget(tune_profile, monkeypatch, tmp_path) -> None:
    settings = recipe_settings(tune_profile, "baseline")[1]
    assert train.epoch_budget(tune_profile, settings) < settings["max_epochs"] == 80  # the course's profile: a budget of 20
    assert received_by_train(tune_profile, course_tune.baseline_config(), monkeypatch, tmp_path)["max_epochs"] == 80
    assert received_by_train(tune_profile, {"max_epochs": 3}, monkeypatch, tmp_path)["max_epochs"] == 3


# --- with a local Ray ----------------------------------------------------------------------------


@needs_ray
def test_the_stopper_is_the_baseline_plateau_rule(tune_profile) -> None:
    stopper = course_tune.plateau_stopper(tune_profile)
    assert (stopper._metric, stopper._std, stopper._num_results, stopper._grace_period) == ("stop_metric", 0.001, 10, 60)


@needs_ray
def test_a_local_instance_talks_over_the_loopback_only(local_ray) -> None:
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


@needs_ray
def test_trials_report_every_epoch_checkpoint_their_run_and_stop_on_the_plateau_rule(tune_profile, local_ray, tmp_path) -> None:
    """Two trials of at most 3 epochs; a plateau rule that fires after 2 results stops both after epoch 1."""
    from ray import tune
    from ray.tune.stopper import TrialPlateauStopper

    space = {"recipe": "baseline", "lr": tune.grid_search([1e-3, 3e-3]), "batch_size": 4, "max_epochs": 3}
    stopper = TrialPlateauStopper("stop_metric", std=1e9, num_results=2, grace_period=2)
    results = course_tune.make_tuner(tune_profile, space, stopper=stopper, storage_path=tmp_path, name="two").fit()
    assert len(results) == 2 and not results.errors
    for result in results:
        curve = result.metrics_dataframe
        assert curve["epoch"].tolist() == [0, 1]  # stopped by Tune before the trainer's own max_epochs
        assert (curve["stop_metric"] == curve["val_loss"]).all() and curve["val_t2a_map10"].between(0, 1).all()
        with result.checkpoint.as_directory() as saved:  # the checkpoint is the trainer's run folder, as of epoch 1
            last = torch.load(Path(saved) / "last.pt", map_location="cpu", weights_only=False)
            assert (Path(saved) / "best.pt").is_file()
        assert last["epoch"] == 1 and last["identity"]["settings"]["lr"] == result.config["lr"]
        assert [row["val_loss"] for row in last["history"]] == pytest.approx(curve["val_loss"].tolist())
    table = course_tune.results_table(results).set_index("trial")
    assert (table["epochs"] == 1).all() and (table["status"] == "ok").all(), "a trial Tune's stopper ended is finished"
    for result in results:  # each row holds its own trial's values and best epoch
        row = table.loc[course_tune.trial_id(result)]
        assert row["lr"] == result.config["lr"]
        assert row["best_val_map10"] == result.metrics_dataframe["val_t2a_map10"].max()
        assert row["best_val_loss"] == result.metrics_dataframe["val_loss"].min()


def flaky_trial(config: dict, cfg) -> None:
    """course_lib.tune.trial, made to crash at its third report the first time it runs (a marker file remembers)."""
    from ray import tune

    marker = Path(config["marker"])
    config = {key: value for key, value in config.items() if key != "marker"}
    original, reports = tune.report, []
    if not marker.exists():
        marker.touch()

        def report(*args, **kwargs):
            if len(reports) == 2:
                raise RuntimeError("simulated crash in epoch 2")
            reports.append(args)
            original(*args, **kwargs)

        tune.report = report
    try:
        course_tune.trial(config, cfg)
    finally:
        tune.report = original


@needs_ray
def test_a_failed_trial_resumes_from_its_last_checkpoint(tune_profile, local_ray, tmp_path) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    space = {"recipe": "baseline", "lr": 1e-3, "batch_size": 4, "max_epochs": 3, "marker": str(tmp_path / "crashed")}
    first = course_tune.make_tuner(tune_profile, space, storage_path=tmp_path, name="flaky", trainable=flaky_trial).fit()
    assert first.errors and "simulated crash" in str(first.errors[0])
    assert first[0].metrics_dataframe["epoch"].tolist() == [0, 1]

    results = course_tune.resume(tmp_path / "flaky", tune_profile, trainable=flaky_trial).fit()
    assert not results.errors
    curve = results[0].metrics_dataframe
    assert curve["epoch"].tolist() == [0, 1, 2, 3]  # went on after epoch 1; a restart would have repeated 0 and 1
    with results[0].checkpoint.as_directory() as saved:
        history = pd.read_csv(Path(saved) / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history["val_loss"].tolist() == pytest.approx(curve["val_loss"].tolist())


def interrupting_trial(config: dict, cfg) -> None:
    """course_lib.tune.trial that sends the driver a Ctrl-C (SIGINT) after its first report, then waits to be stopped;
    only the first time it runs (a marker file remembers)."""
    import time

    from ray import tune

    marker, driver = Path(config["marker"]), int(config["driver"])
    config = {key: value for key, value in config.items() if key not in ("marker", "driver")}
    original = tune.report

    def report(*args, **kwargs):
        original(*args, **kwargs)
        if not marker.exists():
            marker.touch()
            os.kill(driver, signal.SIGINT)
            time.sleep(120)  # Tune stops the trial long before

    tune.report = report
    try:
        course_tune.trial(config, cfg)
    finally:
        tune.report = original


@needs_ray
def test_ctrl_c_to_the_driver_reports_interrupted_and_the_search_resumes(tune_profile, local_ray, tmp_path, capsys) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    space = {"recipe": "baseline", "batch_size": 4, "max_epochs": 2, "marker": str(tmp_path / "sent"), "driver": os.getpid()}
    search = course_tune.make_tuner(tune_profile, space, storage_path=tmp_path, name="stopped", trainable=interrupting_trial)
    results = search.fit()  # Tune's own SIGINT handler ends the round: fit returns
    said = capsys.readouterr().out
    assert (tmp_path / "sent").exists()
    assert "The search was interrupted: 1 of 1 trials did not finish" in said
    assert f"course_tune.resume({str(tmp_path / 'stopped')!r}, cfg).fit()" in said
    assert course_tune.results_table(results)["status"].tolist() == ["interrupted"]

    resumed = course_tune.resume(tmp_path / "stopped", tune_profile, trainable=interrupting_trial).fit()
    assert "interrupted" not in capsys.readouterr().out
    table = course_tune.results_table(resumed)
    assert table["status"].tolist() == ["ok"] and table["epochs"].tolist() == [2]
    again = course_tune.resume(tmp_path / "stopped", tune_profile, trainable=interrupting_trial).fit()  # nothing left to run
    assert "interrupted" not in capsys.readouterr().out and course_tune.results_table(again)["status"].tolist() == ["ok"]
