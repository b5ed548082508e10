"""Beyond the 2023 baseline: one idea of the later systems at a time, measured against the baseline.

Taught in notebook 09. Each idea is a change to the baseline recipe (course_lib.train.OPTIONS); an
experiment trains the baseline and every idea for the same number of epochs, with the same seeds, and
scores each trained model on the evaluation split:

    run_idea(cfg, idea, changes, seed, epochs)    train one idea (or reuse its finished run); its best.pt
    compare(cfg, IDEAS, seeds, epochs)             every idea for every seed, plus an ensemble of the baselines
    gains(comparison)                              each idea's change in mAP@10 and R@1 against the baseline,
                                                   with a 95 % jackknife interval over the evaluation captions

Self-distillation needs a first model: each seed's baseline run is its teacher. The ensemble averages the
score matrices of the seeds' baseline models (course_lib.model.ensemble_text_to_audio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from course_lib import train
from course_lib.config import QUICK_TRIAL_EPOCHS, Config, ConfigError, resolve_device
from course_lib.data import load_split
from course_lib.metrics import Retrieval, jackknife_interval
from course_lib.model import ensemble_text_to_audio, evaluate_text_to_audio, load_trained_model

__all__ = [
    "IDEAS", "ENSEMBLE", "PUBLISHED", "Comparison", "run_dir_of", "run_idea", "compare", "gains",
]

# Each idea as changes to the baseline recipe (the settings it leaves out keep baseline.yaml's values).
IDEAS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "learned temperature": {"learn_temperature": True},
    "fine-tuned text encoder": {"text_finetune": {"layers": 2, "lr": 1.0e-4}},
    "SpecAugment": {"spec_augment": {"time_masks": 2, "time_width": 40, "freq_masks": 2, "freq_width": 8}},
    "caption paraphrases": {"caption_augment": {"source": "paraphrases", "probability": 0.5, "per_caption": 2}},
    "self-distillation": {"distill": {"teacher": "baseline", "weight": 0.5, "temperature": 0.07}},
}
ENSEMBLE = "ensemble of the baselines"
# What the sources report on Clotho v2.1, for the notebook's table: the DCASE 2023 baseline's results, the
# OptimusPrimus/salsa README (DCASE 2024 winner), the CPJKU/dcase2025_task6_baseline README, CP-JKU's 2023
# technical report, a DCASE 2025 technical report, and XinhaoMei/audio-text_retrieval issue 2 (the reproduction).
PUBLISHED = {
    "baseline": "the 2023 baseline: mAP@10 0.222, R@1 0.130",
    "learned temperature": "CP-JKU 2023 learns it (from 0.02); no gain reported on its own",
    "fine-tuned text encoder": "R@1 7.7 frozen -> 14.7 fine-tuned (one reproduction; both encoders)",
    "SpecAugment": "used by the later systems; no gain reported on its own",
    "caption paraphrases": "CP-JKU 2023 (captions varied by a language model); no gain reported on its own",
    "self-distillation": "+1.7 pp mAP@10 (salsa, DCASE 2024 winner, Clotho only)",
    ENSEMBLE: "+2.2 pp mAP@16 (four models, a DCASE 2025 technical report)",
}


@dataclass
class Comparison:
    """Every run's scores (one row a run) and each run's per-caption values, for intervals."""

    runs: pd.DataFrame  # idea, seed, mAP@10, R@1, R@5, R@10, train_s, run_dir
    per_query: dict[tuple[str, str], dict[str, np.ndarray]] = field(repr=False)  # (idea, seed) -> metric -> values
    epochs: int = 0  # what each run trained (the quick setting cuts it)
    seeds: tuple[int, ...] = ()


def run_dir_of(cfg: Config, idea: str, seed: int, epochs: int) -> Path:
    """Where an idea's run of a seed and an epoch count lives: <models>/beyond/<idea>-e<epochs>-s<seed>/."""
    return cfg.models_dir / "beyond" / f"{idea.replace(' ', '-')}-e{epochs}-s{seed}"


def run_idea(cfg: Config, idea: str, changes: dict[str, Any], seed: int, epochs: int, verbose: bool = False) -> Path:
    """Train the baseline recipe with ``changes`` for ``epochs`` epochs (or reuse the finished run); its best.pt.

    A distillation teacher named "baseline" is this experiment's baseline run of the same seed (trained when missing).
    """
    if (changes.get("distill") or {}).get("teacher") == "baseline":
        teacher = run_idea(cfg, "baseline", {}, seed, epochs)
        changes = {**changes, "distill": {**changes["distill"], "teacher": str(teacher)}}
    name, idea_cfg = train.recipe_with(cfg, changes, name=idea.replace(" ", "-"))
    return train.train(idea_cfg, name, seed=seed, run_dir=run_dir_of(cfg, idea, seed, epochs), max_epochs=epochs,
                       verbose=verbose)


def compare(
    cfg: Config, ideas: dict[str, dict[str, Any]] | None = None, seeds: tuple[int, ...] = (0, 1), epochs: int = 4,
    progress: Callable[[str], None] | None = print,
) -> Comparison:
    """Every idea trained for every seed at the same epoch budget, scored on the evaluation split; plus the ensemble.

    Taught in notebook 09, section 7. The quick setting (COURSE_QUICK=1) trains each run QUICK_TRIAL_EPOCHS epoch at most.
    """
    ideas = IDEAS if ideas is None else ideas
    epochs = min(epochs, QUICK_TRIAL_EPOCHS) if cfg.quick else epochs
    _check_ideas(cfg, ideas)  # every idea is a recipe this profile can train, before any run starts
    device = resolve_device(cfg.settings.get("device", "auto"))
    evaluation = load_split(cfg, "evaluation")
    rows, per_query, baselines = [], {}, []
    for seed in seeds:
        for idea, changes in ideas.items():
            best = run_idea(cfg, idea, changes, seed, epochs)
            model = load_trained_model(best, device=device)
            if idea == "baseline":
                baselines.append(model)
            _add(rows, per_query, idea, str(seed), evaluate_text_to_audio(model, evaluation, device), best.parent)
            if progress:
                progress(f"{idea:<26} seed {seed}  mAP@10 {rows[-1]['mAP@10']:.3f}  R@1 {rows[-1]['R@1']:.3f}  "
                         f"trained in {rows[-1]['train_s']:.0f} s")
    if len(baselines) > 1:
        _add(rows, per_query, ENSEMBLE, "+".join(map(str, seeds)), ensemble_text_to_audio(baselines, evaluation, device),
             None)
    return Comparison(pd.DataFrame(rows), per_query, epochs, tuple(seeds))


def gains(comparison: Comparison, metrics: tuple[str, ...] = ("mAP@10", "R@1")) -> pd.DataFrame:
    """Each idea's mean over seeds and its change against the baseline, with a 95 % jackknife interval.

    Taught in notebook 09, section 7. The change is paired: per caption, the idea's value (averaged over seeds) minus the
    baseline's, so the interval reflects which captions moved, not how hard the evaluation split is.
    """
    if not any(idea == "baseline" for idea, _ in comparison.per_query):
        raise ValueError("The comparison has no 'baseline' runs to measure changes against; include IDEAS['baseline'].")
    reference = _mean_per_query(comparison, "baseline")
    table = {}
    for idea in comparison.runs["idea"].unique():
        values, row = _mean_per_query(comparison, idea), {}
        for metric in metrics:
            row[metric] = float(values[metric].mean())
            if idea != "baseline":
                estimate, low, high = jackknife_interval(values[metric] - reference[metric])
                row[f"change in {metric}"], row[f"{metric} 95% interval"] = estimate, f"[{low:+.3f}, {high:+.3f}]"
        row["on Clotho (published)"] = PUBLISHED.get(idea, "")
        table[idea] = row
    return pd.DataFrame.from_dict(table, orient="index")


# --- helpers ---------------------------------------------------------------------------------------------


def _check_ideas(cfg: Config, ideas: dict[str, dict[str, Any]]) -> None:
    """Refuse, naming the idea, one this profile cannot train (unknown settings, paraphrases without a grammar)."""
    for idea, changes in ideas.items():
        train.recipe_with(cfg, changes)
        source = (changes.get("caption_augment") or {}).get("source")
        if source == "paraphrases" and "synth" not in cfg.settings:
            raise ConfigError(f"Idea {idea!r}: paraphrases come from the synthetic generator's grammar; profile "
                              f"{cfg.profile!r} has none. Give caption_augment.source a CSV of extra captions, or drop it.")


def _add(rows: list, per_query: dict, idea: str, seed: str, retrieval: Retrieval, run_dir: Path | None) -> None:
    history = train.read_history(run_dir) if run_dir is not None else None
    rows.append({"idea": idea, "seed": seed, **{name: retrieval.means[name] for name in ("mAP@10", "R@1", "R@5", "R@10")},
                 "train_s": float(history["elapsed_s"].iloc[-1]) if history is not None else 0.0,
                 "run_dir": str(run_dir) if run_dir else ""})
    per_query[(idea, seed)] = retrieval.per_query


def _mean_per_query(comparison: Comparison, idea: str) -> dict[str, np.ndarray]:
    runs = [values for (name, _), values in comparison.per_query.items() if name == idea]
    return {metric: np.mean([run[metric] for run in runs], axis=0) for metric in runs[0]}
