"""PANNs transfer: start the CNN14 encoder from weights trained on AudioSet, as the baseline does.

Taught in notebook 03, next to ``course_lib.cnn14``. PANNs' ``Cnn14_mAP=0.431.pth`` holds 84 tensors
under ``'model'``; the baseline's ``preprocessing/cnn14_transfer.py`` copies 79 of them into its
``CNN14Encoder``. The lesson is two steps, on this first screen:

1. ``panns_key_map``: our key -> PANNs key. bn0 keeps its name; each of the 6 conv blocks is a
   ``Sequential`` here (conv at index 0 and 3, BatchNorm at 1 and 4: 8 modules a block) and named
   ``conv_block{k}.conv1/bn1/conv2/bn2`` there; PANNs' ``fc1`` is our ``fc.1``.
2. ``transfer_panns``: for every pair, check the shapes agree and copy the tensor; ``fc2`` (the new
   projection to the 300-d embedding) stays at its random initialisation, and the five tensors
   PANNs uses for its own STFT, mel filters and AudioSet head are dropped (``PANNS_DROPPED``).

After the lesson: loading saved encoder weights strictly (``load_encoder_weights``), downloading the
PANNs file once (``ensure_pretrained_encoder``, which falls back to random initialisation within
seconds when offline); reading checkpoint files safely lives in ``course_lib._panns_weights``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from course_lib._panns_weights import (
    encoder_state,
    looks_like,
    made_for,
    random_panns_checkpoint,
    read_checkpoint,
    refuse_non_finite,
    width_of,
)
from course_lib._report import say
from course_lib.cnn14 import BLOCK_CHANNELS, MODULES_PER_BLOCK, CNN14Encoder, encoder_from_config
from course_lib.config import OUT_DIM, Config
from course_lib.download import DownloadError, fetch, file_md5, host_reachable
from course_lib.files import atomic_path, remove_stale

__all__ = [
    "PANNS_DROPPED", "PANNS_FILENAME", "PANNS_MD5", "PANNS_URL", "TransferReport", "encoder_state",
    "ensure_pretrained_encoder", "fetch_panns_checkpoint", "load_encoder_weights", "looks_like", "made_for",
    "panns_key_map", "panns_state", "random_panns_checkpoint", "save_transferred_encoder", "transfer_panns", "width_of",
]

PANNS_DROPPED = {
    "spectrogram_extractor.stft.conv_real.weight": "PANNs' STFT (real part), a frozen conv; our log-mels come ready-made",
    "spectrogram_extractor.stft.conv_imag.weight": "PANNs' STFT (imaginary part), a frozen conv; same reason",
    "logmel_extractor.melW": "PANNs' mel filter bank (32 kHz, 50-14000 Hz); our features use their own",
    "fc_audioset.weight": "the 527-class AudioSet tagging head; retrieval needs an embedding, not tags",
    "fc_audioset.bias": "bias of the AudioSet tagging head",
}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# --- the lesson: map the keys, copy the tensors ---------------------------------------------------------


def panns_key_map() -> dict[str, str]:
    """Our key -> PANNs key for the 79 tensors the baseline's transfer copies. Taught in notebook 03, section 5."""
    key_map = {f"bn0.{name}": f"bn0.{name}" for name in _BN_KEYS}
    for k in range(1, len(BLOCK_CHANNELS) + 1):
        first, ours, theirs = MODULES_PER_BLOCK * (k - 1), "cnn.{}.{}", f"conv_block{k}.{{}}.{{}}"
        for conv, bn, offset in (("conv1", "bn1", 0), ("conv2", "bn2", 3)):  # conv at 0/3, BatchNorm at 1/4
            key_map[ours.format(first + offset, "weight")] = theirs.format(conv, "weight")
            key_map |= {ours.format(first + offset + 1, name): theirs.format(bn, name) for name in _BN_KEYS}
    key_map.update({"fc.1.weight": "fc1.weight", "fc.1.bias": "fc1.bias"})
    return key_map


def transfer_panns(
    checkpoint_path_or_state: str | Path | Mapping, out_dim: int = OUT_DIM, width: float = 1.0
) -> tuple[CNN14Encoder, TransferReport]:
    """A CNN14Encoder holding PANNs' bn0, conv blocks and fc1, with a random fc2, and a report of what moved.

    Taught in notebook 03, section 5. Refuses a file that is not PANNs' Cnn14, or holds NaN or infinite weights.
    """
    checkpoint, source = read_checkpoint(checkpoint_path_or_state, trusted_md5=PANNS_MD5)
    panns = panns_state(checkpoint, source)
    encoder = CNN14Encoder(out_dim=out_dim, width=width)
    state = encoder.state_dict()
    key_map = panns_key_map()
    for ours, theirs in key_map.items():
        if tuple(panns[theirs].shape) != tuple(state[ours].shape):
            width_in_file = width_of(panns["conv_block1.conv1.weight"])
            raise ValueError(
                f"{source}: {theirs} has shape {tuple(panns[theirs].shape)} but {ours} needs {tuple(state[ours].shape)} "
                f"(width={width:g}). The checkpoint's conv blocks are width {width_in_file:g}; pass width={width_in_file:g}."
            )
        state[ours] = panns[theirs]
    encoder.load_state_dict(state, strict=True)
    dropped = {key: why for key, why in PANNS_DROPPED.items() if key in panns}
    return encoder, TransferReport(copied=key_map, dropped=dropped)


@dataclass
class TransferReport:
    """What a PANNs transfer copied, dropped and left at random initialisation."""

    copied: dict[str, str]  # our key -> PANNs key
    dropped: dict[str, str] = field(default_factory=lambda: dict(PANNS_DROPPED))  # PANNs key -> why
    random: list[str] = field(default_factory=lambda: ["fc2.weight", "fc2.bias"])

    def __str__(self) -> str:
        lines = [
            f"Copied {len(self.copied)} tensors from PANNs Cnn14: bn0 (5), 6 conv blocks (12 each: "
            "2 conv weights + 2 BatchNorms of 5 tensors), fc1 -> fc.1 (2).",
            f"Dropped {len(self.dropped)} tensors:",
            *(f"  {key}: {why}" for key, why in self.dropped.items()),
            f"Left at random (Kaiming) initialisation: {', '.join(self.random)} (the new projection to our embedding).",
        ]
        return "\n".join(lines)


# --- after the lesson: checks, saved weights, getting the PANNs file ------------------------------------


PANNS_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
PANNS_MD5 = "541141fa2ee191a88f24a3219fff024e"
PANNS_BYTES = 327_428_481
PANNS_FILENAME = "Cnn14_mAP=0.431.pth"
PROBE_SECONDS = 3.0  # how long to wait for the download host to answer before calling it offline


def panns_state(checkpoint: Any, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """PANNs' tensors (under 'model'), checked to be Cnn14's: all 79 mapped keys present, nothing foreign."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    elif not (isinstance(checkpoint, Mapping) and "conv_block1.conv1.weight" in checkpoint):
        keys = set(checkpoint) if isinstance(checkpoint, Mapping) else set()
        raise ValueError(f"{source} is not a PANNs checkpoint: it has no 'model' key. It looks like {looks_like(keys)}.")
    needed = set(panns_key_map().values())
    missing, foreign = sorted(needed - set(checkpoint)), sorted(set(checkpoint) - needed - set(PANNS_DROPPED))
    if missing or foreign:
        raise ValueError(
            f"{source} is not a PANNs Cnn14 checkpoint: {len(missing)} Cnn14 tensors missing (e.g. {missing[:3]}), "
            f"{len(foreign)} tensors Cnn14 does not have (e.g. {foreign[:3]}); another PANNs network will not map."
        )
    refuse_non_finite({key: checkpoint[key] for key in needed}, source)
    return dict(checkpoint)


def load_encoder_weights(encoder: CNN14Encoder, path_or_state: str | Path | Mapping | tuple) -> CNN14Encoder:
    """Load saved weights (e.g. ``audio_encoder.pth``, ``CNN14_300.pth``) strictly, with errors that say why not.

    Taught in notebook 03, sections 5 and 7. A folder, a file that is not a checkpoint, one that pickles Python objects
    (unless it is the published PANNs file), other keys or shapes, NaN or infinite weights: each is refused.
    """
    checkpoint, source = read_checkpoint(path_or_state, trusted_md5=PANNS_MD5)
    state = encoder_state(checkpoint, source)
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit CNN14Encoder: {len(missing)} keys missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). It looks like {looks_like(set(state))}."
        )
    wrong = [key for key, value in expected.items() if tuple(state[key].shape) != tuple(value.shape)]
    if wrong:
        key = wrong[0]
        raise ValueError(
            f"{source} has {len(wrong)} tensors of other shapes than this encoder "
            f"(out_dim={encoder.out_dim}, width={encoder.width:g}), e.g. {key}: {tuple(state[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} here. The file was made for {made_for(state)}: build that to load it."
        )
    refuse_non_finite(state, source)
    encoder.load_state_dict(state, strict=True)
    return encoder


def save_transferred_encoder(encoder: CNN14Encoder, path: str | Path) -> Path:
    """Write the encoder's bare state_dict (like the baseline's CNN14_300.pth) atomically. Taught in notebook 03, section 5."""
    path = Path(path)
    remove_stale(path.parent, path.name)  # a killed earlier save may have left a 321 MB temporary
    with atomic_path(path) as temporary:
        torch.save(encoder.state_dict(), temporary)
    return path


def fetch_panns_checkpoint(cfg: Config, url: str = PANNS_URL, retries: int = 3, timeout_seconds: float = 60.0) -> Path:
    """PANNs' Cnn14_mAP=0.431.pth (327 MB, md5-checked) in cfg.downloads_dir, downloaded once.

    Raises ConnectionError when the host does not answer within PROBE_SECONDS or the transfer keeps
    breaking off, and DownloadError for the rest (a wrong md5, a refusal such as 404, a full disk).
    """
    path = Path(cfg.downloads_dir) / PANNS_FILENAME
    if path.is_file() and file_md5(path) == PANNS_MD5:
        return path
    host = urlparse(url).netloc
    if not host_reachable(url, PROBE_SECONDS):
        raise ConnectionError(f"could not connect to {host} within {PROBE_SECONDS:g} s")
    print(f"Downloading {PANNS_FILENAME} ({PANNS_BYTES / 1e6:.0f} MB) from {host} into {path.parent}.")
    try:
        return fetch(url, PANNS_MD5, path, retries=retries, timeout_seconds=timeout_seconds)
    except DownloadError as exc:
        if exc.kind == "connection":  # no answer or a broken transfer on every try: as good as offline
            tries = "1 try" if retries == 1 else f"{retries} tries"
            raise ConnectionError(f"the download from {host} broke off ({tries})") from exc
        raise  # a wrong md5, a refusal (404) or a full disk is not "offline": let it be seen


def ensure_pretrained_encoder(
    cfg: Config, url: str = PANNS_URL, retries: int = 3, timeout_seconds: float = 60.0, verbose: bool = True
) -> tuple[CNN14Encoder, str]:
    """The profile's encoder, with PANNs weights when the profile asks for them and they can be had; says which.

    Taught in notebook 03, section 5. ``verbose=False`` keeps quiet unless the weights could not be had (offline).
    """
    settings = cfg.settings["audio_encoder"]
    if not settings["pretrained"] or settings["width"] != 1.0:
        reason = "sets pretrained: false" if not settings["pretrained"] else "asks for PANNs weights, made only at width 1"
        status = (
            f"Profile {cfg.profile!r} (CNN14 width {settings['width']:g}) {reason}: "
            "the encoder starts from random (Kaiming) initialisation."
        )
        say(verbose, status)
        return encoder_from_config(cfg), status
    saved = Path(cfg.models_dir) / f"CNN14_{OUT_DIM}.pth"
    if saved.is_file():
        try:
            encoder = load_encoder_weights(CNN14Encoder(out_dim=OUT_DIM), saved)
            status = f"Loaded the PANNs-initialised encoder from {saved}."
            say(verbose, status)
            return encoder, status
        except (ValueError, OSError) as exc:
            print(f"{saved} cannot be used ({exc}); transferring the PANNs weights again.")
    try:
        checkpoint = fetch_panns_checkpoint(cfg, url, retries=retries, timeout_seconds=timeout_seconds)
    except ConnectionError as exc:
        status = (f"Offline: no PANNs weights ({exc}); continuing from random initialisation. To start from them, download "
                  f"{url} by hand ({PANNS_BYTES / 1e6:.0f} MB, md5 {PANNS_MD5}) and save it as "
                  f"{Path(cfg.downloads_dir) / PANNS_FILENAME}: the next run checks its md5 and transfers it.")
        print(status)
        return CNN14Encoder(out_dim=OUT_DIM), status
    encoder, report = transfer_panns(checkpoint, out_dim=OUT_DIM)
    save_transferred_encoder(encoder, saved)
    status = f"Transferred PANNs Cnn14 into the encoder and saved it as {saved}.\n{report}"
    say(verbose, status)
    return encoder, status
