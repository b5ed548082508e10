"""With notebook 09's options on, the tiny training still learns (as tests/test_learning.py proves for the baseline).

Both runs train the shared tiny profile (tests/conftest.py) for its 6 epochs in their own run folders: one with the
options that read cached caption vectors (learned temperature, SpecAugment, paraphrased captions, and
self-distillation from the shared baseline model), one with the text encoder's top layer fine-tuned.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import train
from course_lib._text_models import load_text_model
from course_lib.cnn14 import encoder_from_config
from course_lib.config import Config
from course_lib.data import load_split
from course_lib.model import DualEncoder, best_checkpoint_path, embed_captions, evaluate_text_to_audio, load_trained_model
from course_lib.search import SearchEngine
from course_lib.text_finetune import tokenise, transformer_layers

OPTIONS_ON = {
    "cached vectors": {"learn_temperature": True, "spec_augment": {"time_masks": 2, "freq_masks": 2},
                       "caption_augment": {"source": "paraphrases"}, "distill": {"teacher": "learning", "weight": 0.5}},
    "fine-tuned text": {"text_finetune": {"layers": 1, "lr": 2.0e-5}},
}


def untrained_map10(cfg: Config) -> float:
    torch.manual_seed(0)  # the initialisation train.train starts from
    evaluation = load_split(cfg, "evaluation")
    model = DualEncoder(encoder_from_config(cfg), text_dim=evaluation.vectors.shape[1]).eval()
    return evaluate_text_to_audio(model, evaluation).means["mAP@10"]


@pytest.fixture(scope="module", params=list(OPTIONS_ON))
def options_run(request, trained_tiny: Config, tmp_path_factory) -> tuple[str, Config, object]:
    name, cfg = train.recipe_with(trained_tiny, OPTIONS_ON[request.param], recipe="learning", name="options")
    assert best_checkpoint_path(trained_tiny).is_file()  # the teacher of the distillation run
    run_dir = tmp_path_factory.mktemp("options") / "run"
    best = train.train(cfg, name, run_dir=run_dir, verbose=False)
    return request.param, cfg, best


def test_with_the_options_on_the_tiny_training_still_learns(options_run) -> None:
    kind, cfg, best = options_run
    history = train.read_history(best.parent)
    assert history["val_loss"].iloc[1:].min() < history["val_loss"].iloc[0] - 0.2, history[["epoch", "val_loss"]]
    after = evaluate_text_to_audio(load_trained_model(best), load_split(cfg, "evaluation")).means["mAP@10"]
    assert after > untrained_map10(cfg) + 0.1, (kind, after)
    if kind == "cached vectors":
        assert history["temperature"].iloc[-1] != pytest.approx(history["temperature"].iloc[0])


def test_fine_tuning_changes_the_text_encoder_only_in_its_unfrozen_layer(options_run) -> None:
    kind, cfg, best = options_run
    if kind != "fine-tuned text":
        pytest.skip("the cached-vector run has no text encoder of its own")
    trained = load_trained_model(best).caption_encoder.text_model.state_dict()
    fresh = load_text_model(cfg.settings["text_model"])
    top = {parameter.data_ptr() for parameter in transformer_layers(fresh)[-1].parameters()}
    assert top
    for key, value in fresh.state_dict().items():
        assert (not torch.equal(value, trained[key])) == (value.data_ptr() in top), key


def test_the_search_engine_reads_a_fine_tuned_models_queries_through_its_own_text_encoder(options_run) -> None:
    kind, cfg, best = options_run
    if kind != "fine-tuned text":
        pytest.skip("the cached-vector run searches as the baseline does")
    engine = SearchEngine.from_config(cfg, checkpoint=best, device="cpu")
    evaluation = load_split(cfg, "evaluation")
    model = engine.model
    expected = embed_captions(model, tokenise(model.caption_encoder.text_model, [evaluation.captions[0]]))[0]
    np.testing.assert_allclose(engine.embed_query(evaluation.captions[0]), expected, atol=1e-6)
    index = engine.index("evaluation")
    np.testing.assert_allclose(index.caption_vectors[0], expected, atol=1e-5)  # captions indexed the same way
    assert engine.search("a bell rings", k=3).clips
