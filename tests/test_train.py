"""course_lib.train: the loop's checkpoints, exact resume after a hard kill, refusals, stopping rules.

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

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import TINY_RECIPE, tiny_run, write_tiny_split

from course_lib import train as train_module
from course_lib.config import BASELINE_YAML, load_config
from course_lib.model import embed_clips, load_trained_model
from course_lib.train import (
    TrainingError,
    autocast_dtype,
    ensure_trained,
    fit,
    pick_device,
    plateau_reached,
    read_history,
    recipe_settings,
)

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


def run_training(tmp_path: Path, run_dir: Path, kill: str = "none") -> int:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(REPO / "tests")), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "data"), str(run_dir), kill], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_after_a_kill_between_and_within_epochs_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """12 clips, clip sampling, batch 4: 3 updates an epoch, 4 epochs. Kill after epoch 2, and at update 8 (epoch 3)."""
    assert run_training(tmp_path, tmp_path / "whole") == 0
    assert run_training(tmp_path, tmp_path / "between", "after-epoch-2") == -signal.SIGKILL
    assert run_training(tmp_path, tmp_path / "within", "at-step-8") == -signal.SIGKILL
    for name in ("between", "within"):
        interrupted = checkpoint(tmp_path / name / "last.pt")
        assert interrupted["epoch"] == 2 and not interrupted["finished"]
        assert run_training(tmp_path, tmp_path / name) == 0
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
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "history", "rng", "fingerprint"} <= set(last)
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
    with pytest.raises(TrainingError, match=named.replace(".", r"\.")):
        fit(model, train_split, val_split, {**recipe, "max_epochs": 2}, tmp_path / "run", other, device="cpu", verbose=False)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 3})
    real_loss, calls = train_module.infonce_loss, []

    def loss_that_breaks(audio, text, clip_ids, temperature):
        loss = real_loss(audio, text, clip_ids, temperature)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) > 4:  # from the second update of epoch 2 on
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module, "infonce_loss", loss_that_breaks)
    with pytest.raises(TrainingError, match="nan in epoch 2.*last.pt"):
        fit(model, train_split, val_split, recipe, tmp_path / "run", identity, device="cpu", verbose=False)
    last = checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


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
    with pytest.raises(ValueError, match="baseline, fast"):
        recipe_settings(cfg, "slow")


def test_plateau_stop_needs_the_grace_period_and_a_flat_tail() -> None:
    rule = {"std": 0.001, "num_results": 10, "grace_period": 60}
    flat = [5.0 - 0.01 * i for i in range(50)] + [4.5] * 10
    assert plateau_reached(flat, rule)
    assert not plateau_reached(flat[:-1], rule)  # 59 results: still in the grace period
    assert not plateau_reached(flat[:-10] + [4.5, 4.49] * 5, rule)  # std 0.005


def test_device_and_precision_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda"), mixed_precision=False) is None


def test_ensure_trained_trains_once_then_reuses(tmp_path: Path, monkeypatch) -> None:
    """A tiny profile on disk (tables, HDF5, embeddings in the stages' formats); ensure_trained trains, then reuses."""
    from course_lib.text_cache import EmbeddingCache, caption_embeddings_path, write_cache

    settings = yaml.safe_load(BASELINE_YAML.read_text(encoding="utf-8"))
    settings["training"]["tiny"] = {**TINY_RECIPE, "max_epochs": 1}
    settings["profiles"]["synthetic"]["training_recipe"] = "tiny"
    (tmp_path / "course.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    monkeypatch.setenv("COURSE_CONFIG", str(tmp_path / "course.yaml"))
    cfg = load_config("synthetic", data_root=tmp_path / "root", yaml_path=tmp_path / "course.yaml")
    splits = {"development": write_tiny_split(cfg.prepared_dir, "development_audio_logmels", clips=8, seed=0),
              "validation": write_tiny_split(cfg.prepared_dir, "validation_audio_logmels", clips=4, seed=1)}
    tids, vectors = [], []
    for split, data in splits.items():
        pd.DataFrame({"tid": data.tids, "fid": data.fids, "fname": data.fids, "raw_text": data.tids, "text": data.tids,
                      "tokens": "[]"}).to_csv(cfg.prepared_dir / f"{split}_text.csv", index=False)
        tids += list(data.tids)
        vectors.append(data.vectors)
    vectors = np.concatenate(vectors)
    write_cache(caption_embeddings_path(cfg), EmbeddingCache(tids, tids, vectors, {"dimension": 16}))
    best = ensure_trained(cfg, verbose=False)
    assert best.is_file() and best.parent.name == "tiny"
    stamp = best.stat().st_mtime_ns
    assert ensure_trained(cfg, verbose=False) == best and best.stat().st_mtime_ns == stamp
    model = load_trained_model(cfg)
    assert not model.training and model.audio_enc.width == 0.125
    fids = list(splits["validation"].clip_fids)
    clips = embed_clips(model, splits["validation"].h5_path, fids, batch_size=3)
    assert clips.shape == (4, 300)
