"""The CNN14 audio encoder: the network that turns a clip's log-mels into one embedding.

Taught in notebook 03. This module holds the architecture only; where the encoder's weights come
from (PANNs transfer, released weights) is ``course_lib.panns``.

``CNN14Encoder`` is the baseline's encoder (DCASE 2023 Task 6B, ``models/audio_encoders.py``): bn0
over the 64 mel bins, six conv blocks in one ``nn.Sequential`` (``cnn.0`` .. ``cnn.47``), mean over
frequency, max + mean over time, ``fc`` and ``fc2``. Its state_dict keys match the baseline's, so the
released ``audio_encoder.pth`` (Zenodo 7752975) and a ``CNN14_300.pth`` made by the baseline's
transfer script load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.config import HOP_SECONDS, OUT_DIM

__all__ = [
    "N_MELS", "BLOCK_CHANNELS", "MODULES_PER_BLOCK", "MIN_FRAMES", "SILENCE_LOG_MEL", "FRAMES_15_S", "init_weights",
    "conv_block", "CNN14Encoder", "encoder_from_config", "count_parameters", "describe_blocks",
]

N_MELS = 64
BLOCK_CHANNELS = (64, 128, 256, 512, 1024, 2048)
MODULES_PER_BLOCK = 8  # conv, BN, ReLU, conv, BN, ReLU, AvgPool2d(2), Dropout(0.2)
MIN_FRAMES = 2 ** len(BLOCK_CHANNELS)  # six 2x poolings: fewer frames would leave no time step
SILENCE_LOG_MEL = float(np.log(np.spacing(1)))  # the baseline's log-mel of digital silence, about -36.04
FRAMES_15_S = round(15 / HOP_SECONDS) + 1  # a 15 s clip (Clotho's shortest), framed with centred windows


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
    """One CNN14 block as 8 modules: (conv3x3 - BN - ReLU) x 2, 2x2 average pooling, dropout 0.2.

    Taught in notebook 03, section 2.
    """
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
    """Log-mels (B, T, 64) -> clip embeddings (B, out_dim); ``width`` scales every block's channels.

    Taught in notebook 03, section 2.
    """

    def __init__(self, out_dim: int = OUT_DIM, width: float = 1.0):
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
                    f"(~{MIN_FRAMES * HOP_SECONDS:.2f} s at a {HOP_SECONDS * 1000:g} ms hop); it is padded on the right with "
                    f"the log-mel of silence ({SILENCE_LOG_MEL:.2f}). This warning is shown once per encoder.",
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
    """The profile's encoder: width from cfg.settings['audio_encoder'], the baseline's out_dim (config.OUT_DIM).

    Taught in notebook 03, section 4 (first used in section 3).
    """
    return CNN14Encoder(out_dim=OUT_DIM, width=cfg.settings["audio_encoder"]["width"])


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (weights and biases; BatchNorm running statistics are buffers, not counted).

    Taught in notebook 03, section 2.
    """
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def describe_blocks(encoder: CNN14Encoder, frames: int | torch.Tensor = FRAMES_15_S) -> list[dict[str, Any]]:
    """Stage by stage: name, output shape and parameters, for one clip of ``frames`` frames (or a given batch).

    Taught in notebook 03, section 2.
    """
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
