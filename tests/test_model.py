"""course_lib.model: the dual encoder's names, shapes and unit outputs; clip and caption embedding; loading and refusing."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tiny import write_tiny_profile, write_tiny_split

from course_lib import metrics
from course_lib.checkpoints import CheckpointError, save_checkpoint
from course_lib.cnn14 import CNN14Encoder
from course_lib.model import (
    DualEncoder,
    best_checkpoint_path,
    embed_captions,
    embed_clips,
    evaluate_text_to_audio,
    load_trained_model,
)


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(CNN14Encoder(300, 0.125), text_dim=16).eval()


def test_parameter_names_keep_the_baseline_prefixes(model: DualEncoder) -> None:
    keys = list(model.state_dict())
    assert all(key.startswith(("audio_enc.", "text_enc.")) for key in keys)
    assert {"text_enc.fc.weight", "text_enc.fc.bias", "audio_enc.fc2.weight", "audio_enc.cnn.0.weight"} <= set(keys)
    assert model.text_enc.fc.weight.shape == (300, 16)
    assert torch.equal(model.text_enc.fc.bias, torch.zeros(300))


def test_both_branches_give_unit_rows_and_forward_returns_both(model: DualEncoder) -> None:
    audio, text = torch.randn(3, 80, 64) - 10, torch.randn(3, 16)
    audio_emb, text_emb = model(audio, text)
    assert audio_emb.shape == text_emb.shape == (3, 300)
    assert torch.allclose(audio_emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text_emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text_emb, model.text_branch(text))


def test_a_baseline_style_checkpoint_loads_apart_from_the_sbert_table(model: DualEncoder) -> None:
    state = {**model.state_dict(), "text_enc.embedding.weight": torch.zeros(5, 16)}
    fresh = DualEncoder(CNN14Encoder(300, 0.125), text_dim=16)
    result = fresh.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["text_enc.embedding.weight"]


def test_embed_clips_matches_one_clip_at_a_time_and_keeps_the_order(tmp_path: Path, model: DualEncoder) -> None:
    split = write_tiny_split(tmp_path, "val", clips=5, frames=(70, 90))  # several lengths: none is padded
    fids = list(split.clip_fids)[::-1]
    together = embed_clips(model, split.h5_path, fids, batch_size=2)
    alone = np.concatenate([embed_clips(model, split.h5_path, [fid], batch_size=1) for fid in fids])
    assert together.shape == (5, 300)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    with pytest.raises(KeyError, match="missing"):
        embed_clips(model, split.h5_path, ["missing"])


def test_embed_captions_is_the_text_branch(model: DualEncoder) -> None:
    vectors = np.random.default_rng(0).normal(size=(7, 16)).astype(np.float32)
    out = embed_captions(model, vectors, batch_size=3)
    np.testing.assert_allclose(out, model.text_branch(torch.from_numpy(vectors)).detach().numpy(), atol=1e-6)


def test_loading_a_missing_checkpoint_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ensure_trained"):
        load_trained_model(tmp_path / "best.pt")


def test_a_checkpoint_that_does_not_fit_its_identity_is_refused_before_taking_memory(tmp_path: Path, model: DualEncoder) -> None:
    """An identity naming a CNN14 of width 1000 (a 2-million-channel network): compared on the meta device, refused."""
    identity = {"out_dim": 300, "width": 1000.0, "text_dim": 16, "pad_value": 0.0}
    path = save_checkpoint({"model": model.state_dict(), "identity": identity}, tmp_path / "best.pt")
    wanted = r"does not fit the model its identity describes: audio_enc\.cnn\.0\.weight: \(8, 1, 3, 3\) in the file, \(64000, "
    with pytest.raises(CheckpointError, match=wanted):
        load_trained_model(path)
    fitting = save_checkpoint({"model": model.state_dict(), "identity": {**identity, "width": 0.125}}, tmp_path / "ok.pt")
    loaded = load_trained_model(fitting)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in loaded.state_dict().items())


def test_with_a_config_a_checkpoint_of_another_setup_is_refused(tmp_path: Path) -> None:
    """The profile's caption vectors are 16-d: a model with a 32-d text side would fail at the first search."""
    cfg = write_tiny_profile(tmp_path)
    torch.manual_seed(0)
    foreign = DualEncoder(CNN14Encoder(300, 0.125), text_dim=32)
    identity = {"out_dim": 300, "width": 0.125, "text_dim": 32, "pad_value": 0.0, "text_model": cfg.settings["text_model"]}
    path = save_checkpoint({"model": foreign.state_dict(), "identity": identity}, best_checkpoint_path(cfg))
    with pytest.raises(CheckpointError, match=f"{path} was made for another setup.*\n  text_dim: checkpoint 32, now 16"):
        load_trained_model(cfg)
    assert load_trained_model(path).text_enc.fc.in_features == 32  # by its path alone, it is what it says it is


def test_evaluate_text_to_audio_scores_every_caption_against_each_whole_clip(tmp_path: Path) -> None:
    split = write_tiny_split(tmp_path, "val", clips=5, frames=(70, 90))
    torch.manual_seed(0)
    model = DualEncoder(CNN14Encoder(300, 0.125), text_dim=16).eval()
    clip_fids = list(split.clip_fids)
    with h5py.File(split.h5_path, "r") as h5, torch.no_grad():  # one clip a forward pass, nothing padded
        clips = np.concatenate([model.audio_branch(torch.from_numpy(h5[fid][()])[None]).numpy() for fid in clip_fids])
        captions = model.text_branch(torch.from_numpy(split.vectors)).numpy()
    expected = metrics.text_to_audio(captions @ clips.T, split.fids, clip_fids)
    got = evaluate_text_to_audio(model, split)
    assert len(got.ranks) == len(split.fids)
    assert np.array_equal(got.ranks, expected.ranks) and got.means == pytest.approx(expected.means)
