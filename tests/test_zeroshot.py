"""course_lib.zeroshot: prompts, the synthetic dataset's event labels, accuracy, mAP and confusion on known scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from course_lib import zeroshot
from course_lib.synth import generate_dataset
from course_lib.synth_scenes import EVENT_TYPES
from course_lib.zeroshot import (
    EVENT_NAMES,
    average_precision,
    clip_events,
    confusion,
    event_prompts,
    label_matrix,
    zero_shot_report,
)


def test_prompts_one_per_event_in_every_wording():
    for template in zeroshot.PROMPT_TEMPLATES:
        prompts = event_prompts(template)
        assert list(prompts) == list(EVENT_NAMES) and all(prompts.values())
    caption_like = event_prompts("caption-like")
    assert caption_like["bell"] == "A bell is ringing" and caption_like["engine"] == "An engine is humming"
    with pytest.raises(ValueError, match="caption-like"):
        event_prompts("poetic")


def test_average_precision_known_values():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert average_precision(scores, np.array([1, 0, 1, 0, 0], dtype=bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.array([0, 0, 0, 0, 1], dtype=bool)) == pytest.approx(1 / 5)
    assert np.isnan(average_precision(scores, np.zeros(5, dtype=bool)))
    # ties: the earlier clip ranks first
    assert average_precision(np.zeros(3), np.array([0, 1, 0], dtype=bool)) == pytest.approx(1 / 2)


def test_perfect_and_random_scores():
    rng = np.random.default_rng(0)
    labels = label_matrix([{EVENT_NAMES[i % 14], EVENT_NAMES[(i * 5 + 1) % 14]} for i in range(60)])
    perfect = zero_shot_report(labels.astype(float), labels)
    assert perfect["top-1 accuracy"] == 1.0 and perfect["mAP over events"] == 1.0
    assert perfect["top-1 chance"] == pytest.approx(labels.sum(axis=1).mean() / 14)
    random = [zero_shot_report(rng.normal(size=labels.shape), labels) for _ in range(30)]
    assert np.mean([r["top-1 accuracy"] for r in random]) == pytest.approx(perfect["top-1 chance"], abs=0.05)
    assert np.mean([r["mAP over events"] for r in random]) == pytest.approx(perfect["mAP chance"], abs=0.07)


def test_confusion_counts_each_held_event_once_per_clip():
    labels = label_matrix([{"bell"}, {"bell", "dog"}, {"rain"}])
    scores = np.zeros((3, 14))
    scores[0, EVENT_NAMES.index("bell")] = 1  # right
    scores[1, EVENT_NAMES.index("dog")] = 1  # right for dog, so bell's row counts "dog"
    scores[2, EVENT_NAMES.index("wind")] = 1  # wrong
    table = confusion(scores, labels)
    assert isinstance(table, pd.DataFrame) and table.values.sum() == 4
    assert table.loc["bell", "bell"] == 1 and table.loc["bell", "dog"] == 1 and table.loc["dog", "dog"] == 1
    assert table.loc["rain", "wind"] == 1


def test_labels_are_the_generated_clips_events(tmp_path):
    folder = generate_dataset(tmp_path / "Clotho", seed=5, clips={"development": 1, "validation": 1, "evaluation": 6},
                              min_seconds=1.0, max_seconds=1.5, workers=1, progress=False)
    events = clip_events(folder, "evaluation")
    on_disk = sorted(p.name for p in (folder / "evaluation").glob("*.wav"))
    assert sorted(events) == on_disk
    metadata = pd.read_csv(folder / "clotho_metadata_evaluation.csv", encoding="iso-8859-1")
    for name, keywords in zip(metadata["file_name"], metadata["keywords"], strict=True):
        assert events[name] and all(EVENT_TYPES[event].keywords[0] in keywords.split(";") for event in events[name])
    with pytest.raises(ValueError, match="no split"):
        clip_events(folder, "test")
    with pytest.raises(FileNotFoundError, match="synthetic"):
        clip_events(tmp_path, "evaluation")


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="event types"):
        zero_shot_report(np.zeros((2, 3)), np.zeros((2, 3), dtype=bool))
