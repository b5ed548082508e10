"""course_lib.model: the dual encoder's names, shapes and unit outputs; clip and caption embedding; loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import write_tiny_split

from course_lib.cnn14 import CNN14Encoder
from course_lib.model import DualEncoder, embed_captions, embed_clips, load_trained_model


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
