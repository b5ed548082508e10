"""With notebook 09's fine-tuned text encoder, the tiny training still learns, and only the unfrozen layer changes.

The run needs the learning profile's data (tests/conftest.py, ``learning_data``) but no trained model, so it lives
apart from test_learning.py: another test worker trains it while that file's worker trains the baseline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import assert_it_learned

from course_lib import train
from course_lib._text_models import load_text_model
from course_lib.config import Config
from course_lib.data import load_split
from course_lib.model import embed_captions, load_trained_model
from course_lib.search import SearchEngine
from course_lib.text_finetune import tokenise, transformer_layers

pytestmark = pytest.mark.long(30)  # collected early, so that a test worker starts it at once (conftest.py)

# 3 of the learning recipe's 6 epochs: the 6-epoch run's best epoch was its third (measured), so the other three took as
# long again and changed nothing that is tested.
FINE_TUNED_TEXT = {"text_finetune": {"layers": 1, "lr": 2.0e-5}, "max_epochs": 3}


@pytest.fixture(scope="module")
def fine_tuned(learning_data: Config, tmp_path_factory) -> tuple[Config, object]:
    """The learning recipe with the text encoder's top layer fine-tuned: its profile and best.pt."""
    name, cfg = train.recipe_with(learning_data, FINE_TUNED_TEXT, recipe="learning", name="fine-tuned")
    return cfg, train.train(cfg, name, run_dir=tmp_path_factory.mktemp("fine-tuned") / "run", verbose=False)


def test_with_the_text_encoder_fine_tuned_the_tiny_training_still_learns(fine_tuned) -> None:
    cfg, best = fine_tuned
    assert_it_learned(best, cfg)


def test_fine_tuning_changes_the_text_encoder_only_in_its_unfrozen_layer(fine_tuned) -> None:
    cfg, best = fine_tuned
    trained = load_trained_model(best).caption_encoder.text_model.state_dict()
    fresh = load_text_model(cfg.settings["text_model"])
    top = {parameter.data_ptr() for parameter in transformer_layers(fresh)[-1].parameters()}
    assert top
    for key, value in fresh.state_dict().items():
        assert (not torch.equal(value, trained[key])) == (value.data_ptr() in top), key


def test_the_search_engine_reads_a_fine_tuned_models_queries_through_its_own_text_encoder(fine_tuned) -> None:
    cfg, best = fine_tuned
    engine = SearchEngine.from_config(cfg, checkpoint=best, device="cpu")
    evaluation = load_split(cfg, "evaluation")
    model = engine.model
    expected = embed_captions(model, tokenise(model.caption_encoder.text_model, [evaluation.captions[0]]))[0]
    np.testing.assert_allclose(engine.embed_query(evaluation.captions[0]), expected, atol=1e-6)
    index = engine.index("evaluation")
    np.testing.assert_allclose(index.caption_vectors[0], expected, atol=1e-5)  # captions indexed the same way
    assert engine.search("a bell rings", k=3).clips
