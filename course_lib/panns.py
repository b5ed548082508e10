"""Where the CNN14 encoder's weights come from: PANNs checkpoint transfer and loading saved weights.

Taught in notebook 03, next to ``course_lib.cnn14``. DESIGN's ``cnn14`` room holds three things:
the CNN14 audio encoder, PANNs checkpoint transfer, and loading released encoder weights. The
architecture is in ``course_lib.cnn14``; this module holds the other two, which share the reading of
checkpoint files and their error messages:

* ``load_encoder_weights`` loads saved encoder weights strictly: the baseline's released
  ``audio_encoder.pth`` (Zenodo 7752975), a ``CNN14_300.pth``, a dual-encoder or Ray checkpoint;
* ``transfer_panns`` copies 79 tensors of PANNs' ``Cnn14_mAP=0.431.pth`` into a ``CNN14Encoder``,
  as the baseline's ``preprocessing/cnn14_transfer.py`` does;
* ``ensure_pretrained_encoder`` downloads that checkpoint and transfers it once per data root, and
  falls back to random initialisation, with one clear line and within seconds, when offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from course_lib.cnn14 import BLOCK_CHANNELS, MODULES_PER_BLOCK, N_MELS, CNN14Encoder, encoder_from_config
from course_lib.download import DownloadError, fetch, file_md5, host_reachable
from course_lib.files import atomic_path, remove_stale

PANNS_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
PANNS_MD5 = "541141fa2ee191a88f24a3219fff024e"
PANNS_BYTES = 327_428_481
PANNS_FILENAME = "Cnn14_mAP=0.431.pth"
PANNS_DROPPED = {
    "spectrogram_extractor.stft.conv_real.weight": "PANNs' STFT (real part), a frozen conv; our log-mels come ready-made",
    "spectrogram_extractor.stft.conv_imag.weight": "PANNs' STFT (imaginary part), a frozen conv; same reason",
    "logmel_extractor.melW": "PANNs' mel filter bank (32 kHz, 50-14000 Hz); our features use their own",
    "fc_audioset.weight": "the 527-class AudioSet tagging head; retrieval needs an embedding, not tags",
    "fc_audioset.bias": "bias of the AudioSet tagging head",
}
PROBE_SECONDS = 3.0  # how long to wait for the download host to answer before calling it offline
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# --- loading saved weights -----------------------------------------------------------------


def _load(path_or_state: str | Path | Mapping | tuple) -> tuple[Any, str]:
    """A checkpoint object and a name for messages; files are read on the CPU, tensors only.

    ``weights_only=True`` refuses pickled Python objects besides tensors (unpickling them can run
    code). Only the published PANNs file, recognised by its md5, is then trusted and loaded fully.
    """
    if not isinstance(path_or_state, str | os.PathLike):
        return path_or_state, "the given checkpoint"
    path = Path(path_or_state)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), str(path)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        error = exc
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))  # a Python object weights_only refuses
    what = f"a {refused.group(1)} object besides tensors" if refused else "something weights_only=True refuses"
    if file_md5(path) == PANNS_MD5:
        print(f"{path.name} holds {what}; its md5 is the published PANNs checksum, so it is loaded with weights_only=False.")
        return torch.load(path, map_location="cpu", weights_only=False), str(path)
    if refused:
        raise ValueError(
            f"{path} holds {what}, and its md5 is not the PANNs checksum this course trusts. Unpickling it can run "
            "code: if you trust the file, load it yourself with torch.load(path, weights_only=False) and pass the result."
        ) from error
    raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error}).") from error


def looks_like(keys: set[str]) -> str:
    """A plain description of what a set of state_dict keys belongs to."""
    if {"state", "param_groups"} <= keys:
        return "an optimizer state_dict"
    if "conv_block1.conv1.weight" in keys:
        return "a PANNs Cnn14 checkpoint (map it with transfer_panns)"
    if any(key.startswith("text_enc.") for key in keys):
        return "a text encoder (text_enc.*) without an audio encoder"
    if "cnn.0.weight" in keys:
        return "a CNN14Encoder state_dict"
    return f"not a CNN14 checkpoint (first keys: {sorted(keys)[:4]})"


def encoder_state(checkpoint: Any, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The encoder's state_dict out of a bare state_dict, a DualEncoder one, or a (model, optimizer) tuple."""
    if isinstance(checkpoint, tuple | list) and checkpoint and isinstance(checkpoint[0], Mapping):
        checkpoint = checkpoint[0]  # the baseline's Ray checkpoint: (model_state, optimizer_state)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source} holds a {type(checkpoint).__name__}, not a state_dict.")
    for wrapper in ("model_state_dict", "state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if any(str(key).startswith("audio_enc.") for key in checkpoint):
        return {key[len("audio_enc.") :]: value for key, value in checkpoint.items() if key.startswith("audio_enc.")}
    return dict(checkpoint)


def width_of(first_conv_weight: torch.Tensor) -> float:
    """The width a checkpoint was made at: its first convolution's output channels over CNN14's 64."""
    return first_conv_weight.shape[0] / BLOCK_CHANNELS[0]


def made_for(state: Mapping[str, torch.Tensor]) -> str:
    """The CNN14Encoder arguments a state_dict was saved from, read off two tensor shapes."""
    return f"CNN14Encoder(out_dim={state['fc2.weight'].shape[0]}, width={width_of(state['cnn.0.weight']):g})"


def load_encoder_weights(encoder: CNN14Encoder, path_or_state: str | Path | Mapping | tuple) -> CNN14Encoder:
    """Load saved weights (e.g. ``audio_encoder.pth``, ``CNN14_300.pth``) strictly, with errors that say why not."""
    checkpoint, source = _load(path_or_state)
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
    encoder.load_state_dict(state, strict=True)
    return encoder


# --- PANNs transfer -------------------------------------------------------------------------


def panns_key_map() -> dict[str, str]:
    """Our key -> PANNs key for the 79 tensors the baseline's transfer copies."""
    key_map = {f"bn0.{name}": f"bn0.{name}" for name in _BN_KEYS}
    for k in range(1, len(BLOCK_CHANNELS) + 1):
        first, ours, theirs = MODULES_PER_BLOCK * (k - 1), "cnn.{}.{}", f"conv_block{k}.{{}}.{{}}"
        for conv, bn, offset in (("conv1", "bn1", 0), ("conv2", "bn2", 3)):  # conv at 0/3, BatchNorm at 1/4
            key_map[ours.format(first + offset, "weight")] = theirs.format(conv, "weight")
            key_map |= {ours.format(first + offset + 1, name): theirs.format(bn, name) for name in _BN_KEYS}
    key_map.update({"fc.1.weight": "fc1.weight", "fc.1.bias": "fc1.bias"})
    return key_map


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
    return dict(checkpoint)


def transfer_panns(
    checkpoint_path_or_state: str | Path | Mapping, out_dim: int = 300, width: float = 1.0
) -> tuple[CNN14Encoder, TransferReport]:
    """A CNN14Encoder holding PANNs' bn0, conv blocks and fc1, with a random fc2, and a report of what moved."""
    checkpoint, source = _load(checkpoint_path_or_state)
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


def random_panns_checkpoint(width: float = 1.0, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A stand-in in PANNs' exact layout ({'model': 84 tensors}) filled with random numbers: for tests and demos."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def batch_norm(prefix: str, channels: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": randn(channels), f"{prefix}.bias": randn(channels), f"{prefix}.running_mean": randn(channels),
            f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(int(torch.randint(1, 10**6, (1,), generator=generator))),
        }

    channels = [max(1, round(c * width)) for c in BLOCK_CHANNELS]
    model = {
        "spectrogram_extractor.stft.conv_real.weight": randn(513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": randn(513, 1, 1024),
        "logmel_extractor.melW": torch.rand(513, N_MELS, generator=generator),
        **batch_norm("bn0", N_MELS),
    }
    for k, (in_channels, out_channels) in enumerate(zip([1, *channels], channels, strict=False), start=1):
        model[f"conv_block{k}.conv1.weight"] = randn(out_channels, in_channels, 3, 3)
        model[f"conv_block{k}.conv2.weight"] = randn(out_channels, out_channels, 3, 3)
        model |= batch_norm(f"conv_block{k}.bn1", out_channels) | batch_norm(f"conv_block{k}.bn2", out_channels)
    last = channels[-1]
    model |= {"fc1.weight": randn(last, last), "fc1.bias": randn(last)}
    model |= {"fc_audioset.weight": randn(527, last), "fc_audioset.bias": randn(527)}
    return {"model": model}


def save_transferred_encoder(encoder: CNN14Encoder, path: str | Path) -> Path:
    """Write the encoder's bare state_dict (like the baseline's CNN14_300.pth) atomically."""
    path = Path(path)
    remove_stale(path.parent, path.name)  # a killed earlier save may have left a 321 MB temporary
    with atomic_path(path) as temporary:
        torch.save(encoder.state_dict(), temporary)
    return path


# --- getting the PANNs checkpoint -----------------------------------------------------------


def fetch_panns_checkpoint(cfg: Any, url: str = PANNS_URL, retries: int = 3, timeout_seconds: float = 60.0) -> Path:
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
    cfg: Any, url: str = PANNS_URL, retries: int = 3, timeout_seconds: float = 60.0
) -> tuple[CNN14Encoder, str]:
    """The profile's encoder, with PANNs weights when the profile asks for them and they can be had; says which."""
    settings = cfg.settings["audio_encoder"]
    out_dim = cfg.baseline["DualEncoderModel"]["audio_enc"]["out_dim"]
    if not settings["pretrained"] or settings["width"] != 1.0:
        reason = "sets pretrained: false" if not settings["pretrained"] else "asks for PANNs weights, made only at width 1"
        status = (
            f"Profile {cfg.profile!r} (CNN14 width {settings['width']:g}) {reason}: "
            "the encoder starts from random (Kaiming) initialisation."
        )
        print(status)
        return encoder_from_config(cfg), status
    saved = Path(cfg.models_dir) / f"CNN14_{out_dim}.pth"
    if saved.is_file():
        try:
            encoder = load_encoder_weights(CNN14Encoder(out_dim=out_dim), saved)
            status = f"Loaded the PANNs-initialised encoder from {saved}."
            print(status)
            return encoder, status
        except ValueError as exc:
            print(f"{saved} cannot be used ({exc}); transferring the PANNs weights again.")
    try:
        checkpoint = fetch_panns_checkpoint(cfg, url, retries=retries, timeout_seconds=timeout_seconds)
    except ConnectionError as exc:
        status = f"Offline: no PANNs weights ({exc}); continuing from random initialisation."
        print(status)
        return CNN14Encoder(out_dim=out_dim), status
    encoder, report = transfer_panns(checkpoint, out_dim=out_dim)
    save_transferred_encoder(encoder, saved)
    status = f"Transferred PANNs Cnn14 into the encoder and saved it as {saved}.\n{report}"
    print(status)
    return encoder, status
