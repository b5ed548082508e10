"""InfoNCE as the baseline computes it: a softmax over the batch, in both directions, at temperature 0.07.

Taught in notebook 05. The baseline's ``LogSoftmaxLoss`` (utils/criterion_utils.py) scores every
caption of the batch against every clip of the batch by dot product (the embeddings are unit
length, so this is the cosine similarity), divides by the temperature, and asks a softmax to pick
the right partner:

    text -> audio:  for caption i, a softmax over the clips of the batch; the target is clip i
    audio -> text:  for clip i, a softmax over the captions of the batch; the target is caption i
    loss = mean over i of (t2a(i) + a2t(i))          summed over the two directions, not averaged

A batch often holds several captions of the same clip (Clotho has five a clip). For anchor i, the
other items j with the same clip are dropped from the softmax: they are neither positives nor
negatives. The baseline loops over the anchors in Python; here one mask does it for the whole batch.

Beyond the baseline (notebook 09): the temperature can be learned (``Temperature``, stored as log tau),
and the targets can be soft: ``distillation_targets`` mixes the one-hot matches with a first model's
softened scores (self-distillation), and ``soft_infonce_loss`` scores a batch against any targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TEMPERATURE", "MIN_TEMPERATURE", "same_clip_mask", "infonce_loss", "Temperature", "distillation_targets",
    "soft_infonce_loss",
]

TEMPERATURE = 0.07  # the baseline's conf.yaml: fixed, not learned
MIN_TEMPERATURE = 0.01  # a learned temperature stops here (CLIP's bound): below it the softmax is nearly an argmax


def same_clip_mask(clip_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) bool, True where j is another item of i's clip: left out of i's softmax (the diagonal stays in).

    Taught in notebook 05, section 2.
    """
    same = clip_ids[:, None] == clip_ids[None, :]
    return same & ~torch.eye(len(clip_ids), dtype=torch.bool, device=clip_ids.device)


def infonce_loss(
    audio_emb: torch.Tensor, text_emb: torch.Tensor, clip_ids: torch.Tensor, temperature: float | torch.Tensor = TEMPERATURE
) -> torch.Tensor:
    """The baseline's symmetric InfoNCE for a batch of (B, D) unit embeddings; clip_ids (B,) marks shared clips.

    Taught in notebook 05, section 2.
    """
    scores = text_emb.float() @ audio_emb.float().T / temperature  # scores[i, j] = s(text i, audio j) / tau
    scores = scores.masked_fill(same_clip_mask(clip_ids), float("-inf"))  # the mask is symmetric
    targets = torch.arange(len(clip_ids), device=scores.device)
    text_to_audio = F.cross_entropy(scores, targets, reduction="none")  # row i: caption i against every clip
    audio_to_text = F.cross_entropy(scores.T, targets, reduction="none")  # row i: clip i against every caption
    return (text_to_audio + audio_to_text).mean()


# --- beyond the baseline (notebook 09) ------------------------------------------------------------


class Temperature(nn.Module):
    """The softmax temperature tau, stored as log tau: fixed (the baseline) or learned with the model.

    Taught in notebook 09, section 2. Learning log tau keeps tau positive, and a step changes it by a factor, not an amount.
    """

    def __init__(self, value: float = TEMPERATURE, learnable: bool = False):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(value)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        """tau = exp(log tau), at least MIN_TEMPERATURE."""
        return self.log_tau.exp().clamp(min=MIN_TEMPERATURE)


def distillation_targets(
    teacher_scores: torch.Tensor, clip_ids: torch.Tensor, weight: float, temperature: float = TEMPERATURE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text->audio, audio->text) targets, (B, B) each: (1 - weight) x the matches + weight x the teacher's softmax.

    Taught in notebook 09, section 6. ``teacher_scores[i, j]`` is a first model's score of caption i against clip j; its softmax
    at ``temperature`` says which clips of the batch that model finds plausible for caption i. Every row sums to 1;
    items of the same clip stay out of each other's rows, as in ``infonce_loss``.
    """
    mask = same_clip_mask(clip_ids)
    matches = torch.eye(len(clip_ids), device=teacher_scores.device)
    softened = [F.softmax((scores.float() / temperature).masked_fill(mask, float("-inf")), dim=1)
                for scores in (teacher_scores, teacher_scores.T)]
    return tuple((1 - weight) * matches + weight * soft for soft in softened)


def soft_infonce_loss(
    audio_emb: torch.Tensor, text_emb: torch.Tensor, clip_ids: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor], temperature: float | torch.Tensor = TEMPERATURE,
) -> torch.Tensor:
    """``infonce_loss`` against soft targets (rows summing to 1): with one-hot targets it is ``infonce_loss``."""
    scores = text_emb.float() @ audio_emb.float().T / temperature
    mask = same_clip_mask(clip_ids)
    scores = scores.masked_fill(mask, float("-inf"))
    text_to_audio = -(targets[0] * F.log_softmax(scores, dim=1).masked_fill(mask, 0.0)).sum(dim=1)
    audio_to_text = -(targets[1] * F.log_softmax(scores.T, dim=1).masked_fill(mask, 0.0)).sum(dim=1)
    return (text_to_audio + audio_to_text).mean()
