"""course_lib.data: caption- and clip-level sampling, padding and crops, preloading and per-worker reading, seeded draws."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tiny import write_tiny_split
from torch.utils.data import DataLoader

from course_lib.cnn14 import SILENCE_LOG_MEL
from course_lib.data import Collate, FeatureStore, SplitData, load_all, make_dataset, pad_batch, random_crop, reseed
from course_lib.features import FeatureExtractionError


@pytest.fixture()
def split(tmp_path: Path) -> SplitData:
    return write_tiny_split(tmp_path, "dev", clips=6, captions_per_clip=3)


def test_caption_sampling_gives_every_caption_once_with_its_clip(split: SplitData) -> None:
    dataset = make_dataset(split, "caption")
    assert len(dataset) == 18
    with h5py.File(split.h5_path, "r") as h5:
        for i in (0, 4, 17):
            log_mel, vector, clip = dataset[i]
            assert torch.equal(log_mel, torch.from_numpy(h5[split.fids[i]][()]))
            assert torch.equal(vector, torch.from_numpy(split.vectors[i]))
            assert clip == list(split.clip_fids).index(split.fids[i])


def test_clip_sampling_gives_each_clip_once_and_varies_its_caption(split: SplitData) -> None:
    dataset = make_dataset(split, "clip")
    assert len(dataset) == 6
    torch.manual_seed(0)
    seen = Counter()
    for _ in range(60):
        _, vector, clip = dataset[2]
        assert clip == 2
        seen[int(np.flatnonzero((split.vectors == vector.numpy()).all(axis=1))[0])] += 1
    assert set(seen) == {6, 7, 8}  # the three captions of clip 2, each drawn at some point


def test_unknown_sampling_is_refused(split: SplitData) -> None:
    with pytest.raises(ValueError, match="caption, clip"):
        make_dataset(split, "word")


def test_pad_batch_right_pads_with_the_given_value() -> None:
    clips = [torch.ones(3, 64), 2 * torch.ones(5, 64)]
    batch = pad_batch(clips, 0.0)
    assert batch.shape == (2, 5, 64)
    assert torch.equal(batch[0, :3], clips[0]) and torch.equal(batch[0, 3:], torch.zeros(2, 64))
    assert torch.allclose(pad_batch(clips, SILENCE_LOG_MEL)[0, 3:], torch.full((2, 64), SILENCE_LOG_MEL))


def test_random_crop_is_a_window_of_the_clip_and_pads_short_clips() -> None:
    clip = torch.arange(100 * 64, dtype=torch.float32).reshape(100, 64)
    torch.manual_seed(0)
    starts = set()
    for _ in range(20):
        crop = random_crop(clip, 30, 0.0)
        start = int(crop[0, 0].item()) // 64
        assert torch.equal(crop, clip[start : start + 30])
        starts.add(start)
    assert len(starts) > 5
    short = random_crop(clip[:10], 30, SILENCE_LOG_MEL)
    assert short.shape == (30, 64) and torch.equal(short[:10], clip[:10]) and (short[10:] == SILENCE_LOG_MEL).all()


def test_collate_whole_clips_and_crops(split: SplitData) -> None:
    dataset = make_dataset(split, "caption")
    items = [dataset[i] for i in (0, 3, 6, 9)]
    audio, text, clip_ids = Collate(None, 0.0)(items)
    assert audio.shape == (4, max(len(item[0]) for item in items), 64)
    assert text.shape == (4, 16) and clip_ids.tolist() == [0, 1, 2, 3]
    audio, _, _ = Collate(64, SILENCE_LOG_MEL)(items)
    assert audio.shape == (4, 64, 64)


def test_preloaded_and_per_item_reading_agree_also_in_workers(split: SplitData) -> None:
    preloaded = FeatureStore(split.h5_path, split.clip_fids, preload=True)
    on_disk = FeatureStore(split.h5_path, split.clip_fids, preload=False)
    assert preloaded.preloaded and not on_disk.preloaded
    for fid in split.clip_fids:
        assert np.array_equal(preloaded[fid], on_disk[fid])
    dataset = make_dataset(split, "caption", preload=False)
    loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=Collate(None, 0.0))
    first = torch.cat([audio[:, :70] for audio, _, _ in loader])  # every clip has at least 70 frames
    expected = torch.stack([dataset[i][0][:70] for i in range(len(dataset))])
    assert torch.equal(first, expected)


def test_missing_clip_is_named(split: SplitData) -> None:
    with pytest.raises(KeyError, match="nope"):
        load_all(split.h5_path, ["nope"])


def test_a_streamed_clip_holding_nan_is_named_with_its_file_also_in_a_worker(split: SplitData) -> None:
    with h5py.File(split.h5_path, "a") as h5:
        h5["dev002"][3, 5] = np.nan
    with pytest.raises(FeatureExtractionError, match=f"'dev002' in {split.h5_path}"):
        FeatureStore(split.h5_path, split.clip_fids, preload=False)["dev002"]
    loader = DataLoader(make_dataset(split, "caption", preload=False), batch_size=6, num_workers=2,
                        collate_fn=Collate(None, 0.0))
    with pytest.raises(FeatureExtractionError, match=f"'dev002' in {split.h5_path}"):
        list(loader)


def test_reseeded_draws_are_the_same_in_worker_processes_and_change_with_the_epoch(split: SplitData) -> None:
    """Clip sampling draws a caption, crops draw a window: keyed to (seed, epoch, item), not to the process."""

    def epoch(workers: int, number: int) -> list[torch.Tensor]:
        dataset, collate = make_dataset(split, "clip", preload=workers == 0), Collate(64, SILENCE_LOG_MEL)
        reseed(dataset, collate, seed=0, epoch=number)
        loader = DataLoader(dataset, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0),
                            collate_fn=collate, num_workers=workers)
        return [tensor for batch in loader for tensor in batch]

    in_process = epoch(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(in_process, epoch(2, 1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(in_process, epoch(0, 2), strict=True))
