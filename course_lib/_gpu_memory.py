"""The memory one training step needs, the batch size that fits, and a CUDA out-of-memory error that says so.

Not a lesson: ``course_lib.train`` turns ``torch.cuda.OutOfMemoryError`` into ``cuda_out_of_memory(...)``'s
error, and ``make rehearsal`` (benchmarks/rehearsal.py) picks its batch size with ``step_memory``.

The estimate is computed, not guessed: one training step of the dual encoder runs on PyTorch's
"meta" device (shapes only: no memory, no arithmetic, under a second) and the activations autograd
keeps for the backward pass are added up per clip. On top come the weights, their gradients and
Adam's two moments (16 bytes a parameter, plus 2 for the 16-bit copies autocast makes), and the
gradient buffers the backward pass holds at once (counted as twice the largest kept activation).
The rehearsal checks the estimate against what it measures: peak RSS on a CPU, peak allocated memory
on a GPU (benchmarks/results/rehearsal.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from course_lib.cnn14 import CNN14Encoder
from course_lib.config import HOP_SECONDS, OUT_DIM
from course_lib.loss import infonce_loss
from course_lib.model import DualEncoder

GIB = 1024**3
CUDA_CONTEXT_BYTES = GIB // 2  # the CUDA context and cuDNN's libraries take this much of the card outside PyTorch's allocator
HEADROOM = 0.9  # keep a tenth of what is left for fragmentation and cuDNN's workspaces


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step needs at ``frames`` frames a clip: a fixed part, then so much a clip of the batch."""

    frames: int
    fixed_bytes: int  # weights, gradients, Adam's moments (and 16-bit weight copies under mixed precision)
    per_clip_bytes: int  # activations kept for the backward pass, one clip
    transient_per_clip_bytes: int  # gradient buffers alive at once during the backward pass, one clip
    half: bool

    def total(self, batch_size: int) -> int:
        """Estimated peak bytes of one step at ``batch_size`` clips."""
        return self.fixed_bytes + batch_size * (self.per_clip_bytes + self.transient_per_clip_bytes)

    def batch_that_fits(self, budget_bytes: float) -> int:
        """The largest batch whose step fits in ``budget_bytes`` (0: not even one clip)."""
        return max(0, int((budget_bytes - self.fixed_bytes) // (self.per_clip_bytes + self.transient_per_clip_bytes)))


@lru_cache(maxsize=32)
def step_memory(frames: int, width: float = 1.0, text_dim: int = 768, half: bool = False) -> StepMemory:
    """The memory model of one training step of the dual encoder at ``frames`` frames a clip (meta device, no memory used).

    ``half``: activations in 16 bits, as under mixed precision (autocast) on a GPU.
    """
    dtype = torch.float16 if half else torch.float32
    with torch.device("meta"):
        model = DualEncoder(CNN14Encoder(OUT_DIM, width), text_dim).to(dtype).train()
    parameters = sum(p.numel() for p in model.parameters())
    one, largest = _kept_bytes(model, 1, frames, text_dim, dtype)
    two, _ = _kept_bytes(model, 2, frames, text_dim, dtype)
    per_clip = two - one
    fixed = 16 * parameters + (2 * parameters if half else 0) + max(0, one - per_clip)
    return StepMemory(int(frames), int(fixed), int(per_clip), int(2 * largest), half)


def _kept_bytes(model: DualEncoder, batch: int, frames: int, text_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of the activations autograd keeps in one step, bytes of the largest of them) on the meta device."""
    weights = {id(p) for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base  # a view keeps its base alive, counted once
        if id(tensor) not in weights and id(base) not in weights:
            kept[id(base)] = base
        return tensor

    audio = torch.zeros(batch, frames, 64, device="meta", dtype=dtype)
    text = torch.zeros(batch, text_dim, device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        audio_emb, text_emb = model(audio, text)
        loss = infonce_loss(audio_emb, text_emb, torch.arange(batch, device="meta"))
    loss.backward()
    sizes = [tensor.numel() * tensor.element_size() for tensor in kept.values()]
    return sum(sizes), max(sizes, default=0) // batch


# --- CUDA out of memory ---------------------------------------------------------------------------------------------


class GpuMemoryError(RuntimeError):
    """A training step did not fit in the GPU's memory; the message gives the batch size that fits and how to set it."""

    def __init__(self, message: str, batch_that_fits: int) -> None:
        super().__init__(message)
        self.batch_that_fits = batch_that_fits


def gpu_total_bytes(exc: BaseException | None = None, device: int | torch.device | None = None) -> int | None:
    """The GPU's memory in bytes: from the device when CUDA is up, else read off PyTorch's out-of-memory message."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()).total_memory)
    found = re.search(r"total capacity of ([\d.]+) (GiB|MiB)", str(exc or ""))
    if found is None:
        return None
    return int(float(found.group(1)) * (GIB if found.group(2) == "GiB" else 1024**2))


def cuda_out_of_memory(
    exc: BaseException, batch_size: int, frames: int, mixed_precision: bool, recipe: str | None = None,
    width: float = 1.0, text_dim: int = 768, total_bytes: int | None = None,
) -> GpuMemoryError:
    """The error to raise from ``exc`` (torch.cuda.OutOfMemoryError) in a training step: what fits and how to set it.

    ``frames``: the batch's padded length (``audio.shape[1]``); ``mixed_precision``: whether autocast was on.
    """
    total = total_bytes or gpu_total_bytes(exc)
    memory = step_memory(int(frames), float(width), int(text_dim), bool(mixed_precision))
    precision = "16-bit activations (mixed precision)" if mixed_precision else "float32"
    clip = f"clips padded to {frames} frames ({frames * HOP_SECONDS:.0f} s)"
    need = (f"the model estimates {memory.total(batch_size) / GIB:.1f} GiB for this step: {memory.fixed_bytes / GIB:.1f} GiB "
            f"of weights, gradients and Adam state, plus {_per_clip(memory) / 2**20:.0f} MiB a clip ({precision})")
    if total is None:
        return GpuMemoryError(f"CUDA ran out of memory in a training step at batch {batch_size}, {clip}; {need}. "
                              f"To lower it, {_how_to_set(recipe, batch_size, None)}", 0)
    budget = HEADROOM * (total - CUDA_CONTEXT_BYTES)
    fits = memory.batch_that_fits(budget)
    head = (f"CUDA ran out of memory in a training step at batch {batch_size}, {clip}, on a GPU of {total / GIB:.1f} GiB; "
            f"{need}.")
    if fits == 0:
        advice = (" Not even one clip fits. Train on crops (a training recipe's crop_frames, e.g. 500), switch "
                  f"mixed_precision on{' (it is on)' if mixed_precision else ''}, or use a GPU with more memory.")
    elif fits >= batch_size:
        advice = (f" Batch {batch_size} should fit in {total / GIB:.1f} GiB, so something else holds GPU memory: another "
                  "notebook or process on this GPU, or tensors of an earlier run still referenced. Restart the runtime "
                  f"(or close the other notebook) and run again. If it still fails, {_how_to_set(recipe, batch_size, None)}")
    else:
        advice = f" Batch {fits} fits. To use it, {_how_to_set(recipe, batch_size, fits)}"
        if not mixed_precision:
            advice += " Mixed precision (the recipe's mixed_precision: true) about halves the activations."
    return GpuMemoryError(head + advice, fits)


def _per_clip(memory: StepMemory) -> int:
    return memory.per_clip_bytes + memory.transient_per_clip_bytes


def _how_to_set(recipe: str | None, old: int, new: int | None) -> str:
    """How to change a training recipe's batch size, and what that does to a run already started."""
    name, value = recipe or "<recipe>", new or "N"
    return (f"set the batch size to {value}: in code, cfg.training[{name!r}]['batch_size'] = {value} before "
            f"course_lib.train.train(cfg); or in a copy of course_lib/baseline.yaml (training: {name}: batch_size: {value}) "
            "loaded with the environment variable COURSE_CONFIG=/path/to/the/copy.yaml. A run folder started at batch "
            f"{old} does not resume at another batch size: delete it (course_lib.model.run_dir_for(cfg)) or pass "
            "train(..., run_dir=...) a new folder. A smaller batch gives InfoNCE fewer negatives a step (the baseline "
            "used 32); it is the price of fitting.")
