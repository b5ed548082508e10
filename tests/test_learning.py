"""Whether the model learns, proved once (the notebooks run with the quick setting and prove nothing about it).

The shared trained profile (tests/conftest.py: 48 development clips of 2-3 s, 6 epochs of the baseline
recipe at batch 16) must learn: its validation loss falls below the untrained model's (epoch 0), and its
evaluation mAP@10 beats the untrained model's by a clear margin. Then Made With ML's behavioural tests:
a query for a bell ranks bell clips above rain clips (direction), and the case of a query or an added
article does not change the top clip (invariance).

With notebook 09's options that read cached caption vectors on (learned temperature, SpecAugment,
paraphrased captions, self-distillation from the shared baseline model), the same training still learns.
The fine-tuned text encoder's run needs no trained model, so it lives in test_learning_finetuned.py, where
another test worker trains it while this one trains the baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny import assert_it_learned

from course_lib import train
from course_lib.config import Config
from course_lib.model import best_checkpoint_path
from course_lib.search import SearchEngine

pytestmark = pytest.mark.long(45)  # collected first, so that a test worker starts it at once (conftest.py)


def clips_with(cfg: Config, split: str, keyword: str) -> set[str]:
    """The split's clips whose scene holds an event with this keyword (the generator's metadata says so)."""
    metadata = pd.read_csv(cfg.dataset_dir / f"clotho_metadata_{split}.csv", encoding="iso-8859-1")
    return {name for name, words in zip(metadata["file_name"], metadata["keywords"], strict=True)
            if keyword in str(words).split(";")}


@pytest.fixture(scope="module")
def engine(trained_tiny: Config) -> SearchEngine:
    return SearchEngine.from_config(trained_tiny, device="cpu")


def test_training_lowers_the_validation_loss_and_lifts_map10_well_above_the_untrained_model(trained_tiny) -> None:
    history = assert_it_learned(best_checkpoint_path(trained_tiny), trained_tiny)
    assert history["epoch"].tolist() == list(range(7))  # epoch 0 is the untrained model


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


# --- notebook 09's options: the training still learns -------------------------------------------------------


CACHED_VECTOR_OPTIONS = {"learn_temperature": True, "spec_augment": {"time_masks": 2, "freq_masks": 2},
                         "caption_augment": {"source": "paraphrases"}, "distill": {"teacher": "learning", "weight": 0.5}}


def test_with_the_cached_vector_options_on_the_tiny_training_still_learns(trained_tiny, tmp_path_factory) -> None:
    name, cfg = train.recipe_with(trained_tiny, CACHED_VECTOR_OPTIONS, recipe="learning", name="options")
    assert best_checkpoint_path(trained_tiny).is_file()  # the teacher of the distillation run
    best = train.train(cfg, name, run_dir=tmp_path_factory.mktemp("options") / "run", verbose=False)
    history = assert_it_learned(best, cfg)
    assert history["temperature"].iloc[-1] != pytest.approx(history["temperature"].iloc[0])
