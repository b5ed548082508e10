"""Tiny random data and a tiny training run, shared by the data, model and training tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from course_lib.cnn14 import CNN14Encoder
from course_lib.data import SplitData
from course_lib.model import DualEncoder
from course_lib.train import run_identity


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
