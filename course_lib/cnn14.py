"""The CNN14 audio encoder, PANNs checkpoint transfer, and loading released encoder weights.

Taught in notebook 03. ``CNN14Encoder`` is the baseline's encoder (DCASE 2023 Task 6B,
``models/audio_encoders.py``): bn0 over the 64 mel bins, six conv blocks in one ``nn.Sequential``
(``cnn.0`` .. ``cnn.47``), mean over frequency, max + mean over time, ``fc`` and ``fc2``. Its
state_dict keys match the baseline's, so the released ``audio_encoder.pth`` (Zenodo 7752975) and a
``CNN14_300.pth`` made by the baseline's transfer script load with ``load_state_dict(strict=True)``.

``transfer_panns`` copies 79 tensors of PANNs' ``Cnn14_mAP=0.431.pth`` into the encoder, as the
baseline's ``preprocessing/cnn14_transfer.py`` does; ``ensure_pretrained_encoder`` does it once
per data root and falls back to random initialisation, with one clear line, when offline.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from course_lib.download import DownloadError, fetch

N_MELS = 64
BLOCK_CHANNELS = (64, 128, 256, 512, 1024, 2048)
MODULES_PER_BLOCK = 8  # conv, BN, ReLU, conv, BN, ReLU, AvgPool2d(2), Dropout(0.2)
MIN_FRAMES = 2 ** len(BLOCK_CHANNELS)  # six 2x poolings: fewer frames would leave no time step
SILENCE_LOG_MEL = float(np.log(np.spacing(1)))  # the baseline's log-mel of digital silence, about -36.04

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
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def init_weights(module: nn.Module) -> None:
    """The baseline's init: Kaiming-normal conv/linear weights, zero bias; BatchNorm weight 1, bias 0."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    """One CNN14 block as 8 modules: (conv3x3 - BN - ReLU) x 2, 2x2 average pooling, dropout 0.2."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.AvgPool2d(kernel_size=2),
        nn.Dropout(0.2),
    ]


class CNN14Encoder(nn.Module):
    """Log-mels (B, T, 64) -> clip embeddings (B, out_dim); ``width`` scales every block's channels."""

    def __init__(self, out_dim: int = 300, width: float = 1.0):
        super().__init__()
        if not width > 0 or int(out_dim) < 1:
            raise ValueError(f"CNN14Encoder needs width > 0 and out_dim >= 1; got width={width}, out_dim={out_dim}.")
        self.out_dim, self.width = int(out_dim), float(width)
        self.channels = tuple(max(1, round(c * self.width)) for c in BLOCK_CHANNELS)
        self.bn0 = nn.BatchNorm2d(N_MELS)
        layers, in_channels = [], 1
        for out_channels in self.channels:
            layers += conv_block(in_channels, out_channels)
            in_channels = out_channels
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(in_channels, in_channels), nn.ReLU(), nn.Dropout(0.5))
        self.fc2 = nn.Linear(in_channels, self.out_dim)
        self.apply(init_weights)
        self._warned_short = False

    @property
    def blocks(self) -> list[nn.Sequential]:
        """The six conv blocks as views of ``self.cnn`` (they share its modules)."""
        return [self.cnn[i : i + MODULES_PER_BLOCK] for i in range(0, len(self.cnn), MODULES_PER_BLOCK)]

    def check_input(self, log_mels: torch.Tensor) -> torch.Tensor:
        """Refuse wrong shapes with a clear message; pad clips shorter than MIN_FRAMES with silence."""
        shape = tuple(log_mels.shape)
        if log_mels.ndim == 2 and shape[1] == N_MELS:
            raise ValueError(f"CNN14Encoder expects a batch (B, T, {N_MELS}); got one clip {shape}. Use x.unsqueeze(0).")
        if log_mels.ndim == 3 and shape[1] == N_MELS and shape[2] != N_MELS:
            raise ValueError(f"CNN14Encoder expects (B, T, {N_MELS}); got {shape}, which looks transposed: x.transpose(1, 2).")
        if log_mels.ndim != 3 or shape[2] != N_MELS:
            raise ValueError(f"CNN14Encoder expects log-mels shaped (batch, frames, {N_MELS} mel bins); got {shape}.")
        if not log_mels.is_floating_point():
            raise TypeError(f"CNN14Encoder expects float log-mels; got {log_mels.dtype}.")
        log_mels = log_mels.to(self.bn0.weight.dtype)  # float64 from NumPy 2 features would fail in conv
        if shape[1] < MIN_FRAMES:
            if not self._warned_short:
                warnings.warn(
                    f"A clip of {shape[1]} frames is shorter than CNN14's minimum of {MIN_FRAMES} frames "
                    f"(~{MIN_FRAMES * 0.02:.2f} s at a 20 ms hop); it is padded on the right with the log-mel of "
                    f"silence ({SILENCE_LOG_MEL:.2f}). This warning is shown once per encoder.",
                    stacklevel=2,
                )
                self._warned_short = True
            padding = (0, 0, 0, MIN_FRAMES - shape[1])  # (mel left, mel right, time left, time right)
            log_mels = nn.functional.pad(log_mels, padding, value=SILENCE_LOG_MEL)
        return log_mels

    def normalise_mels(self, log_mels: torch.Tensor) -> torch.Tensor:
        """(B, T, 64) -> (B, 1, T, 64) with bn0 normalising each mel bin (mel bins become channels)."""
        x = log_mels.unsqueeze(1).transpose(1, 3)  # (B, 64, T, 1)
        return self.bn0(x).transpose(1, 3)

    @staticmethod
    def pool_clip(feature_maps: torch.Tensor) -> torch.Tensor:
        """(B, C, T', F') -> (B, C): mean over frequency, then max + mean over time."""
        x = feature_maps.mean(dim=3)
        return x.max(dim=2).values + x.mean(dim=2)

    def forward(self, log_mels: torch.Tensor) -> torch.Tensor:
        x = self.normalise_mels(self.check_input(log_mels))
        x = self.pool_clip(self.cnn(x))
        return self.fc2(self.fc(x))


def encoder_from_config(cfg: Any) -> CNN14Encoder:
    """The profile's encoder: width from cfg.settings['audio_encoder'], out_dim from the baseline."""
    out_dim = cfg.baseline["DualEncoderModel"]["audio_enc"]["out_dim"]
    return CNN14Encoder(out_dim=out_dim, width=cfg.settings["audio_encoder"]["width"])


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (weights and biases; BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def describe_blocks(encoder: CNN14Encoder, frames: int | torch.Tensor = 751) -> list[dict[str, Any]]:
    """Stage by stage: name, output shape and parameters, for one clip of ``frames`` frames (or a given batch)."""
    x = frames if isinstance(frames, torch.Tensor) else torch.full((1, frames, N_MELS), SILENCE_LOG_MEL)
    was_training = encoder.training
    encoder.eval()
    rows = [{"name": "input log-mels", "output shape": tuple(x.shape), "parameters": 0}]
    x = encoder.normalise_mels(encoder.check_input(x))
    rows.append({"name": "bn0", "output shape": tuple(x.shape), "parameters": count_parameters(encoder.bn0)})
    for number, block in enumerate(encoder.blocks, start=1):
        x = block(x)
        rows.append({"name": f"block {number}", "output shape": tuple(x.shape), "parameters": count_parameters(block)})
    x = encoder.pool_clip(x)
    rows.append({"name": "freq mean, time max+mean", "output shape": tuple(x.shape), "parameters": 0})
    x = encoder.fc(x)
    rows.append({"name": "fc", "output shape": tuple(x.shape), "parameters": count_parameters(encoder.fc)})
    x = encoder.fc2(x)
    rows.append({"name": "fc2", "output shape": tuple(x.shape), "parameters": count_parameters(encoder.fc2)})
    encoder.train(was_training)
    return rows


# --- loading saved weights -----------------------------------------------------------------


def _load(path_or_state: str | Path | Mapping | tuple) -> tuple[Any, str]:
    """A checkpoint object and a name for messages; files are read on the CPU, tensors only."""
    if not isinstance(path_or_state, str | os.PathLike):
        return path_or_state, "the given checkpoint"
    path = Path(path_or_state)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), str(path)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}).") from exc


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


def made_for(state: Mapping[str, torch.Tensor]) -> str:
    """The CNN14Encoder arguments a state_dict was saved from, read off two tensor shapes."""
    width = state["cnn.0.weight"].shape[0] / BLOCK_CHANNELS[0]
    return f"CNN14Encoder(out_dim={state['fc2.weight'].shape[0]}, width={width:g})"


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
            width_in_file = panns["conv_block1.conv1.weight"].shape[0] / BLOCK_CHANNELS[0]
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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(encoder.state_dict(), temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def fetch_panns_checkpoint(cfg: Any, url: str = PANNS_URL, retries: int = 3, timeout_seconds: float = 60.0) -> Path:
    """Download PANNs' Cnn14_mAP=0.431.pth (327 MB, md5-checked) into cfg.downloads_dir, once."""
    return fetch(url, PANNS_MD5, Path(cfg.downloads_dir) / PANNS_FILENAME, retries=retries, timeout_seconds=timeout_seconds)


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
    except DownloadError as exc:
        if not isinstance(exc.__cause__, OSError):  # a checksum failure is not "offline": let it be seen
            raise
        status = f"Offline: could not reach {urlparse(url).netloc} for the PANNs weights; continuing from random initialisation."
        print(status)
        return CNN14Encoder(out_dim=out_dim), status
    encoder, report = transfer_panns(checkpoint, out_dim=out_dim)
    save_transferred_encoder(encoder, saved)
    status = f"Transferred PANNs Cnn14 into the encoder and saved it as {saved}.\n{report}"
    print(status)
    return encoder, status
