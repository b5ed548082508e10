"""The order of the course's stages, and the one place that chains them.

Taught in notebook 00. Each stage turns the previous stage's files into its own, under the
profile's data root:

    dataset     a Clotho-format folder: generated (synthetic profile) or downloaded (clotho)
    captions    {split}_text.csv caption tables with reproducible ids          (notebook 01)
    features    {split}_audio_logmels.hdf5, one (T, 64) log-mel per clip        (notebook 02)
    embeddings  one Sentence-BERT vector per caption                            (notebook 04)
    model       the trained dual encoder's best checkpoint                      (notebook 05)

``prepare(cfg, until="features")`` runs the stages up to that one: each reuses what is valid and
rebuilds what is not, and the pipeline prints one status line a stage (plus progress bars, and the
epoch lines while a model trains). Stage functions take their
inputs explicitly and never run the stage before them; a notebook opened on a fresh runtime calls
``prepare`` to build what it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from course_lib import clotho, features, model, synth, text, text_cache, train
from course_lib.config import Config, ConfigError, quick_summary

__all__ = [
    "STAGES", "Prepared", "prepare",
]

STAGES = ("dataset", "captions", "features", "embeddings", "model")


@dataclass
class Prepared:
    """What ``prepare`` built or reused, stage by stage."""

    cfg: Config
    dataset_dir: Path | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    features: dict[str, Path] = field(default_factory=dict)
    embeddings: Path | None = None
    checkpoint: Path | None = None


def prepare(cfg: Config, until: str = "embeddings", verbose: bool = True) -> Prepared:
    """Build (or reuse) every stage up to and including ``until``; one status line a stage. Taught in notebook 00, section 3."""
    done = Prepared(cfg)
    if verbose and cfg.quick:
        print(f"{'quick':<11} {'on':<16} {quick_summary(cfg)}")
    for stage in STAGES[: _stage_index(until) + 1]:
        build, outputs = _STAGES[stage]
        before = _snapshot(outputs(cfg))
        started = time.perf_counter()
        summary = build(done, progress=verbose)
        seconds = time.perf_counter() - started
        action = "reused" if _snapshot(outputs(cfg)) == before else f"built in {seconds:.1f} s"
        if verbose:
            print(f"{stage:<11} {action:<16} {summary}")
    return done


# --- the stages, in order: each reads what the stages before it left in ``done`` ---------------


def _dataset(done: Prepared, progress: bool) -> str:
    cfg = done.cfg
    if cfg.settings.get("dataset", cfg.profile) == "synthetic":
        done.dataset_dir = synth.ensure_synthetic_dataset(cfg, verbose=False)
    else:
        done.dataset_dir = clotho.download_clotho(cfg, verbose=False)
    return str(done.dataset_dir)


def _captions(done: Prepared, progress: bool) -> str:
    done.tables = clotho.ensure_caption_tables(done.cfg, verbose=False)
    counts = ", ".join(f"{split} {len(table)}" for split, table in done.tables.items())
    return f"captions: {counts}"


def _features(done: Prepared, progress: bool) -> str:
    done.features = features.ensure_features(done.cfg, verbose=False)
    return f"log-mels in {done.cfg.prepared_dir}"


def _embeddings(done: Prepared, progress: bool) -> str:
    done.embeddings = text.ensure_caption_embeddings(done.cfg, verbose=False)
    return str(done.embeddings)


def _model(done: Prepared, progress: bool) -> str:
    # Training takes minutes: its epoch lines are progress, shown whenever the pipeline speaks.
    done.checkpoint = train.ensure_trained(done.cfg, verbose=progress)
    return str(done.checkpoint)


_STAGES: dict[str, tuple[Callable[..., str], Callable[[Config], Iterable[Path]]]] = {
    "dataset": (_dataset, lambda cfg: [cfg.dataset_dir / synth.MARKER, *_captions_csvs(cfg)]),
    "captions": (_captions, lambda cfg: [clotho.table_path(cfg, split) for split in cfg.splits]),
    "features": (_features, lambda cfg: [features.features_path(cfg, split) for split in cfg.splits]),
    "embeddings": (_embeddings, lambda cfg: [text_cache.caption_embeddings_path(cfg)]),
    "model": (_model, lambda cfg: [model.best_checkpoint_path(cfg)]),
}


def _captions_csvs(cfg: Config) -> list[Path]:
    return [cfg.dataset_dir / clotho.split_file_names(split)[1] for split in cfg.splits]


def _stage_index(until: str) -> int:
    if until not in STAGES:
        raise ConfigError(f"Unknown stage {until!r}. Choose one of: {', '.join(STAGES)}.")
    if until not in _STAGES:
        raise ConfigError(f"Stage {until!r} is not part of this version of the course yet.")
    return STAGES.index(until)


def _snapshot(paths: Iterable[Path]) -> tuple:
    """Size and modification time of each output file: a stage that changed none of them reused its work."""
    state = []
    for path in paths:
        try:
            stat = path.stat()
            state.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            state.append((str(path), None, None))
    return tuple(state)
