"""course_lib.loss: the baseline's InfoNCE, checked against a plain per-anchor loop written here.

The reference follows the baseline's LogSoftmaxLoss (utils/criterion_utils.py) anchor by anchor: the
candidates of anchor i are the items of other clips plus i itself; the loss is the sum of the
text->audio and audio->text cross-entropies, averaged over the anchors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.loss import TEMPERATURE, infonce_loss, same_clip_mask


def per_anchor_infonce(audio: torch.Tensor, text: torch.Tensor, clip_ids: list[int], temperature: float) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(clip_ids)):
        candidates = [j for j in range(len(clip_ids)) if clip_ids[j] != clip_ids[i]] + [i]  # i last, as the baseline
        t2a = torch.stack([audio[j] @ text[i] for j in candidates]) / temperature
        a2t = torch.stack([audio[i] @ text[j] for j in candidates]) / temperature
        total = total + (-t2a[-1] + torch.logsumexp(t2a, 0)) + (-a2t[-1] + torch.logsumexp(a2t, 0))
    return total / len(clip_ids)


def unit(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize(
    "clip_ids",
    [
        [0, 1, 2, 3, 4, 5],  # every clip once
        [0, 0, 1, 2, 2, 2, 3, 4],  # repeated clips
        [7, 3, 7, 7, 1, 3, 0, 5, 5, 1, 7, 2],  # repeated clips, shuffled
        [4, 4, 4, 4, 4],  # every item shares one clip: only the positive is left in each softmax
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_loss_equals_the_per_anchor_loop(clip_ids: list[int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    audio, text = unit(len(clip_ids), 16, generator), unit(len(clip_ids), 16, generator)
    expected = per_anchor_infonce(audio, text, clip_ids, TEMPERATURE)
    got = infonce_loss(audio.float(), text.float(), torch.tensor(clip_ids), TEMPERATURE)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6, rel=1e-6)


def test_one_shared_clip_gives_zero_loss() -> None:
    audio = unit(4, 8, torch.Generator().manual_seed(0)).float()
    loss = infonce_loss(audio, audio.flip(0), torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_random_embeddings_give_about_twice_log_batch() -> None:
    """Independent random unit vectors in 300-d score about N(0, 1/300): each direction is about log(B) + var/2."""
    generator = torch.Generator().manual_seed(3)
    audio, text = unit(256, 300, generator).float(), unit(256, 300, generator).float()
    loss = infonce_loss(audio, text, torch.arange(256))
    variance = 1 / (300 * TEMPERATURE**2)
    assert loss.item() == pytest.approx(2 * (math.log(256) + variance / 2), rel=0.03)


def test_matching_pairs_score_lower_than_swapped_ones() -> None:
    generator = torch.Generator().manual_seed(4)
    audio = unit(8, 32, generator).float()
    text = F.normalize(audio + 0.1 * unit(8, 32, generator).float(), dim=-1)
    ids = torch.arange(8)
    assert infonce_loss(audio, text, ids) < infonce_loss(audio, text.roll(1, dims=0), ids)


def test_mask_leaves_the_diagonal_and_other_clips_in() -> None:
    mask = same_clip_mask(torch.tensor([0, 0, 1]))
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_gradient_reaches_every_unmasked_pair_and_no_masked_one() -> None:
    """With one-hot clip embeddings, text[i, j] is the score of caption i against clip j (times the temperature),
    so text.grad is the gradient of the loss with respect to each entry of the score matrix (temperature 1 keeps every
    softmax probability well above rounding)."""
    clip_ids = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    audio = torch.eye(len(clip_ids)).requires_grad_(True)  # unit length: clip j is the j-th axis
    text = unit(len(clip_ids), len(clip_ids), torch.Generator().manual_seed(6)).float().requires_grad_(True)
    infonce_loss(audio, text, clip_ids, temperature=1.0).backward()
    masked = same_clip_mask(clip_ids)
    assert masked.sum() == 8  # (0, 1), (1, 0) and the six pairs among 3, 4 and 5
    assert (text.grad[masked] == 0).all(), "a pair left out of the softmax must get no gradient"
    assert (text.grad[~masked].abs() > 1e-3).all(), "every pair in the softmax, the diagonal included, gets a gradient"
    assert audio.grad.abs().sum() > 0
