"""A training run's files: checkpoints that never run code, know their setup and notice damage; random states; history.

Taught in notebook 05 (section 6: the run folder). A run folder (``run_dir``) holds

    last.pt        everything needed to resume: model, optimiser, schedule, scaler, history, random states
    best.pt        the model of the best epoch so far
    history.csv    one row an epoch (history.json: the same rows for other tools)

Every checkpoint is a dict of tensors and plain values (numbers, text, lists, dicts), so it is read with
``torch.load(..., weights_only=True)``: a pickle can run code while it is read, and weights_only refuses
anything but tensors and plain values. Two more entries make a file safe to reuse:

    identity       the run's setup (recipe, seed, model sizes, text model, training captions): a checkpoint is
                   resumed or reused only by a run of the same setup
    fingerprint    a sha256 over everything else in the file, tensors included: a damaged or edited file
                   (truncated, zeroed, flipped bytes) is refused before anything uses it

``load_checkpoint`` is the one function that reads a course checkpoint; each refusal names the file,
says what is wrong and what to do. ``run_lock`` keeps to one training per run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from course_lib.data import PAD_VALUES, SplitData
from course_lib.files import HOST, atomic_path, building, owner_is_gone, write_json_atomically, write_text_atomically

__all__ = [
    "CheckpointError", "run_identity", "differences", "save_checkpoint", "load_checkpoint", "read_run", "fingerprint",
    "run_lock", "seed_everything", "rng_states", "set_rng_states", "write_history", "read_history",
]

FORMAT = 2  # 1: the first course checkpoints (pickled NumPy random state, no fingerprint)
HOLDER_NOTE = ".training-process.json"  # which process trains in a run folder now (for the message of a waiting run)


class CheckpointError(RuntimeError):
    """A checkpoint the course will not use (unreadable, damaged, edited, made for another setup); the message says why."""


# --- a run's identity ------------------------------------------------------------------------------------------


def run_identity(
    recipe_name: str, recipe: dict[str, Any], seed: int, width: float, out_dim: int, text_model: str, text_dim: int,
    pretrained: bool, train_split: SplitData,
) -> dict[str, Any]:
    """Everything a checkpoint must match to be resumed or reused (max_epochs left out: a run may be extended)."""
    return {
        "recipe": recipe_name, "settings": {k: v for k, v in recipe.items() if k != "max_epochs"}, "seed": int(seed),
        "width": float(width), "out_dim": int(out_dim), "text_model": str(text_model), "text_dim": int(text_dim),
        "pretrained": bool(pretrained), "pad_value": float(PAD_VALUES[recipe["pad_value"]]),
        "train_captions": hashlib.sha256("\n".join(map(str, train_split.tids)).encode()).hexdigest()[:16],
    }


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: checkpoint X, now Y' for every setting that differs (nested recipe settings flattened)."""
    old, new = _flatten(saved), _flatten(current)
    return [f"{key}: checkpoint {old.get(key, '(absent)')!r}, now {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


# --- saving and loading --------------------------------------------------------------------------------------


def save_checkpoint(content: dict[str, Any], path: str | Path) -> Path:
    """Write ``content`` (tensors and plain values, with an "identity") atomically, with its format and fingerprint."""
    content = {**content, "format": FORMAT}
    content["fingerprint"] = fingerprint(content)
    needed = sum(tensor.numel() * tensor.element_size() for tensor in _tensors(content))
    # Through a Python file handle, so that a full disk raises OSError (ENOSPC), which atomic_path reports.
    with atomic_path(path, needed_bytes=needed) as temporary, open(temporary, "wb") as handle:
        torch.save(content, handle)
    return Path(path)


def load_checkpoint(path: str | Path, identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint at ``path``, read with weights_only=True; CheckpointError when it is unreadable, damaged, edited,
    or (given ``identity``) made for another setup. The one way the course reads best.pt and last.pt."""
    path = Path(path)
    fix = (f"Delete the run folder {path.parent} to train this run again (train.ensure_trained(cfg) or train.train), "
           "or use another run folder." if path.name in ("best.pt", "last.pt") else f"Use another checkpoint than {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a Python object weights_only refused, or bytes that are no checkpoint at all
        raise CheckpointError(f"Checkpoint {path} {_unreadable(exc)} {fix}") from None
    problem = _content_problem(checkpoint)
    if problem:
        raise CheckpointError(f"Checkpoint {path} was not written by this version of the course: {problem}. {fix}")
    if checkpoint["fingerprint"] != fingerprint(checkpoint):
        raise CheckpointError(f"Checkpoint {path} does not match its fingerprint: its bytes were damaged or edited after "
                              f"it was written (a sha256 over its tensors and settings). {fix}")
    changed = differences(checkpoint["identity"], identity) if identity is not None else []
    if changed:
        raise CheckpointError(f"Checkpoint {path} was made for another setup, so it cannot be resumed or reused:\n  "
                              + "\n  ".join(changed) + f"\n{fix}")
    return checkpoint


def read_run(run_dir: str | Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last.pt of the run in ``run_dir`` (None when it holds none), after checking it and best.pt for ``identity``."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        return None
    last = load_checkpoint(run_dir / "last.pt", identity)
    load_checkpoint(run_dir / "best.pt", identity)  # every epoch writes last.pt after best.pt: it must be there and sound
    return last


def fingerprint(content: Mapping[str, Any]) -> str:
    """sha256 over a checkpoint's entries (tensors: dtype, shape and bytes), its "fingerprint" entry left out."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in content.items() if key != "fingerprint"})
    return digest.hexdigest()


# --- one training per run folder -------------------------------------------------------------------------------

_holding: set[Path] = set()  # run folders this process trains in (ensure_trained, then train inside it)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` while training there; a second run waits for it, naming the process that holds it.

    The lock is ``course_lib.files.building``'s, as every stage takes it; the operating system releases it
    when its holder exits, even after ``kill -9``.
    """
    run_dir = Path(run_dir).absolute()
    if run_dir in _holding:
        yield run_dir
        return
    note = run_dir / HOLDER_NOTE
    holder = _live_holder(note)
    if holder is not None:
        print(f"Run folder {run_dir} is in use: {holder} is training there. This run waits until it finishes, then "
              "reuses or continues that run (or stops, if that run was made with other settings).", flush=True)
    with building(run_dir / "checkpoints"):
        write_json_atomically(note, {"pid": os.getpid(), "host": HOST, "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        _holding.add(run_dir)
        try:
            yield run_dir
        finally:
            _holding.discard(run_dir)
            note.unlink(missing_ok=True)


# --- random states --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every GPU's too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(loader_rng: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs, as tensors and plain values: Python, NumPy, torch (CPU, CUDA), the data order."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states = {
        "python": random.getstate(),  # (version, a tuple of 625 ints, None)
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(), "loader": loader_rng.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], loader_rng: torch.Generator) -> None:
    """Restore what ``rng_states`` saved."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    loader_rng.set_state(states["loader"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --- history --------------------------------------------------------------------------------------------------


def write_history(history: list[dict[str, Any]], run_dir: str | Path) -> None:
    """history.csv and history.json, one row an epoch."""
    run_dir = Path(run_dir)
    write_text_atomically(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    write_json_atomically(run_dir / "history.json", [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                      for k, v in row.items()} for row in history])


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """A run's history as a DataFrame (one row an epoch). Taught in notebook 05, section 6."""
    return pd.read_csv(Path(run_dir) / "history.csv")


# --- private helpers ------------------------------------------------------------------------------------------


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to ``digest`` in a form that a save and load does not change; refuse what weights_only cannot read."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the bytes in place, no copy
    elif isinstance(value, Mapping):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or type(value) in (bool, int, float, str):
        digest.update(f"{type(value).__name__} {value!r};".encode())
    else:
        raise TypeError(f"A checkpoint holds only tensors and plain values; {value!r} is a {type(value).__name__}, which "
                        "torch.load(weights_only=True) would refuse. Convert it (float(...), int(...), a tensor).")


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _content_problem(checkpoint: Any) -> str | None:
    """What is missing from a loaded checkpoint (None: it has a fingerprint, an identity and model weights)."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a dict of entries"
    if not isinstance(checkpoint.get("fingerprint"), str):
        return "it has no fingerprint (an older course version wrote it, or another program)"
    if checkpoint.get("format") != FORMAT:
        return f"its format is {checkpoint.get('format')!r}, this version reads format {FORMAT}"
    if not isinstance(checkpoint.get("identity"), dict):
        return "it has no run identity"
    model = checkpoint.get("model")
    if not isinstance(model, Mapping) or not model or not all(isinstance(t, torch.Tensor) for t in model.values()):
        return "it holds no model weights"
    return None


def _unreadable(exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in plain words: a Python object it refused, or damaged bytes."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused:
        return (f"was refused: it holds a Python object ({refused.group(1)}) besides tensors and plain values. The course "
                "reads checkpoints with torch.load(weights_only=True), which does not unpickle such objects because "
                "unpickling can run code; nothing in the file was run. (A checkpoint of an older course version, with a "
                "pickled NumPy random state, is refused the same way.)")
    detail = re.search(r"Unsupported [^\n]*", text) or re.match(r"[^\n]*?(?:\. |$)", text)
    reason = f"{type(exc).__name__}: {detail.group(0).strip().rstrip('. ')[:160]}" if detail and detail.group(0).strip() \
        else type(exc).__name__
    return (f"cannot be read: the file is damaged (truncated, emptied or overwritten) or is no checkpoint of tensors and "
            f"plain values ({reason}); nothing in it was run.")


def _live_holder(note: Path) -> str | None:
    """'process 123 on host (since ...)' from a run folder's holder note, when that process still runs."""
    try:
        holder = json.loads(note.read_text(encoding="utf-8"))
        pid, host, since = int(holder["pid"]), str(holder["host"]), str(holder["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner_is_gone(pid, host) or (pid == os.getpid() and host == HOST):
        return None
    return f"process {pid} on {host} (since {since})"


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
