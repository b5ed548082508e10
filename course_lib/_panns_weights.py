"""Reading checkpoint files for course_lib.panns: safe loading, what a file holds, stand-ins for tests.

Not a lesson: course_lib.panns teaches the PANNs transfer and imports these. ``read_checkpoint``
loads tensors only (``weights_only=True``) and says in plain words why a file is refused.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.cnn14 import BLOCK_CHANNELS, N_MELS
from course_lib.download import file_md5


def read_checkpoint(path_or_state: str | Path | Mapping | tuple, trusted_md5: str | None = None) -> tuple[Any, str]:
    """A checkpoint object and a name for messages; files are read on the CPU, tensors only.

    ``weights_only=True`` refuses pickled Python objects besides tensors (unpickling them can run
    code). Only a file whose md5 is ``trusted_md5`` (the published PANNs file) is then loaded fully.
    """
    if not isinstance(path_or_state, str | os.PathLike):
        return path_or_state, "the given checkpoint"
    path = Path(path_or_state)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".ckpt"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise IsADirectoryError(f"Checkpoint {path} is a folder, not a file{hint}. Pass the path of the checkpoint file itself.")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a plain pickle; the refusal says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True), str(path)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        error = exc
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))  # a Python object weights_only refuses
    if refused is None and not (isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower()
                                and _is_pickle(path)):
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {str(error)[:300]}).") from error
    what = f"a {refused.group(1)} object besides tensors" if refused else "Python objects besides tensors"
    if trusted_md5 and file_md5(path) == trusted_md5:
        print(f"{path.name} holds {what}; its md5 is the published PANNs checksum, so it is loaded with weights_only=False.")
        return torch.load(path, map_location="cpu", weights_only=False), str(path)
    raise ValueError(
        f"{path} holds {what}, and its md5 is not the PANNs checksum this course trusts. Unpickling it can run "
        "code: if you trust the file, load it yourself with torch.load(path, weights_only=False) and pass the result."
    ) from error


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` starts with a well-formed pickle (read opcode by opcode, nothing is run)."""
    try:
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):
                pass
        return True
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False


def refuse_non_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError when a floating-point tensor of ``state`` holds NaN or infinite values."""
    bad = {key: int((~torch.isfinite(value)).sum()) for key, value in state.items()
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())}
    if bad:
        key, count = next(iter(bad.items()))
        raise ValueError(
            f"{source} holds NaN or infinite weights in {len(bad)} tensors (e.g. {key}: {count} of "
            f"{state[key].numel()} values). Such weights give NaN embeddings: the run that saved them diverged or the "
            "file is damaged. Use another checkpoint (an earlier epoch's best.pt, or the released weights)."
        )


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


def random_panns_checkpoint(width: float = 1.0, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A stand-in in PANNs' exact layout ({'model': 84 tensors}) filled with random numbers: for tests and demos.

    Taught in notebook 03, section 5.
    """
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
