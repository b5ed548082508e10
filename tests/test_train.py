"""course_lib.train: the loop's checkpoints, exact resume after a hard kill, refusals, stopping rules, validation.

Everything runs on tiny random data (write_tiny_split) with a CNN14 of width 0.125 and a few epochs;
the kill tests start real training processes and end them with SIGKILL between and within epochs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tiny import TINY_RECIPE, tiny_run, write_course_yaml, write_tiny_profile

from course_lib import data as data_module
from course_lib import metrics
from course_lib import train as train_module
from course_lib._gpu_memory import GpuMemoryError
from course_lib.checkpoints import CheckpointError, load_checkpoint, run_identity
from course_lib.config import load_config, resolve_device
from course_lib.data import load_split
from course_lib.features import FeatureExtractionError
from course_lib.model import embed_captions, embed_clips, load_trained_model, run_dir_for
from course_lib.train import (
    Step,
    TrainingError,
    autocast_dtype,
    ensure_trained,
    fit,
    plateau_reached,
    read_history,
    recipe_settings,
    validate,
)

pytestmark = pytest.mark.long(55)  # collected first, so that a test worker starts it at once (conftest.py)
REPO = Path(__file__).resolve().parents[1]
RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from tiny import tiny_run
    from course_lib.train import fit
    folder, run_dir, kill = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    model, train_split, val_split, recipe, identity = tiny_run(folder)
    callback = None
    if kill.startswith("after-epoch-"):  # SIGKILL right after an epoch's checkpoint is written
        epoch = int(kill.split("-")[-1])
        def callback(row, model):
            if row["epoch"] == epoch:
                os.kill(os.getpid(), signal.SIGKILL)
    elif kill.startswith("at-step-"):  # SIGKILL in the middle of an epoch, after some updates
        last_step, original, steps = int(kill.split("-")[-1]), torch.optim.Adam.step, [0]
        def step(self, *args, **kwargs):
            steps[0] += 1
            if steps[0] == last_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)
        torch.optim.Adam.step = step
    fit(model, train_split, val_split, recipe, run_dir, identity, seed=0, device="cpu", callback=callback, verbose=False)
    """
)


def run_trainings(tmp_path: Path, kills: dict[str, str]) -> dict[str, int]:
    """Trains into each run folder named, side by side, a process each on its own copy of the tiny data, killed as
    said ("none": not killed); their exit codes."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(REPO / "tests")), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    running = {}
    for name, kill in kills.items():
        with open(tmp_path / f"{name}.log", "w", encoding="utf-8") as log:
            running[name] = subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{name}-data"), str(tmp_path / name),
                                              kill], env=env, stdout=log, stderr=subprocess.STDOUT)
    codes = {name: process.wait(timeout=300) for name, process in running.items()}
    for name, code in codes.items():
        if code not in (0, -signal.SIGKILL):
            raise AssertionError((tmp_path / f"{name}.log").read_text(encoding="utf-8")[-3000:])
    return codes


def checkpoint(path: Path) -> dict:
    return load_checkpoint(path)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_after_a_kill_between_and_within_epochs_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """12 clips, clip sampling, batch 4: 3 updates an epoch, 4 epochs. Kill after epoch 2, and at update 8 (epoch 3)."""
    killed = -signal.SIGKILL
    assert run_trainings(tmp_path, {"whole": "none", "between": "after-epoch-2", "within": "at-step-8"}) == {
        "whole": 0, "between": killed, "within": killed}
    for name in ("between", "within"):
        interrupted = checkpoint(tmp_path / name / "last.pt")
        assert interrupted["epoch"] == 2 and not interrupted["finished"]
    assert run_trainings(tmp_path, {"between": "none", "within": "none"}) == {"between": 0, "within": 0}
    whole = checkpoint(tmp_path / "whole" / "last.pt")
    assert whole["epoch"] == 4 and whole["finished"]
    for name in ("between", "within"):
        resumed = checkpoint(tmp_path / name / "last.pt")
        assert_same_weights(resumed["model"], whole["model"])
        assert_same_weights(checkpoint(tmp_path / name / "best.pt")["model"], checkpoint(tmp_path / "whole" / "best.pt")["model"])
        assert [row["val_loss"] for row in resumed["history"]] == [row["val_loss"] for row in whole["history"]]
    assert not list((tmp_path / "within").glob(".*.partial"))  # the kill left no half-written file behind


def test_history_best_checkpoint_and_finished_run(tmp_path: Path) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 2})
    rows = []
    best = fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu",
               callback=lambda row, _: rows.append(row), verbose=False)
    history = read_history(tmp_path / "run")
    assert list(history["epoch"]) == [0, 1, 2] and len(rows) == 3
    assert math.isnan(history["train_loss"][0]) and history["train_loss"][1:].notna().all()
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["train_loss"] is None
    assert history["val_t2a_map10"].between(0, 1).all()
    saved = checkpoint(best)
    assert saved["epoch"] == int(history["epoch"][history["val_loss"].idxmin()])
    last = checkpoint(tmp_path / "run" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "history", "rng", "identity", "fingerprint"} <= set(last)
    assert last["finished"]
    # A finished run is not trained again.
    again = fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    assert again == best and len(read_history(tmp_path / "run")) == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [({"width": 0.25}, "width"), ({"text_model": "other-model"}, "text_model"), ({"settings": {"lr": 0.01}}, "settings.lr")],
)
def test_resuming_another_setup_is_refused_naming_what_differs(tmp_path: Path, change: dict, named: str) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 1})
    fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    other = {**identity, **{k: v for k, v in change.items() if k != "settings"}}
    if "settings" in change:
        other["settings"] = {**identity["settings"], **change["settings"]}
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        fit(model, train_split, val_split, {**recipe, "max_epochs": 2}, tmp_path / "run", other, device="cpu", verbose=False)


def test_a_non_finite_loss_stops_naming_the_batch_and_advice_that_works(tmp_path: Path, monkeypatch) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 3})
    real_loss, calls = train_module.infonce_loss, []

    def loss_that_breaks(audio, text, clip_ids, temperature):
        loss = real_loss(audio, text, clip_ids, temperature)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) > 4:  # 3 batches an epoch: from the second batch of epoch 2 on
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module, "infonce_loss", loss_that_breaks)
    with pytest.raises(TrainingError, match=r"nan in epoch 2 \(batch 2 of 3\).*last.pt \(epoch 1\)") as stopped:
        fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    last = checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    # The advice: a lower lr is another setup, refused by the old folder, trained in a new one.
    assert "new run folder" in str(stopped.value)
    monkeypatch.setattr(train_module, "infonce_loss", real_loss)
    lower = {**recipe, "lr": 1e-4}
    lower_identity = run_identity("tiny", lower, 0, 0.125, 300, "random-16d", 16, False, train_split)
    with pytest.raises(CheckpointError, match=r"settings\.lr"):
        fit(model, train_split, val_split, lower, tmp_path / "run", lower_identity, device="cpu", verbose=False)
    fit(model, train_split, val_split, lower, tmp_path / "new", lower_identity, device="cpu", verbose=False)
    assert checkpoint(tmp_path / "new" / "last.pt")["finished"]


def test_non_finite_weights_first_seen_in_validation_stop_with_the_epoch(tmp_path: Path, monkeypatch) -> None:
    """The last update of epoch 1 leaves NaN weights (its loss was finite): validation stops, naming the epoch."""
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 2})
    original, steps = torch.optim.Adam.step, [0]

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == 3:  # the last of epoch 1's three updates
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingError, match="validation of epoch 1.*last.pt \\(epoch 0\\)"):
        fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    assert checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0


def test_nan_in_a_streamed_feature_file_names_the_clip_and_the_file(tmp_path: Path, monkeypatch) -> None:
    """Features read from disk by DataLoader workers (a file too large to preload): the damaged clip is named."""
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 1})
    with h5py.File(train_split.h5_path, "a") as h5:
        values = h5["dev003"][()]
        values[5, 7] = np.nan
        h5["dev003"][...] = values
    monkeypatch.setattr(data_module, "_fits_in_memory", lambda *args, **kwargs: False)
    with pytest.raises(FeatureExtractionError, match=f"'dev003' in {train_split.h5_path}"):
        fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)


def test_preloaded_and_streamed_features_give_the_same_numbers(tmp_path: Path, monkeypatch) -> None:
    """Clip sampling and random crops: with features read by two worker processes, the same seed trains the same model."""
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 2})
    fit(model, train_split, val_split, recipe, tmp_path / "preloaded", identity, device="cpu", verbose=False)
    monkeypatch.setattr(data_module, "_fits_in_memory", lambda *args, **kwargs: False)
    model = tiny_run(tmp_path / "data", recipe)[0]
    fit(model, train_split, val_split, recipe, tmp_path / "streamed", identity, device="cpu", verbose=False)
    preloaded, streamed = checkpoint(tmp_path / "preloaded" / "last.pt"), checkpoint(tmp_path / "streamed" / "last.pt")
    assert [row["train_loss"] for row in streamed["history"]][1:] == [row["train_loss"] for row in preloaded["history"]][1:]
    assert_same_weights(streamed["model"], preloaded["model"])


def test_validation_map_is_evaluations_map_on_whole_clips(tmp_path: Path) -> None:
    """validate embeds each clip once, whole and unpadded (embed_clips), as evaluation does."""
    model, _, val_split, _, _ = tiny_run(tmp_path / "data")
    model.eval()
    step = Step(torch.device("cpu"), 0.07, None, torch.amp.GradScaler("cpu", enabled=False))
    batches = [np.arange(0, 5), np.arange(5, len(val_split.fids))]
    loss, map10 = validate(model, val_split, batches, step)
    clips, captions = list(val_split.clip_fids), embed_captions(model, val_split.vectors)
    audio = embed_clips(model, val_split.h5_path, clips)
    assert map10 == metrics.text_to_audio(metrics.score_matrix(captions, audio), val_split.fids, clips).means["mAP@10"]
    clip_of = np.array([clips.index(fid) for fid in val_split.fids])
    expected = [train_module.infonce_loss(torch.from_numpy(audio[clip_of[rows]]), torch.from_numpy(captions[rows]),
                                          torch.from_numpy(clip_of[rows])).item() for rows in batches]
    assert loss == pytest.approx(np.average(expected, weights=[5, len(val_split.fids) - 5]), rel=1e-6)


def test_raising_max_epochs_continues_a_finished_run(tmp_path: Path) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 1})
    fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    assert checkpoint(tmp_path / "run" / "last.pt")["finished"]
    fit(model, train_split, val_split, {**recipe, "max_epochs": 2}, tmp_path / "run", identity, device="cpu", verbose=False)
    assert list(read_history(tmp_path / "run")["epoch"]) == [0, 1, 2]
    assert checkpoint(tmp_path / "run" / "last.pt")["finished"]


def test_baseline_recipe_mirrors_the_baseline_conf() -> None:
    cfg = load_config()
    name, recipe = recipe_settings(cfg, "baseline")
    conf = cfg.baseline
    assert name == "baseline"
    assert (recipe["sampling"], recipe["crop_frames"], recipe["pad_value"]) == ("caption", None, "zero")
    assert recipe["batch_size"] == conf["param_conf"]["batch_size"] and recipe["max_epochs"] == conf["param_conf"]["num_epoch"]
    adam = conf["AdamOptimizer"]["args"]
    assert recipe["lr"] == adam["lr"] and recipe["weight_decay"] == adam["weight_decay"]
    assert recipe["temperature"] == conf["criteria"]["infonce_loss"]["args"]["temperature"]
    scheduler = conf["ReduceLROnPlateau"]["args"]
    assert recipe["lr_plateau"] == {key: scheduler[key] for key in ("factor", "patience", "threshold", "min_lr")}
    stopper = conf["trial_stopper"]
    assert recipe["plateau_stop"] == {key: stopper[key] for key in ("std", "num_results", "grace_period")}
    assert recipe_settings(cfg)[0] == cfg.settings["training_recipe"]
    with pytest.raises(ValueError, match="Choose one of: baseline"):
        recipe_settings(cfg, "slow")


def test_plateau_stop_needs_the_grace_period_and_a_flat_tail() -> None:
    rule = {"std": 0.001, "num_results": 10, "grace_period": 60}
    flat = [5.0 - 0.01 * i for i in range(50)] + [4.5] * 10
    assert plateau_reached(flat, rule)
    assert not plateau_reached(flat[:-1], rule)  # 59 results: still in the grace period
    assert not plateau_reached(flat[:-10] + [4.5, 4.49] * 5, rule)  # std 0.005


def test_device_and_precision_choice(monkeypatch) -> None:
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"  # CUDA, then Apple's GPU, then the CPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(torch.device("cpu")) == "cpu"
    assert not hasattr(train_module, "pick_device")  # one device rule, in config
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda"), mixed_precision=False) is None


def test_ensure_trained_trains_once_then_reuses(tmp_path: Path, capsys) -> None:
    """A tiny profile on disk (tables, HDF5, embeddings in the stages' formats); ensure_trained trains, then reuses."""
    cfg = write_tiny_profile(tmp_path)
    best = ensure_trained(cfg, verbose=False)
    assert best.is_file() and best.parent.name == "tiny"
    stamp = best.stat().st_mtime_ns
    assert ensure_trained(cfg) == best and best.stat().st_mtime_ns == stamp
    assert "Reusing the trained model" in capsys.readouterr().out
    model = load_trained_model(cfg)
    assert not model.training and model.audio_enc.width == 0.125
    validation = load_split(cfg, "validation")
    assert embed_clips(model, validation.h5_path, list(validation.clip_fids), batch_size=3).shape == (4, 300)


def test_ensure_trained_continues_a_run_asked_for_more_epochs_unless_the_plateau_stopped_it(tmp_path: Path, capsys) -> None:
    cfg = write_tiny_profile(tmp_path)
    ensure_trained(cfg, verbose=False)
    more = write_course_yaml(tmp_path / "more.yaml", {"tiny": {**TINY_RECIPE, "max_epochs": 2}}, "tiny")
    ensure_trained(load_config("synthetic", data_root=cfg.data_root, yaml_path=more), verbose=False)
    assert list(read_history(run_dir_for(cfg))["epoch"]) == [0, 1, 2]
    # A run the plateau rule stopped is done, whatever max_epochs says.
    flat = {**TINY_RECIPE, "max_epochs": 5, "plateau_stop": {"std": 100.0, "num_results": 2, "grace_period": 2}}
    stopped = load_config("synthetic", data_root=cfg.data_root, yaml_path=write_course_yaml(tmp_path / "flat.yaml",
                                                                                            {"flat": flat}, "flat"))
    ensure_trained(stopped, verbose=False)
    assert list(read_history(run_dir_for(stopped))["epoch"]) == [0, 1]
    capsys.readouterr()
    ensure_trained(stopped)
    assert "Reusing the trained model" in capsys.readouterr().out


def test_a_yaml_number_written_1e6_is_a_number(tmp_path: Path) -> None:
    """PyYAML reads 1e6 (no dot, no sign in the exponent) as text; the course reads it as the number it means."""
    path = write_course_yaml(tmp_path / "course.yaml", {"tiny": TINY_RECIPE}, "tiny")
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 1e6").replace("weight_decay: 0.0", "weight_decay: 1e-5"))
    tiny = recipe_settings(load_config("synthetic", data_root=tmp_path / "root", yaml_path=path), "tiny")[1]
    assert tiny["lr"] == 1e6 and isinstance(tiny["lr"], float) and tiny["weight_decay"] == 1e-5


def test_cuda_out_of_memory_in_a_step_names_the_batch_that_fits_and_how_to_set_it(tmp_path: Path, monkeypatch) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 1})
    message = ("CUDA out of memory. Tried to allocate 754.00 MiB. GPU 0 has a total capacity of 14.74 GiB of which "
               "312.00 MiB is free.")

    def forward_that_runs_out(audio, text):  # what a GPU raises when the batch does not fit
        raise torch.cuda.OutOfMemoryError(message)

    monkeypatch.setattr(model, "forward", forward_that_runs_out)
    with pytest.raises(GpuMemoryError, match=r"CUDA ran out of memory in a training step at batch 4.*14\.7 GiB") as stopped:
        fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    assert isinstance(stopped.value.__cause__, torch.cuda.OutOfMemoryError)
    assert "batch" in str(stopped.value).lower() and "cfg.training['baseline']" in str(stopped.value)
