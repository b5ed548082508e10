"""Tiny Clotho-format folders for the tests of course_lib.clotho and course_lib.download (not a test module itself).

The local file server those tests download from is course_lib._stand_ins.FileServer, which ``make rehearsal``
serves Clotho from too; it is re-exported here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from course_lib._stand_ins import FileServer

__all__ = ["FileServer", "SHARED_NAME", "TINY_CLIPS", "captions_for", "write_clotho_folder", "write_split", "write_wav"]

SAMPLE_RATE = 8000
SHARED_NAME = "City Ambience w_ Car Passing_1-2.wav"  # in development and validation, as in Clotho v2.1

# {split: [(file name, seconds), ...]}: a leading-space name and the name shared by two splits.
TINY_CLIPS = {
    "development": [(" Ambience Birds.wav", 1.5), ("dog barking.wav", 0.5), (SHARED_NAME, 0.25)],
    "validation": [(" e ieio ieai.wav", 0.75), (SHARED_NAME, 0.5)],
    "evaluation": [("rain on a roof.wav", 1.0), ("walkie-talkie chatter.wav", 0.5)],
}


def captions_for(fname: str) -> list[str]:
    """Five raw captions per clip, with punctuation, capitals, a pronoun I and a trailing space."""
    stem = fname.strip().removesuffix(".wav")
    return [
        f"A recording of {stem}, loudly!",
        f"I think it is {stem}.",
        f"Someone uses a walkie-talkie near {stem}",
        f"It's  {stem}   outside ",
        f"The {stem}; then silence?",
    ]


def write_wav(path: Path, seconds: float, sample_rate: int = SAMPLE_RATE) -> None:
    samples = np.sin(2 * np.pi * 440 * np.arange(round(seconds * sample_rate)) / sample_rate).astype(np.float32)
    sf.write(path, 0.1 * samples, sample_rate, subtype="PCM_16")


def write_split(dataset_dir: Path, split: str, clips: list[tuple[str, float]], write_audio: bool = True) -> None:
    """The captions CSV, the ISO-8859-1 metadata CSV and (optionally) the wavs of one split."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *(f"caption_{n}" for n in range(1, 6))])
        for fname, _ in clips:
            writer.writerow([fname, *captions_for(fname)])
    with open(dataset_dir / f"clotho_metadata_{split}.csv", "w", newline="", encoding="ISO-8859-1") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"])
        for number, (fname, _) in enumerate(clips):
            writer.writerow([fname, "café;pluie;élan", number, f"https://freesound.org/s/{number}", "", "Jürgen", "CC0"])
    if write_audio:
        (dataset_dir / split).mkdir(exist_ok=True)
        for fname, seconds in clips:
            write_wav(dataset_dir / split / fname, seconds)


def write_clotho_folder(dataset_dir: Path, clips: dict[str, list[tuple[str, float]]] | None = None) -> Path:
    """A complete Clotho-format folder with every split of ``clips`` (default: TINY_CLIPS)."""
    for split, split_clips in (clips or TINY_CLIPS).items():
        write_split(dataset_dir, split, split_clips)
    return dataset_dir


def fill_disk_when_writing(monkeypatch, module, marker: str) -> None:
    """Make ``module``'s open() give a file that fails with ENOSPC (a full disk) when its path contains ``marker``."""
    import errno
    import io

    class FillsUp(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(module, "open", lambda path, mode: FillsUp() if marker in str(path) else real_open(path, mode),
                        raising=False)
