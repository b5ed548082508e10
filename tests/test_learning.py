"""Whether the model learns, proved once (the notebooks run with the quick setting and prove nothing about it).

The shared trained profile (tests/conftest.py: 48 development clips of 2-3 s, 6 epochs of the baseline
recipe at batch 16) must learn: its validation loss falls below the untrained model's (epoch 0), and its
evaluation mAP@10 beats the untrained model's by a clear margin. Then Made With ML's behavioural tests:
a query for a bell ranks bell clips above rain clips (direction), and the case of a query or an added
article does not change the top clip (invariance).

With notebook 09's options on, the same training still learns: one run with the options that read cached
caption vectors (learned temperature, SpecAugment, paraphrased captions, self-distillation from the shared
baseline model), one with the text encoder's top layer fine-tuned. They live in this file so that one test
worker builds the shared profile and the others never wait for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    before = untrained_map10(trained_tiny)
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


# --- notebook 09's options: the training still learns -------------------------------------------------------


OPTIONS_ON = {
    "cached vectors": {"learn_temperature": True, "spec_augment": {"time_masks": 2, "freq_masks": 2},
                       "caption_augment": {"source": "paraphrases"}, "distill": {"teacher": "learning", "weight": 0.5}},
    "fine-tuned text": {"text_finetune": {"layers": 1, "lr": 2.0e-5}},
}


def untrained_map10(cfg: Config) -> float:
    torch.manual_seed(0)  # the same initialisation the run started from (train.train seeds before building the model)
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
