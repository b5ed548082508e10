"""course_lib._gpu_memory: the step memory model, and CUDA out-of-memory answered with the batch size that fits.

No GPU is needed: torch.cuda.OutOfMemoryError is raised by hand with PyTorch's own wording.
"""

from __future__ import annotations

import pytest
import torch

from course_lib._gpu_memory import CUDA_CONTEXT_BYTES, GIB, HEADROOM, GpuMemoryError, cuda_out_of_memory, step_memory
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import load_config
from course_lib.model import DualEncoder
from course_lib.train import recipe_settings


def oom(total_gib: float) -> torch.cuda.OutOfMemoryError:
    """The error PyTorch raises, worded as PyTorch words it (the total capacity is read back from it)."""
    return torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 754.00 MiB. GPU 0 has a total capacity of {total_gib:.2f} GiB of which "
        "312.00 MiB is free. Including non-PyTorch memory, this process has 7.20 GiB memory in use."
    )


def a_step_that_runs_out(total_gib: float, batch: int, frames: int, mixed_precision: bool):
    """A training step as course_lib.train runs it, failing on the GPU, and translated as train.py wires it."""
    audio = torch.zeros(batch, frames, 64)
    try:
        raise oom(total_gib)  # what model(audio, text) raises when the batch does not fit
    except torch.cuda.OutOfMemoryError as exc:
        raise cuda_out_of_memory(exc, len(audio), audio.shape[1], mixed_precision, recipe="baseline") from exc


def test_the_memory_model_grows_with_the_batch_and_the_clip_length():
    short, long = step_memory(751), step_memory(1501)
    assert long.fixed_bytes == short.fixed_bytes  # weights, gradients and Adam do not depend on the clip
    assert 1.9 < long.per_clip_bytes / short.per_clip_bytes < 2.1  # twice the frames, about twice the activations
    assert long.total(32) - long.total(16) == 16 * (long.per_clip_bytes + long.transient_per_clip_bytes)
    parameters = sum(p.numel() for p in DualEncoder(CNN14Encoder(300, 1.0), 768).parameters())
    assert long.fixed_bytes >= 16 * parameters  # fp32 weights + gradients + Adam's two moments
    half = step_memory(1501, half=True)
    assert 0.45 < half.per_clip_bytes / long.per_clip_bytes < 0.55  # 16-bit activations: half the bytes


@pytest.mark.parametrize("half", [False, True])
def test_the_batch_that_fits_is_the_largest_within_the_budget(half):
    memory = step_memory(1501, half=half)
    for budget in (3 * GIB, 8 * GIB, 14 * GIB):
        fits = memory.batch_that_fits(budget)
        assert memory.total(fits) <= budget < memory.total(fits + 1)
    assert memory.batch_that_fits(memory.fixed_bytes / 2) == 0


def test_cuda_out_of_memory_names_the_batch_that_fits_and_how_to_set_it():
    with pytest.raises(GpuMemoryError) as caught:
        a_step_that_runs_out(total_gib=7.60, batch=32, frames=1501, mixed_precision=False)
    error = caught.value
    expected = step_memory(1501).batch_that_fits(HEADROOM * (7.60 * GIB - CUDA_CONTEXT_BYTES))
    assert 1 <= error.batch_that_fits == expected < 32
    message = str(error)
    assert isinstance(error.__cause__, torch.cuda.OutOfMemoryError)
    assert "at batch 32, clips padded to 1501 frames (30 s), on a GPU of 7.6 GiB" in message
    assert f"Batch {expected} fits" in message
    assert f"cfg.training['baseline']['batch_size'] = {expected}" in message and "COURSE_CONFIG" in message
    assert "does not resume at another batch size" in message and "mixed_precision: true" in message


def test_the_instruction_in_the_message_changes_the_batch_training_uses(tmp_path):
    cfg = load_config("clotho", data_root=tmp_path)
    with pytest.raises(GpuMemoryError) as caught:
        a_step_that_runs_out(total_gib=7.60, batch=32, frames=1501, mixed_precision=False)
    cfg.training["baseline"]["batch_size"] = caught.value.batch_that_fits  # what the message says to run
    assert recipe_settings(cfg, "baseline")[1]["batch_size"] == caught.value.batch_that_fits


def test_mixed_precision_fits_a_larger_batch_than_float32():
    with pytest.raises(GpuMemoryError) as full:
        a_step_that_runs_out(total_gib=7.60, batch=48, frames=1501, mixed_precision=False)
    with pytest.raises(GpuMemoryError) as half:
        a_step_that_runs_out(total_gib=7.60, batch=48, frames=1501, mixed_precision=True)
    assert half.value.batch_that_fits > full.value.batch_that_fits
    assert "16-bit activations (mixed precision)" in str(half.value)


def test_a_batch_that_should_fit_points_at_other_users_of_the_gpu():
    with pytest.raises(GpuMemoryError, match="something else holds GPU memory.*Restart the runtime"):
        a_step_that_runs_out(total_gib=79.0, batch=32, frames=1501, mixed_precision=True)


def test_a_gpu_too_small_for_one_clip_suggests_crops():
    with pytest.raises(GpuMemoryError, match="Not even one clip fits. Train on crops") as caught:
        a_step_that_runs_out(total_gib=1.5, batch=32, frames=1501, mixed_precision=True)
    assert caught.value.batch_that_fits == 0


def test_without_a_known_capacity_the_message_still_says_how_to_lower_the_batch():
    error = cuda_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."), 32, 1501, True, recipe="baseline")
    assert "To lower it, set the batch size to N" in str(error) and "cfg.training['baseline']" in str(error)
