"""Tiny random data, a tiny training run and tiny profiles, shared by the data, model, training and trust tests
(not a test module)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import yaml

from course_lib.checkpoints import run_identity
from course_lib.cnn14 import CNN14Encoder, encoder_from_config
from course_lib.config import BASELINE_YAML, Config, load_config
from course_lib.data import SplitData, load_split
from course_lib.model import DualEncoder, evaluate_text_to_audio, load_trained_model
from course_lib.pipeline import prepare
from course_lib.text_cache import EmbeddingCache, caption_embeddings_path, write_cache
from course_lib.train import read_history


def write_tiny_split(
    folder: Path, name: str, clips: int, captions_per_clip: int = 2, dim: int = 16, frames: tuple[int, int] = (70, 110),
    seed: int = 0,
) -> SplitData:
    """clips random log-mels (frames drawn in range) in <folder>/<name>.hdf5, each with captions whose vectors
    lean towards a per-clip direction (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h5_path = folder / f"{name}.hdf5"
    fids, tids, vectors = [], [], []
    with h5py.File(h5_path, "w") as h5:
        for clip in range(clips):
            fid = f"{name}{clip:03d}"
            pattern = rng.normal(size=64).astype(np.float32)
            length = int(rng.integers(frames[0], frames[1] + 1))
            h5[fid] = (-10 + 2 * rng.normal(size=(length, 64)) + 3 * pattern).astype(np.float32)
            for caption in range(captions_per_clip):
                fids.append(fid)
                tids.append(f"{fid}_{caption}")
                vector = np.concatenate([pattern[:dim], np.zeros(max(0, dim - 64))])[:dim] + 0.5 * rng.normal(size=dim)
                vectors.append(vector / np.linalg.norm(vector))
    return SplitData(h5_path, np.array(fids), np.array(tids), np.asarray(vectors, dtype=np.float32))


TINY_RECIPE = {
    "sampling": "clip", "crop_frames": 64, "pad_value": "silence", "batch_size": 4, "lr": 0.001, "weight_decay": 0.0,
    "max_epochs": 4, "temperature": 0.07, "mixed_precision": True,
    "lr_plateau": {"factor": 0.1, "patience": 5, "threshold": 0.005, "min_lr": 1e-6},
    "plateau_stop": {"std": 0.001, "num_results": 10, "grace_period": 60},
}


def tiny_run(folder: Path, recipe: dict | None = None, width: float = 0.125):
    """(model, train split, val split, recipe, identity) for a tiny run with data under folder."""
    recipe = dict(recipe or TINY_RECIPE)
    train_split = write_tiny_split(folder, "dev", clips=12, captions_per_clip=2, seed=0)
    val_split = write_tiny_split(folder, "val", clips=6, captions_per_clip=2, seed=1)
    identity = run_identity("tiny", recipe, 0, width, 300, "random-16d", 16, False, train_split)
    torch.manual_seed(0)
    return DualEncoder(CNN14Encoder(300, width), 16), train_split, val_split, recipe, identity


def write_course_yaml(path: Path, recipes: dict[str, dict], default: str | None, synth: dict | None = None) -> Path:
    """The course's baseline.yaml with extra training recipes, ``default`` as the synthetic profile's recipe."""
    settings = yaml.safe_load(BASELINE_YAML.read_text(encoding="utf-8"))
    settings["training"].update(recipes)
    if default is not None:
        settings["profiles"]["synthetic"]["training_recipe"] = default
    if synth is not None:
        settings["profiles"]["synthetic"]["synth"] = synth
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def write_tiny_profile(folder: Path, recipe: dict | None = None) -> Config:
    """A synthetic profile whose prepared files (caption tables, HDF5 log-mels, 16-d caption embeddings) are written
    directly in the stages' formats, with recipe "tiny" (TINY_RECIPE, one epoch) as its default."""
    yaml_path = write_course_yaml(folder / "course.yaml", {"tiny": {**TINY_RECIPE, "max_epochs": 1, **(recipe or {})}}, "tiny")
    cfg = load_config("synthetic", data_root=folder / "root", yaml_path=yaml_path)
    splits = {"development": write_tiny_split(cfg.prepared_dir, "development_audio_logmels", clips=8, seed=0),
              "validation": write_tiny_split(cfg.prepared_dir, "validation_audio_logmels", clips=4, seed=1)}
    tids, vectors = [], []
    for split, data in splits.items():
        pd.DataFrame({"tid": data.tids, "fid": data.fids, "fname": data.fids, "raw_text": data.tids, "text": data.tids,
                      "tokens": "[]"}).to_csv(cfg.prepared_dir / f"{split}_text.csv", index=False)
        tids += list(data.tids)
        vectors.append(data.vectors)
    write_cache(caption_embeddings_path(cfg), EmbeddingCache(tids, tids, np.concatenate(vectors), {"dimension": 16}))
    return cfg


def prepared_tiny_profile(folder: Path, recipes: dict[str, dict] | None = None) -> Config:
    """A real synthetic profile (6/3/2 clips of 1.5-2 s, built by the pipeline up to the caption embeddings), whose
    default recipe "tiny" trains one epoch; ``recipes`` adds more."""
    synth = {"seed": 0, "clips": {"development": 6, "validation": 3, "evaluation": 2}, "min_seconds": 1.5, "max_seconds": 2.0}
    recipes = {"tiny": {**TINY_RECIPE, "max_epochs": 1}, **(recipes or {})}
    yaml_path = write_course_yaml(folder / "course.yaml", recipes, "tiny", synth)
    cfg = load_config("synthetic", data_root=folder / "root", yaml_path=yaml_path)
    prepare(cfg, until="embeddings", verbose=False)
    return cfg


def tiny_profile(root: Path, clips: int | dict[str, int] | None = None, seconds: tuple[float, float] = (1.5, 2.0),
                 seed: int = 0, splits: list[str] | None = None, recipes: dict[str, dict] | None = None,
                 default: str | None = None) -> Config:
    """A synthetic profile under root with few, short clips (default 3/2/2 of 1.5-2 s), not built yet, never quick.

    ``recipes`` adds training recipes; ``default`` makes one of them the profile's recipe.
    """
    clips = clips if clips is not None else {"development": 3, "validation": 2, "evaluation": 2}
    synth = {"seed": seed, "clips": clips, "min_seconds": seconds[0], "max_seconds": seconds[1]}
    yaml_path = write_course_yaml(root / "tiny.yaml", recipes or {}, default, synth)
    return load_config("synthetic", data_root=root / "root", yaml_path=yaml_path, splits=splits, quick=False)


def untrained_map10(cfg: Config) -> float:
    """Evaluation mAP@10 of the model a run of this profile starts from (train.train seeds 0 before building it)."""
    torch.manual_seed(0)
    evaluation = load_split(cfg, "evaluation")
    model = DualEncoder(encoder_from_config(cfg), text_dim=evaluation.vectors.shape[1]).eval()
    return evaluate_text_to_audio(model, evaluation).means["mAP@10"]


def assert_it_learned(best: Path, cfg: Config) -> pd.DataFrame:
    """Asserts that the run of best.pt learned, and returns its history: its validation loss fell more than 0.2 below
    the untrained model's (epoch 0), and its evaluation mAP@10 beats the untrained model's by more than 0.1."""
    history = read_history(best.parent)
    assert history["val_loss"].iloc[1:].min() < history["val_loss"].iloc[0] - 0.2, history[["epoch", "val_loss"]]
    before = untrained_map10(cfg)
    after = evaluate_text_to_audio(load_trained_model(best), load_split(cfg, "evaluation")).means["mAP@10"]
    assert after > before + 0.1, (best, before, after)
    return history
