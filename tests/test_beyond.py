"""Notebook 09's options: each changes what it claims and nothing else; the baseline stays the published recipe.

The learning checks with the options on are in tests/test_learning.py (the options that read cached caption vectors,
which share the trained tiny profile) and tests/test_learning_finetuned.py (the fine-tuned text encoder).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import tiny_run

from course_lib import beyond, train
from course_lib.augment import spec_augment
from course_lib.config import BASELINE_YAML, ConfigError, load_config, read_yaml
from course_lib.data import Collate, reseed
from course_lib.loss import MIN_TEMPERATURE, Temperature, distillation_targets, infonce_loss, soft_infonce_loss
from course_lib.model import ensemble_text_to_audio, evaluate_text_to_audio
from course_lib.train import OPTIONS, fit, options_on, read_history, recipe_settings, recipe_with


def unit(rows: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --- the baseline recipe keeps every option off -------------------------------------------------------------------


def test_the_baseline_recipe_has_every_option_off_and_its_run_identity_does_not_see_them(tmp_path) -> None:
    recipe = read_yaml(BASELINE_YAML)["training"]["baseline"]
    assert set(OPTIONS) <= set(recipe) and options_on(recipe) == []
    assert {key: recipe[key] for key in OPTIONS} == OPTIONS  # train.OPTIONS is baseline.yaml's "off"
    cfg = load_config(data_root=tmp_path, quick=False)
    _, with_keys = recipe_settings(cfg)
    without = {key: value for key, value in with_keys.items() if key not in OPTIONS}
    model, train_split, *_ = tiny_run(tmp_path)
    identity = train._profile_identity
    assert identity(cfg, "baseline", with_keys, 0, train_split) == identity(cfg, "baseline", without, 0, train_split)
    _, changed = recipe_with(cfg, {"learn_temperature": True})
    assert identity(cfg, "baseline", changed.training["baseline"], 0, train_split) != identity(cfg, "baseline", without, 0,
                                                                                           train_split)


def test_recipe_with_merges_nested_settings_and_refuses_unknown_or_impossible_ones(tmp_path) -> None:
    cfg = load_config(data_root=tmp_path, quick=False)
    name, changed = recipe_with(cfg, {"text_finetune": {"layers": 2}, "lr": 3e-4}, name="ft")
    assert name == "ft" and changed.training["ft"]["text_finetune"] == {"layers": 2, "lr": OPTIONS["text_finetune"]["lr"]}
    assert changed.training["ft"]["lr"] == 3e-4 and cfg.training["baseline"]["lr"] == 1e-3  # the profile is left alone
    with pytest.raises(ConfigError, match="learn_temprature"):
        recipe_with(cfg, {"learn_temprature": True})
    with pytest.raises(ConfigError, match=r"distill\.weight is 2"):
        recipe_with(cfg, {"distill": {"teacher": "baseline", "weight": 2}})
    with pytest.raises(ConfigError, match=r"spec_augment\.time_masks is -1"):
        recipe_with(cfg, {"spec_augment": {"time_masks": -1}})


def test_options_that_cannot_go_together_are_refused_before_any_training(tmp_path) -> None:
    cfg = load_config(data_root=tmp_path, quick=False)
    name, both = recipe_with(cfg, {"text_finetune": {"layers": 1}, "distill": {"teacher": "baseline"}}, name="both")
    with pytest.raises(ConfigError, match="text_finetune and distill"):
        train.train(both, name)


# --- a learned temperature --------------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_the_temperature_receives_gradients_only_when_learnable(learnable) -> None:
    temperature = Temperature(0.07, learnable=learnable)
    assert math.isclose(temperature().item(), 0.07, rel_tol=1e-6)
    audio, text = unit(6).requires_grad_(), unit(6, seed=1)
    infonce_loss(audio, text, torch.tensor([0, 0, 1, 2, 3, 4]), temperature()).backward()
    assert audio.grad is not None  # the embeddings learn either way
    if learnable:
        assert temperature.log_tau.grad is not None and temperature.log_tau.grad.abs().item() > 0
    else:
        assert temperature.log_tau.grad is None and not temperature.log_tau.requires_grad


def test_a_learned_temperature_stops_at_its_lower_bound() -> None:
    assert Temperature(0.001, learnable=True)().item() == pytest.approx(MIN_TEMPERATURE)


@pytest.mark.parametrize("learnable", [False, True])
def test_training_moves_the_temperature_only_when_it_is_learnable_and_saves_it(tmp_path, learnable) -> None:
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path)
    recipe = {**recipe, "max_epochs": 2, "learn_temperature": learnable, "lr": 0.01}
    fit(model, train_split, val_split, recipe, tmp_path / "run", identity, verbose=False)
    temperatures = read_history(tmp_path / "run")["temperature"]
    assert temperatures.iloc[0] == pytest.approx(0.07)
    assert bool(abs(temperatures.iloc[-1] - 0.07) > 1e-3) == learnable, temperatures.tolist()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["temperature"]["log_tau"]
    assert saved.exp().item() == pytest.approx(temperatures.iloc[-1], rel=1e-5)


# --- SpecAugment --------------------------------------------------------------------------------------------------


def test_spec_augment_masks_stretches_and_bands_with_the_clip_mean_and_is_reproducible() -> None:
    log_mel = torch.randn(200, 64, generator=torch.Generator().manual_seed(0)) - 20
    settings = {"time_masks": 2, "time_width": 30, "freq_masks": 2, "freq_width": 8}
    masked = spec_augment(log_mel, **settings, generator=torch.Generator().manual_seed(1))
    again = spec_augment(log_mel, **settings, generator=torch.Generator().manual_seed(1))
    assert torch.equal(masked, again) and masked.shape == log_mel.shape and not torch.equal(masked, log_mel)
    changed = masked != log_mel
    assert torch.allclose(masked[changed], log_mel.mean().expand(int(changed.sum())))
    stretches, bands = changed.all(dim=1), changed.all(dim=0)  # masked frames (every bin), masked bins (every frame)
    assert 0 < stretches.sum() <= 2 * 30 and 0 < bands.sum() <= 2 * 8
    assert torch.equal(changed, stretches[:, None] | bands[None, :])  # nothing masked outside them
    untouched = spec_augment(log_mel, 0, 30, 0, 8)
    assert torch.equal(untouched, log_mel)


def test_masks_change_training_batches_and_never_validation(tmp_path) -> None:
    results = {}
    for masks in (0, 3):
        model, train_split, val_split, recipe, identity = tiny_run(tmp_path / str(masks))
        recipe = {**recipe, "max_epochs": 1,
                  "spec_augment": {"time_masks": masks, "time_width": 20, "freq_masks": masks, "freq_width": 8}}
        fit(model, train_split, val_split, recipe, tmp_path / str(masks) / "run", identity, verbose=False)
        results[masks] = read_history(tmp_path / str(masks) / "run")
    # Epoch 0 measures the same untrained model on untouched validation clips; epoch 1 trained on masked batches.
    assert results[0]["val_loss"].iloc[0] == results[3]["val_loss"].iloc[0]
    assert results[0]["train_loss"].iloc[1] != results[3]["train_loss"].iloc[1]
    items = [(torch.zeros(80, 64) + i, torch.ones(4), i) for i in range(3)]
    plain, masked = Collate(None, 0.0), Collate(None, 0.0, {"time_masks": 2, "time_width": 10, "freq_masks": 0,
                                                              "freq_width": 8})
    for collate in (plain, masked):
        collate.draw_key = (0, 1)
    ramp = [(torch.arange(80.0)[:, None].expand(80, 64) + i, torch.ones(4), i) for i in range(3)]
    assert torch.equal(plain(items)[0], masked(items)[0])  # a constant clip's mean is the clip: masks change nothing
    assert not torch.equal(plain(ramp)[0], masked(ramp)[0])


# --- self-distillation ----------------------------------------------------------------------------------------


def test_distillation_targets_sum_to_one_and_are_the_matches_when_their_weight_is_0() -> None:
    clip_ids = torch.tensor([0, 0, 1, 2, 2, 3])
    teacher = unit(6) @ unit(6, seed=1).T
    for weight in (0.0, 0.3, 1.0):
        for targets in distillation_targets(teacher, clip_ids, weight, 0.07):
            assert torch.allclose(targets.sum(dim=1), torch.ones(6))
            assert (targets[train_mask(clip_ids)] == 0).all()  # items of the same clip stay out, as in infonce_loss
    t2a, a2t = distillation_targets(teacher, clip_ids, 0.0, 0.07)
    assert torch.equal(t2a, torch.eye(6)) and torch.equal(a2t, torch.eye(6))
    audio, text = unit(6, seed=2), unit(6, seed=3)
    assert torch.allclose(soft_infonce_loss(audio, text, clip_ids, (t2a, a2t), 0.07), infonce_loss(audio, text, clip_ids))
    mixed = distillation_targets(teacher, clip_ids, 0.5, 0.07)
    assert not torch.allclose(soft_infonce_loss(audio, text, clip_ids, mixed, 0.07), infonce_loss(audio, text, clip_ids))


def train_mask(clip_ids: torch.Tensor) -> torch.Tensor:
    same = clip_ids[:, None] == clip_ids[None, :]
    return same & ~torch.eye(len(clip_ids), dtype=torch.bool)


# --- the ensemble -----------------------------------------------------------------------------------------------


def test_an_ensemble_of_a_model_with_itself_scores_as_the_model(tmp_path) -> None:
    model, _, val_split, *_ = tiny_run(tmp_path)  # any fixed model will do: the rule is about score matrices
    model.eval()
    alone, doubled = evaluate_text_to_audio(model, val_split), ensemble_text_to_audio([model, model], val_split)
    for metric, values in alone.per_query.items():
        np.testing.assert_allclose(doubled.per_query[metric], values)
    torch.manual_seed(5)
    other = type(model)(type(model.audio_enc)(300, 0.125), model.text_enc.fc.in_features).eval()
    mixed = ensemble_text_to_audio([model, other], val_split)
    assert not np.allclose(mixed.ranks, alone.ranks)  # another model changes the ranking
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_text_to_audio([], val_split)


# --- caption augmentation in training -----------------------------------------------------------------------------


def test_extra_captions_replace_a_training_caption_now_and_then_and_only_in_training(tmp_path) -> None:
    from course_lib.data import make_dataset

    _, train_split, *_ = tiny_run(tmp_path)
    dataset = make_dataset(train_split, "caption", preload=True)
    marker = np.full((1, train_split.vectors.shape[1]), 7.0, dtype=np.float32)
    dataset.extra_vectors = {str(fid): marker for fid in train_split.clip_fids}
    dataset.extra_probability = 0.5
    reseed(dataset, Collate(), 0, 1)
    swapped = [bool((dataset[i][1] == 7.0).all()) for i in range(len(dataset))]
    assert 0 < sum(swapped) < len(swapped)  # about half
    again = [bool((dataset[i][1] == 7.0).all()) for i in range(len(dataset))]
    assert swapped == again  # keyed to (seed, epoch, item)
    unchanged = [i for i, was in enumerate(swapped) if not was]
    assert all(torch.equal(dataset[i][1], torch.from_numpy(train_split.vectors[i])) for i in unchanged)


def test_the_comparison_ideas_are_recipes_the_course_accepts(tmp_path) -> None:
    cfg = load_config(data_root=tmp_path, quick=False)
    for idea, changes in beyond.IDEAS.items():
        _, changed = recipe_with(cfg, changes, name="x")
        assert set(options_on(changed.training["x"])) == set(changes), idea


# --- runs and teachers as the run identity sees them ---------------------------------------------------------


def test_a_run_saved_before_the_temperature_option_existed_still_resumes(tmp_path) -> None:
    from course_lib.checkpoints import load_checkpoint, save_checkpoint

    model, train_split, val_split, recipe, identity = tiny_run(tmp_path)
    fit(model, train_split, val_split, {**recipe, "max_epochs": 1}, tmp_path / "run", identity, verbose=False)
    old = {key: value for key, value in load_checkpoint(tmp_path / "run" / "last.pt").items()
           if key not in ("temperature", "format", "fingerprint")}
    save_checkpoint(old, tmp_path / "run" / "last.pt")  # as the course wrote it before: no "temperature"
    model, *_ = tiny_run(tmp_path)
    fit(model, train_split, val_split, {**recipe, "max_epochs": 2}, tmp_path / "run", identity, verbose=False)
    assert read_history(tmp_path / "run")["epoch"].tolist() == [0, 1, 2]


def test_a_teacher_counts_by_its_checkpoint_not_by_where_it_lies(tmp_path) -> None:
    from course_lib.checkpoints import save_checkpoint

    cfg = load_config(data_root=tmp_path, quick=False)
    first = save_checkpoint({"model": {"w": torch.ones(2)}, "identity": {"recipe": "t"}}, tmp_path / "a" / "best.pt")
    (tmp_path / "b").mkdir()
    copy = tmp_path / "b" / "best.pt"
    copy.write_bytes(first.read_bytes())
    other = save_checkpoint({"model": {"w": torch.zeros(2)}, "identity": {"recipe": "t"}}, tmp_path / "c" / "best.pt")
    seen = [train._with_teacher_fingerprint(cfg, {"distill": {"teacher": str(path)}})["distill"]["teacher"]
            for path in (first, copy, other, tmp_path / "a")]
    assert seen[0] == seen[1] == seen[3] != seen[2] and seen[0].startswith("fingerprint ")
    with pytest.raises(ConfigError, match="does not exist"):
        train._with_teacher_fingerprint(cfg, {"distill": {"teacher": str(tmp_path / "missing.pt")}})
    assert train._teacher_path(cfg, "baseline") == cfg.models_dir / "dual_encoder" / "baseline" / "best.pt"


def test_the_learned_temperature_gets_no_weight_decay(tmp_path) -> None:
    model, *_ = tiny_run(tmp_path)
    groups = train._parameter_groups(model, Temperature(0.07, learnable=True), {"weight_decay": 0.1})
    assert [group.get("weight_decay") for group in groups] == [None, 0.0]


def test_the_comparison_refuses_an_idea_the_profile_cannot_train_before_any_run(tmp_path) -> None:
    cfg = load_config("clotho", data_root=tmp_path, quick=False)
    with pytest.raises(ConfigError, match="Idea 'caption paraphrases'.*grammar"):
        beyond.compare(cfg, ideas={"caption paraphrases": beyond.IDEAS["caption paraphrases"]})
    assert not cfg.models_dir.exists()
