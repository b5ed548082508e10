"""Zero-shot classification: a retrieval model used as a classifier, the way CLAP is used.

Taught in notebook 06. Write one text prompt per sound-event type ("a bell is ringing", ...),
embed the prompts with the same text branch as captions, and score every clip against every
prompt: the nearest prompts are the clip's predicted events. Nothing is trained for it.

The synthetic dataset knows which events each clip holds (``clip_events``: its scenes are
re-planned from the parameters in the dataset's ``.synth.json``). A clip holds 1-3 events, so:

* top-1 accuracy: the best prompt is one of the clip's events (chance: mean events a clip / types);
* mAP over events: for each event type, rank the clips by that prompt's score and take the average
  precision of the clips that hold it; average over the types (chance: about each type's share);
* a confusion matrix: each clip adds one count in the row of every event it holds, in the column of
  its top prediction.

Prompt wording can matter (``PROMPT_TEMPLATES``): the model learnt from caption-like sentences, and
the notebook compares them with "the sound of ...", the bare event name and keywords.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from course_lib.synth import MARKER, plan_split
from course_lib.synth_scenes import EVENT_TYPES, EventType

__all__ = [
    "EVENT_NAMES", "PROMPT_TEMPLATES", "event_prompts", "clip_events", "label_matrix", "average_precision",
    "zero_shot_report", "confusion",
]

EVENT_NAMES = tuple(EVENT_TYPES)

# how one event type becomes a prompt; each takes the EventType and returns a string
PROMPT_TEMPLATES = {
    "caption-like": lambda e: f"{_subject(e)} is {e.gerunds[0]}".capitalize(),  # "A bell is ringing"
    "sound of": lambda e: f"the sound of {_subject(e)}",  # "the sound of a bell"
    "event name": lambda e: e.name,  # "bell", "rumble"
    "keywords": lambda e: " ".join(e.keywords),  # "bell ring metal chime"
}


# --- the lesson ------------------------------------------------------------------------------------------------------


def event_prompts(template: str = "caption-like") -> dict[str, str]:
    """One prompt per event type, written with a template of ``PROMPT_TEMPLATES``. Taught in notebook 06, section 7."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"Unknown prompt template {template!r}; choose from {', '.join(PROMPT_TEMPLATES)}.")
    return {name: PROMPT_TEMPLATES[template](event) for name, event in EVENT_TYPES.items()}


def clip_events(dataset_dir: str | Path, split: str) -> dict[str, set[str]]:
    """file name -> the event types in that clip, for a synthetic dataset folder. Taught in notebook 06, section 7."""
    marker = Path(dataset_dir) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{dataset_dir} has no {MARKER}: event labels exist only for the synthetic dataset "
                                "(profile 'synthetic'). Clotho's clips have keywords, not event labels.")
    params = json.loads(marker.read_text(encoding="utf-8"))["parameters"]
    if split not in params["clips"]:
        raise ValueError(f"The synthetic dataset in {dataset_dir} has no split {split!r} (it has {list(params['clips'])}).")
    clips = plan_split(split, params["clips"][split], params["seed"], params["min_seconds"], params["max_seconds"])
    return {clip.file_name: {event.name for event in clip.scene.events} for clip in clips}


def label_matrix(events_per_clip: Sequence[set[str]], names: Sequence[str] = EVENT_NAMES) -> np.ndarray:
    """(clips, event types) boolean matrix: True where the clip holds the event. Taught in notebook 06, section 7."""
    return np.array([[name in events for name in names] for events in events_per_clip], dtype=bool)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: the mean, over the relevant items, of the precision at each one's rank (ties: earlier first)."""
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def zero_shot_report(scores: np.ndarray, labels: np.ndarray, names: Sequence[str] = EVENT_NAMES) -> dict[str, float]:
    """Top-1 accuracy and mAP over events of (clips, event types) scores, each beside its chance level.

    Taught in notebook 06, section 7. Events no clip holds are left out of the mAP (their AP is undefined).
    """
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.shape[1] != len(names):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (clips, {len(names)} event types).")
    top = scores.argmax(axis=1)
    present = labels.any(axis=0)
    aps = [average_precision(scores[:, j], labels[:, j]) for j in np.flatnonzero(present)]
    return {
        "top-1 accuracy": float(labels[np.arange(len(top)), top].mean()),
        "top-1 chance": float(labels.sum(axis=1).mean() / len(names)),
        "mAP over events": float(np.mean(aps)),
        "mAP chance": float(labels[:, present].mean(axis=0).mean()),  # a random ranking's AP is about the share of positives
        "events scored": int(present.sum()),
        "clips": len(scores),
    }


def confusion(scores: np.ndarray, labels: np.ndarray, names: Sequence[str] = EVENT_NAMES) -> pd.DataFrame:
    """Counts: row = an event the clip holds, column = the clip's top prediction (a clip counts once per event it holds).

    Taught in notebook 06, section 7.
    """
    top = np.asarray(scores).argmax(axis=1)
    counts = np.zeros((len(names), len(names)), dtype=int)
    for clip_labels, predicted in zip(np.asarray(labels, dtype=bool), top, strict=True):
        counts[np.flatnonzero(clip_labels), predicted] += 1
    return pd.DataFrame(counts, index=pd.Index(names, name="holds"), columns=pd.Index(names, name="predicted"))


# --- helpers ---------------------------------------------------------------------------------------------------------


def _subject(event: EventType) -> str:
    article, noun = event.subjects[0]  # the catalogue stores "a" for "a" and "an"
    if article:
        article = "an" if noun[0] in "aeiou" else "a"
    return f"{article} {noun}".strip()
