"""Audio augmentation for training: SpecAugment's time and frequency masks on a clip's log-mel.

Taught in notebook 09. SpecAugment (Park et al., 2019) hides a few random stretches of time and a few
random bands of mel bins of every training clip, a new draw each time the clip is seen, so the encoder
cannot lean on any one moment or band. Only training batches are masked (``data.Collate`` does it);
validation and evaluation embed the clips untouched. A masked stretch is set to the clip's mean log-mel:
0.0 would be a loud value in this log domain (notebook 05, section 3).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "SPEC_AUGMENT_OFF", "spec_augment", "spec_augment_on",
]

SPEC_AUGMENT_OFF = {"time_masks": 0, "time_width": 40, "freq_masks": 0, "freq_width": 8}  # baseline.yaml's values


def spec_augment(
    log_mel: torch.Tensor, time_masks: int, time_width: int, freq_masks: int, freq_width: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A masked copy of a (T, 64) log-mel: ``time_masks`` stretches of 0..time_width frames, ``freq_masks`` bands of
    0..freq_width mel bins, each set to the clip's mean. Taught in notebook 09, section 4.
    """
    masked, fill = log_mel.clone(), log_mel.mean()
    for axis, count, widest in ((0, time_masks, time_width), (1, freq_masks, freq_width)):
        size = log_mel.shape[axis]
        for _ in range(count):
            width = int(torch.randint(min(widest, size) + 1, (), generator=generator))
            start = int(torch.randint(size - width + 1, (), generator=generator))
            masked.narrow(axis, start, width).fill_(fill)
    return masked


def spec_augment_on(settings: dict[str, Any] | None) -> bool:
    """True when a recipe's ``spec_augment`` settings ask for at least one mask."""
    return bool(settings) and (settings.get("time_masks", 0) > 0 or settings.get("freq_masks", 0) > 0)
