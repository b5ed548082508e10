"""course_lib.released: the baseline's file layouts, built from random tensors, load into the course's model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from course_lib import released
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import load_config
from course_lib.released import (
    load_released_audio_encoder,
    load_released_checkpoint,
    random_released_checkpoint,
    table_rows,
)

WIDTH, TEXT_DIM = 0.125, 24


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "checkpoint"
    torch.save(random_released_checkpoint(width=WIDTH, text_dim=TEXT_DIM, captions=12, seed=3), path)
    return path


def test_bare_encoder_file_loads_with_its_own_width(tmp_path):
    encoder = CNN14Encoder(out_dim=300, width=WIDTH)
    path = tmp_path / "audio_encoder.pth"
    torch.save(encoder.state_dict(), path)
    loaded = load_released_audio_encoder(path)
    assert (loaded.width, loaded.out_dim, loaded.training) == (WIDTH, 300, False)
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    log_mels = torch.randn(2, 120, 64)
    torch.testing.assert_close(loaded(log_mels), encoder.eval()(log_mels))


def test_training_checkpoint_becomes_a_dual_encoder(checkpoint_file):
    state, _ = torch.load(checkpoint_file, weights_only=True)
    baseline = load_released_checkpoint(checkpoint_file)
    model = baseline.model
    assert not model.training and model.pad_value == 0.0
    assert torch.equal(model.text_enc.fc.weight, state["text_enc.fc.weight"])
    assert torch.equal(model.audio_enc.fc2.weight, state["audio_enc.fc2.weight"])
    assert baseline.caption_table.shape == (13, TEXT_DIM)
    vectors = torch.randn(4, TEXT_DIM)
    expected = torch.nn.functional.normalize(vectors @ state["text_enc.fc.weight"].T + state["text_enc.fc.bias"], dim=-1)
    torch.testing.assert_close(model.text_branch(vectors), expected)


def test_the_audio_encoder_can_be_taken_out_of_a_training_checkpoint(checkpoint_file):
    encoder = load_released_audio_encoder(torch.load(checkpoint_file, weights_only=True)[0])
    assert encoder.width == WIDTH


def test_wrong_files_get_clear_errors(tmp_path, checkpoint_file):
    optimizer_only = tmp_path / "optimizer.pt"
    torch.save(torch.load(checkpoint_file, weights_only=True)[1], optimizer_only)
    with pytest.raises(ValueError, match="optimizer state_dict"):
        load_released_checkpoint(optimizer_only)
    bare = tmp_path / "audio_encoder.pth"
    torch.save(CNN14Encoder(out_dim=300, width=WIDTH).state_dict(), bare)
    with pytest.raises(ValueError, match="load_released_audio_encoder"):
        load_released_checkpoint(bare)
    with pytest.raises(ValueError, match="not a CNN14Encoder"):
        load_released_audio_encoder(optimizer_only)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_released_checkpoint(text)
    state, optimizer = random_released_checkpoint(width=WIDTH, text_dim=TEXT_DIM, captions=3)
    state["text_enc.fc.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="text_enc.fc.bias"):
        load_released_checkpoint((state, optimizer))
    state, _ = random_released_checkpoint(width=WIDTH, text_dim=TEXT_DIM, captions=3)
    state["text_enc.fc.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        load_released_checkpoint((state, None))


def test_table_rows_follow_the_baselines_numbering():
    tables = {"development": pd.DataFrame({"tid": list("abcd")}), "validation": pd.DataFrame({"tid": list("ef")}),
              "evaluation": pd.DataFrame({"tid": list("ghi")})}
    assert table_rows(tables, "development").tolist() == [1, 2, 3, 4]
    assert table_rows(tables, "evaluation").tolist() == [7, 8, 9]  # after the padding row, 4 + 2 captions
    with pytest.raises(ValueError, match="missing"):
        table_rows({"evaluation": tables["evaluation"]}, "evaluation")


def test_instructions_name_the_record_and_the_folder(tmp_path):
    cfg = load_config("synthetic", data_root=tmp_path)
    message = released.how_to_get_released_files(cfg)
    assert "7752975" in message and str(released.released_paths(cfg)["folder"]) in message
    assert "md5" in message


def test_evaluate_released_on_a_tiny_split(tmp_path, monkeypatch):
    """End to end on stand-ins: log-mels and caption vectors for 3 clips, a random released model."""
    import h5py

    cfg = load_config("synthetic", data_root=tmp_path)
    rng = np.random.default_rng(0)
    fids = ["f1", "f2", "f3"]
    split_tables = {}
    for split, n in (("development", 2), ("validation", 1), ("evaluation", 3)):
        split_fids = fids[:n]
        split_tables[split] = pd.DataFrame({"tid": [f"{split}-{f}-{i}" for f in split_fids for i in range(5)],
                                            "fid": [f for f in split_fids for _ in range(5)]})
    h5_path = tmp_path / "evaluation.hdf5"
    with h5py.File(h5_path, "w") as h5:
        for fid in fids:
            h5[fid] = rng.normal(size=(100 + 20 * fids.index(fid), 64)).astype(np.float32)
    all_tids = np.concatenate([t["tid"].to_numpy() for t in split_tables.values()])
    vectors = rng.normal(size=(len(all_tids), TEXT_DIM)).astype(np.float32)
    monkeypatch.setattr(released.clotho, "load_caption_table", lambda cfg, split: split_tables[split])
    monkeypatch.setattr(released.features, "features_path", lambda cfg, split: h5_path)
    monkeypatch.setattr(released.text, "load_caption_embeddings", lambda cfg: (all_tids, vectors))
    baseline = load_released_checkpoint(random_released_checkpoint(width=WIDTH, text_dim=TEXT_DIM, captions=len(all_tids)))
    result = released.evaluate_released(cfg, baseline)
    assert result["scores"].shape == (15, 3) and result["text_to_audio"].means["R@10"] == 1.0  # 3 clips: all in the top 10
    from_table = released.evaluate_released(cfg, baseline, text_source="table")
    assert from_table["scores"].shape == (15, 3)
    small = load_released_checkpoint(random_released_checkpoint(width=WIDTH, text_dim=TEXT_DIM + 1, captions=2))
    with pytest.raises(ValueError, match="caption vectors"):
        released.evaluate_released(cfg, small)
    with pytest.raises(ValueError, match="29,646"):
        released.evaluate_released(cfg, small, text_source="table")
