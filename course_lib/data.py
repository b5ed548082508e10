"""What one training step sees: datasets of (log-mel, caption vector, clip id) and how a batch is built.

Taught in notebook 05. Two ways to sample an epoch, and two ways to make clips of different lengths
into one (B, T, 64) tensor:

    sampling "caption"  one item per caption (the baseline): a clip with 5 captions is seen 5 times an epoch
    sampling "clip"     one item per clip, with one of its captions drawn at random each time
    crop_frames None    whole clips, right-padded to the longest clip of the batch (the baseline)
    crop_frames N       a random window of N frames from each clip (shorter clips are padded to N)
    pad_value           what fills the padding: 0.0 (the baseline) or the log-mel of silence, log(eps)

In the log domain of these features 0.0 is not silence but a loud value (digital silence is about
-36): the baseline's zero padding adds a loud block to every clip shorter than the longest one.

Features are preloaded into memory when the HDF5 file fits comfortably; otherwise each item is read
from the file, with one h5py handle per DataLoader worker (a handle cannot be shared across processes).
Either way a clip holding NaN or impossible values is refused, naming the clip and the file. In
training, ``reseed`` keys each epoch's random draws (the caption of a clip, the crop) to the run's
seed, the epoch and the item, so worker processes draw what the main process would: preloaded and
streamed features give the same numbers.

Beyond the baseline (notebook 09), a training item can also carry, in place of its cached caption vector,
the caption's tokens (when the text encoder is fine-tuned), or now and then the vector of an extra
caption of the same clip (caption augmentation); and ``Collate`` can mask the batch's log-mels
(SpecAugment, ``course_lib.augment``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from course_lib.augment import spec_augment, spec_augment_on
from course_lib.clotho import load_caption_table
from course_lib.cnn14 import SILENCE_LOG_MEL
from course_lib.config import Config
from course_lib.features import REBUILD_FEATURES, check_log_mel, features_path
from course_lib.text import load_caption_embeddings

__all__ = [
    "PAD_VALUES", "SAMPLINGS", "SplitData", "FeatureStore", "CaptionDataset", "ClipDataset", "make_dataset", "random_crop",
    "pad_batch", "Collate", "reseed", "draws", "load_split", "load_all",
]

PAD_VALUES = {"zero": 0.0, "silence": SILENCE_LOG_MEL}
SAMPLINGS = ("caption", "clip")


@dataclass
class SplitData:
    """One split's captions: the HDF5 file of its clips, and per caption its clip (fid), id (tid) and vector."""

    h5_path: Path
    fids: np.ndarray  # (N,) str, the clip of each caption
    tids: np.ndarray  # (N,) str
    vectors: np.ndarray  # (N, d) float32, unit rows
    captions: np.ndarray | None = None  # (N,) str, the caption texts (for a text encoder that reads them)

    @property
    def clip_fids(self) -> np.ndarray:
        """The split's clips, each once, in order of first appearance."""
        return pd.unique(self.fids)


class FeatureStore:
    """Log-mels by fid: all in memory when preloaded, else read per item (one h5py handle per process)."""

    def __init__(self, h5_path: str | Path, fids: list[str] | np.ndarray, preload: bool | None = None):
        self.h5_path, self.fids = Path(h5_path), [str(fid) for fid in fids]
        self.preloaded = _fits_in_memory(self.h5_path) if preload is None else preload
        self._clips = load_all(self.h5_path, self.fids) if self.preloaded else None
        self._handle, self._pid = None, None

    def __getitem__(self, fid: str) -> np.ndarray:
        if self._clips is not None:
            return self._clips[fid]
        if self._pid != os.getpid():  # first read in this process (a new DataLoader worker): open our own handle
            self._handle, self._pid = h5py.File(self.h5_path, "r"), os.getpid()
        return check_log_mel(np.asarray(self._handle[fid][()], dtype=np.float32), fid, self.h5_path)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None}  # workers open their own handle


class CaptionDataset(Dataset):
    """The baseline's sampling: item i is caption i with its clip's log-mel and the clip's index."""

    def __init__(self, split: SplitData, store: FeatureStore, text_inputs: np.ndarray | torch.Tensor | None = None):
        self.split, self.store = split, store
        self.text_inputs = split.vectors if text_inputs is None else text_inputs  # row i: what the text branch reads
        self.clip_index = {fid: index for index, fid in enumerate(split.clip_fids)}
        self.draw_key: tuple[int, ...] | None = None  # set by reseed: (seed, epoch); None draws from torch's generator
        self.extra_vectors: dict[str, np.ndarray] = {}  # caption augmentation (notebook 09): fid -> (k, d) vectors
        self.extra_probability = 0.0

    def __len__(self) -> int:
        return len(self.split.fids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        fid = str(self.split.fids[i])
        log_mel = torch.from_numpy(np.asarray(self.store[fid], dtype=np.float32))
        return log_mel, torch.as_tensor(self._text_input(i, fid)), self.clip_index[fid]

    def _text_input(self, i: int, fid: str) -> np.ndarray | torch.Tensor:
        """Caption i's input; with caption augmentation, now and then an extra caption of the same clip instead."""
        extras = self.extra_vectors.get(fid)
        if extras is None or not len(extras) or self.extra_probability <= 0:
            return self.text_inputs[i]
        generator = draws(*self.draw_key, i, 1) if self.draw_key is not None else None  # not ClipDataset's (.., k)
        if torch.rand((), generator=generator).item() >= self.extra_probability:
            return self.text_inputs[i]
        return extras[int(torch.randint(len(extras), (), generator=generator).item())]


class ClipDataset(CaptionDataset):
    """Clip-level sampling: item k is clip k with one of its captions drawn at random (torch's generator)."""

    def __init__(self, split: SplitData, store: FeatureStore, text_inputs: np.ndarray | torch.Tensor | None = None):
        super().__init__(split, store, text_inputs)
        rows = pd.Series(np.arange(len(split.fids))).groupby(pd.Series(split.fids).map(self.clip_index))
        self.caption_rows = [group.to_numpy() for _, group in rows]

    def __len__(self) -> int:
        return len(self.caption_rows)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rows = self.caption_rows[k]
        generator = draws(*self.draw_key, k) if self.draw_key is not None else None
        return super().__getitem__(int(rows[torch.randint(len(rows), (), generator=generator).item()]))


def make_dataset(
    split: SplitData, sampling: str, preload: bool | None = None, text_inputs: np.ndarray | torch.Tensor | None = None
) -> CaptionDataset:
    """The dataset for a sampling mode, "caption" (baseline) or "clip". Taught in notebook 05, section 2.

    ``text_inputs`` replaces the cached caption vectors row for row (the tokens of a fine-tuned text encoder).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"Unknown sampling {sampling!r}. Choose one of: {', '.join(SAMPLINGS)}.")
    store = FeatureStore(split.h5_path, split.clip_fids, preload)
    kind = CaptionDataset if sampling == "caption" else ClipDataset
    return kind(split, store, text_inputs)


def random_crop(
    log_mel: torch.Tensor, frames: int, pad_value: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random window of ``frames`` frames (from ``generator``, default torch's); a shorter clip is right-padded."""
    if len(log_mel) <= frames:
        return pad_batch([log_mel], pad_value, frames)[0]
    start = int(torch.randint(len(log_mel) - frames + 1, (), generator=generator).item())
    return log_mel[start : start + frames]


def pad_batch(clips: list[torch.Tensor], pad_value: float, length: int | None = None) -> torch.Tensor:
    """(B, T, 64): clips right-padded with ``pad_value`` to the longest clip (or to ``length``)."""
    length = max([len(clip) for clip in clips] + [length or 0])
    batch = torch.full((len(clips), length, clips[0].shape[1]), float(pad_value), dtype=torch.float32)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
    return batch


class Collate:
    """Items -> (audio (B, T, 64), caption vectors (B, d), clip ids (B,)): whole clips padded, or random crops.

    Taught in notebook 05, section 2.
    """

    def __init__(self, crop_frames: int | None = None, pad_value: float = 0.0, spec_augment: dict | None = None):
        self.crop_frames, self.pad_value = crop_frames, float(pad_value)
        self.spec_augment = spec_augment if spec_augment_on(spec_augment) else None  # masks (notebook 09); None: off
        self.draw_key: tuple[int, ...] | None = None  # set by reseed: (seed, epoch); None draws from torch's generator

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clips, vectors, clip_ids = zip(*items, strict=True)
        generator = draws(*self.draw_key, *clip_ids) if self.draw_key is not None else None
        if self.crop_frames:
            clips = [random_crop(clip, self.crop_frames, self.pad_value, generator) for clip in clips]
        if self.spec_augment:  # each clip masked before padding, so the padding stays as it was
            clips = [spec_augment(clip, **self.spec_augment, generator=generator) for clip in clips]
        return pad_batch(list(clips), self.pad_value), torch.stack(vectors), torch.tensor(clip_ids)


def reseed(dataset: CaptionDataset, collate: Collate, seed: int, epoch: int) -> None:
    """Key an epoch's random draws to (seed, epoch, item): DataLoader workers then draw what the main process would."""
    dataset.draw_key = collate.draw_key = (int(seed), int(epoch))


def draws(*key: int) -> torch.Generator:
    """A torch generator seeded from whole numbers ``key`` (seed, epoch, item): the same draws in every process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]))


# --- reading a split ---------------------------------------------------------------------------


def load_split(cfg: Config, split: str) -> SplitData:
    """A split's SplitData from the files the earlier stages wrote (caption table, HDF5 log-mels, embeddings).

    Taught in notebook 05, section 1.
    """
    table = load_caption_table(cfg, split)
    tids, vectors = load_caption_embeddings(cfg)
    row_of = {str(tid): row for row, tid in enumerate(tids)}
    missing = [tid for tid in table["tid"].astype(str) if tid not in row_of]
    if missing:
        raise KeyError(
            f"{len(missing)} {split} captions (e.g. tid {missing[0]!r}) have no embedding in the embeddings file. "
            "Rebuild it: course_lib.pipeline.prepare(cfg, until='embeddings')."
        )
    h5_path = features_path(cfg, split)
    if not h5_path.is_file():
        raise FileNotFoundError(f"No log-mels at {h5_path}: build them with course_lib.pipeline.prepare(cfg, until='features').")
    rows = [row_of[tid] for tid in table["tid"].astype(str)]
    return SplitData(h5_path, table["fid"].astype(str).to_numpy(), table["tid"].astype(str).to_numpy(), vectors[rows],
                     table["raw_text"].astype(str).to_numpy())


def load_all(h5_path: Path, fids: list[str]) -> dict[str, np.ndarray]:
    """Every listed clip's log-mel, read into memory once."""
    with h5py.File(h5_path, "r") as h5:
        missing = [fid for fid in fids if fid not in h5]
        if missing:
            raise KeyError(
                f"{len(missing)} clips (e.g. fid {missing[0]!r}) have no log-mel in {h5_path}. {REBUILD_FEATURES}"
            )
        return {fid: check_log_mel(np.asarray(h5[fid][()], dtype=np.float32), fid, h5_path) for fid in fids}


def _fits_in_memory(h5_path: Path, share: float = 0.25) -> bool:
    """True when the file takes under ``share`` of the memory available now (Clotho's 1.1 GB on most GPU machines)."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # psutil is optional: assume a laptop's 8 GB
        available = 8 * 1024**3
    return h5_path.stat().st_size < share * available
