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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "TEMPERATURE", "same_clip_mask", "infonce_loss",
]

TEMPERATURE = 0.07  # the baseline's conf.yaml: fixed, not learned


def same_clip_mask(clip_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) bool, True where j is another item of i's clip: left out of i's softmax (the diagonal stays in).

    Taught in notebook 05, section 2.
    """
    same = clip_ids[:, None] == clip_ids[None, :]
    return same & ~torch.eye(len(clip_ids), dtype=torch.bool, device=clip_ids.device)


def infonce_loss(
    audio_emb: torch.Tensor, text_emb: torch.Tensor, clip_ids: torch.Tensor, temperature: float = TEMPERATURE
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
