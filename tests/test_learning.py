"""Whether the model learns, proved once (the notebooks run with the quick setting and prove nothing about it).

The shared trained profile (tests/conftest.py: 48 development clips of 2-3 s, 6 epochs of the baseline
recipe at batch 16) must learn: its validation loss falls below the untrained model's (epoch 0), and its
evaluation mAP@10 beats the untrained model's by a clear margin. Then Made With ML's behavioural tests:
a query for a bell ranks bell clips above rain clips (direction), and the case of a query or an added
article does not change the top clip (invariance).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from course_lib.cnn14 import encoder_from_config
from course_lib.config import Config
from course_lib.data import load_split
from course_lib.model import DualEncoder, best_checkpoint_path, evaluate_text_to_audio, load_trained_model
from course_lib.search import SearchEngine
from course_lib.train import read_history


def evaluation_map10(model: DualEncoder, cfg: Config) -> float:
    return evaluate_text_to_audio(model, load_split(cfg, "evaluation")).means["mAP@10"]


def clips_with(cfg: Config, split: str, keyword: str) -> set[str]:
    """The split's clips whose scene holds an event with this keyword (the generator's metadata says so)."""
    metadata = pd.read_csv(cfg.dataset_dir / f"clotho_metadata_{split}.csv", encoding="iso-8859-1")
    return {name for name, words in zip(metadata["file_name"], metadata["keywords"], strict=True)
            if keyword in str(words).split(";")}


@pytest.fixture(scope="module")
def engine(trained_tiny: Config) -> SearchEngine:
    return SearchEngine.from_config(trained_tiny, device="cpu")


def test_training_lowers_the_validation_loss_and_lifts_map10_well_above_the_untrained_model(trained_tiny) -> None:
    history = read_history(best_checkpoint_path(trained_tiny).parent)
    untrained_loss, trained_losses = history["val_loss"].iloc[0], history["val_loss"].iloc[1:]
    assert history["epoch"].tolist() == list(range(7))
    assert trained_losses.min() < untrained_loss - 0.2, history[["epoch", "val_loss"]]
    torch.manual_seed(0)  # the same initialisation the run started from (train.train seeds before building the model)
    untrained = DualEncoder(encoder_from_config(trained_tiny), text_dim=load_split(trained_tiny, "evaluation").vectors.shape[1])
    before = evaluation_map10(untrained.eval(), trained_tiny)
    after = evaluation_map10(load_trained_model(trained_tiny), trained_tiny)
    assert after > before + 0.1, (before, after)


def test_a_bell_query_ranks_bell_clips_above_rain_clips(trained_tiny, engine) -> None:
    bells = clips_with(trained_tiny, "evaluation", "bell")
    rain = clips_with(trained_tiny, "evaluation", "rain") - bells
    assert bells and rain, "the evaluation split must hold both kinds of clip"
    for query, wanted, other in [("a bell rings", bells, rain), ("rain falls", rain, bells)]:
        ranks = {hit.fname: hit.rank for hit in engine.search(query, k=len(engine.index("evaluation").fids)).clips}
        assert np.mean([ranks[name] for name in wanted]) < np.mean([ranks[name] for name in other]), query


@pytest.mark.parametrize("variant", ["A BELL RINGS", "A Bell Rings", "the bell rings", "bell rings"])
def test_case_or_an_article_does_not_change_the_top_clip(engine, variant) -> None:
    assert engine.search(variant, k=1).clips[0].fid == engine.search("a bell rings", k=1).clips[0].fid
