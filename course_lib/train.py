"""Training the dual encoder with InfoNCE: the loop, its checkpoints, and resuming.

Taught in notebook 05. ``fit`` reads top to bottom like nanoGPT's train.py, one comment a step:
device and precision, seeds, data, optimiser and schedule, resume, then the epochs. As in the
baseline (main.py, utils/model_utils.py), epoch 0 only measures the untrained model, every later
epoch trains one pass over the data, the validation loss drives ReduceLROnPlateau and picks the
best checkpoint, and training stops at ``max_epochs`` or on the baseline's plateau rule (the
standard deviation of the last 10 validation losses under 0.001, only after 60 epochs).

Differences from the baseline, all about bookkeeping: the training loss is the running mean over
the epoch (the baseline re-ran the train and eval splits in eval mode every epoch), the validation
batches are shuffled once with a fixed seed (the baseline reshuffled them every epoch), and the
validation text-to-audio mAP@10 is reported beside the loss without choosing anything.

A run lives in one folder (``run_dir``, which may be on Google Drive): ``last.pt`` (everything
needed to resume, written after every epoch), ``best.pt`` (the model with the lowest validation
loss), ``history.csv`` and ``history.json``. Files are written atomically, so a run killed at any
moment resumes from its last complete epoch and ends where an uninterrupted run would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from course_lib import metrics
from course_lib._report import say
from course_lib.config import BASELINE_YAML, Config, ConfigError
from course_lib.data import PAD_VALUES, Collate, SplitData, load_split, make_dataset
from course_lib.files import atomic_path, write_json_atomically, write_text_atomically
from course_lib.loss import infonce_loss
from course_lib.model import DualEncoder, model_from_identity, run_dir_for
from course_lib.panns import ensure_pretrained_encoder

RECIPES = ("baseline", "fast")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint made for another setup); the message says why."""


def fit(
    model: DualEncoder,
    train_split: SplitData,
    val_split: SplitData,
    recipe: dict[str, Any],
    run_dir: str | Path,
    identity: dict[str, Any],
    seed: int = 0,
    device: str = "auto",
    callback: Callable[[dict[str, Any], DualEncoder], None] | None = None,
    verbose: bool = True,
) -> Path:
    """Train ``model`` with InfoNCE as ``recipe`` says, resuming ``run_dir`` when it holds a run; returns best.pt.

    Taught in notebook 05. ``callback(history_row, model)`` is called after every epoch (live plots).
    """
    run_dir = Path(run_dir)
    # The device (CUDA, Apple MPS or CPU) and the precision: bf16 autocast where the GPU has it, else fp16 with a scaler.
    device = pick_device(device)
    amp_dtype = autocast_dtype(device, recipe.get("mixed_precision", True))
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    # Seeds: the same seed gives the same model (on a CPU, bit for bit).
    seed_everything(seed)
    model.pad_value = PAD_VALUES[recipe["pad_value"]]
    model.to(device)
    # The data: captions (or clips) in a new random order every epoch; whole clips padded, or random crops.
    collate = Collate(recipe.get("crop_frames"), model.pad_value)
    train_set = make_dataset(train_split, recipe["sampling"])
    loader_rng = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, recipe["batch_size"], shuffle=True, generator=loader_rng, collate_fn=collate,
                              **_loader_options(train_set, device))
    # Validation: every caption with its whole clip, in one fixed shuffled order (so each epoch's loss is comparable).
    val_set = make_dataset(val_split, "caption")
    val_order = np.random.default_rng(0).permutation(len(val_set)).tolist()
    val_loader = DataLoader(val_set, recipe["batch_size"], sampler=val_order, collate_fn=Collate(None, model.pad_value),
                            **_loader_options(val_set, device))
    # Adam, and ReduceLROnPlateau on the validation loss (the baseline) or mAP@10, with the baseline's values; a scaler for fp16.
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe.get("weight_decay", 0.0))
    plateau = recipe["lr_plateau"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min" if selects_by(recipe) == "val_loss" else "max", factor=plateau["factor"],
        patience=plateau["patience"], threshold=plateau["threshold"], threshold_mode="abs", min_lr=plateau["min_lr"],
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # Resume: a previous run of this setup in run_dir continues after its last complete epoch.
    history: list[dict[str, Any]] = []
    best_score, start_epoch = math.inf, 0
    checkpoint = read_checkpoint(run_dir / "last.pt", identity)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_states(checkpoint["rng"], loader_rng)
        history, best_score = checkpoint["history"], checkpoint["best_score"]
        start_epoch = checkpoint["epoch"] + 1
        if checkpoint["finished"] or start_epoch > recipe["max_epochs"]:
            say(verbose, f"{run_dir}: training already finished after epoch {checkpoint['epoch']}; nothing to do.")
            return run_dir / "best.pt"
        say(verbose, f"{run_dir}: resuming after epoch {checkpoint['epoch']}.")
    started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    for epoch in range(start_epoch, recipe["max_epochs"] + 1):
        epoch_start = time.perf_counter()
        # Epoch 0 only measures the untrained model (as the baseline did); later epochs train one pass first.
        train_loss = math.nan
        if epoch > 0:
            train_loss = train_one_epoch(model, train_loader, optimizer, scaler, autocast, recipe, device, epoch, verbose)
        # Validate: the loss (or, in the fast recipe, mAP@10) picks the best model and drives the schedule.
        val_loss, val_map10 = validate(model, val_loader, recipe, device, autocast)
        scheduler.step(val_loss if selects_by(recipe) == "val_loss" else val_map10)
        history.append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_t2a_map10": val_map10,
            "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start,
            "elapsed_s": time.perf_counter() - started,
        })
        # Keep the best model so far: lowest validation loss (the baseline), or highest mAP@10.
        if selection_score(history[-1], recipe) < best_score:
            best_score = selection_score(history[-1], recipe)
            save_atomically({"model": model.state_dict(), "identity": identity, "epoch": epoch, "val_loss": val_loss,
                             "val_t2a_map10": val_map10}, run_dir / "best.pt")
        # Stop on the baseline's plateau rule, or after the last epoch.
        finished = epoch == recipe["max_epochs"] or plateau_reached([row["val_loss"] for row in history], recipe["plateau_stop"])
        # Save everything needed to resume (model, optimiser, schedule, scaler, history, random states), then the history.
        save_atomically({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "history": history, "best_score": best_score,
            "rng": rng_states(loader_rng), "identity": identity, "fingerprint": fingerprint(identity), "finished": finished,
        }, run_dir / "last.pt")
        write_history(history, run_dir)
        say(verbose, format_row(history[-1]))
        if callback is not None:
            callback(history[-1], model)
        if finished:
            break
    return run_dir / "best.pt"


def train_one_epoch(model, loader, optimizer, scaler, autocast, recipe, device, epoch, verbose) -> float:
    """One pass over the training data; returns the mean loss. Stops with TrainingError on a non-finite loss."""
    model.train()
    total, count = 0.0, 0
    for audio, text, clip_ids in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not verbose):
        audio, text, clip_ids = audio.to(device), text.to(device), clip_ids.to(device)
        # Forward both branches and score the batch with InfoNCE.
        with autocast:
            audio_emb, text_emb = model(audio, text)
        loss = infonce_loss(audio_emb, text_emb, clip_ids, recipe["temperature"])
        # A NaN or infinite loss would wreck the weights: stop now, before the update, keeping the last good checkpoint.
        if not torch.isfinite(loss):
            raise TrainingError(
                f"The loss became {loss.item()} in epoch {epoch} (batch {count // len(clip_ids) + 1}). Training stopped; "
                "the last good checkpoint is the run's last.pt (from the epoch before). Try a lower lr, or "
                "mixed_precision: false, then run again to resume from it."
            )
        # Backward and update (the scaler only scales for fp16 autocast; otherwise it passes through).
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total, count = total + loss.item() * len(clip_ids), count + len(clip_ids)
    return total / max(count, 1)


@torch.no_grad()
def validate(model: DualEncoder, loader: DataLoader, recipe: dict[str, Any], device: torch.device, autocast) -> tuple[float, ...]:
    """Mean validation loss over the batches, and text-to-audio mAP@10 from the same embeddings (one score matrix)."""
    model.eval()
    losses, sizes, clip_emb, caption_emb, caption_clip = [], [], {}, [], []
    for audio, text, clip_ids in loader:
        with autocast:
            audio_emb, text_emb = model(audio.to(device), text.to(device))
        losses.append(infonce_loss(audio_emb, text_emb, clip_ids.to(device), recipe["temperature"]).item())
        sizes.append(len(clip_ids))
        clip_emb.update(zip(clip_ids.tolist(), audio_emb.float().cpu(), strict=True))
        caption_emb.append(text_emb.float().cpu())
        caption_clip += clip_ids.tolist()
    clips = sorted(clip_emb)
    audio = torch.stack([clip_emb[clip] for clip in clips])
    scores = metrics.score_matrix(torch.cat(caption_emb).numpy(), audio.numpy())
    map10 = metrics.text_to_audio(scores, caption_clip, clips).means["mAP@10"]
    return float(np.average(losses, weights=sizes)), map10


def selects_by(recipe: dict[str, Any]) -> str:
    """What picks the best epoch and drives the learning-rate schedule: 'val_loss' (the baseline) or 'val_t2a_map10'."""
    return recipe.get("select_by", "val_loss")


def selection_score(row: dict[str, Any], recipe: dict[str, Any]) -> float:
    """Lower is better: the validation loss, or minus the validation mAP@10."""
    return row["val_loss"] if selects_by(recipe) == "val_loss" else -row["val_t2a_map10"]


def plateau_reached(val_losses: list[float], rule: dict[str, Any]) -> bool:
    """The baseline's stop (Ray's TrialPlateauStopper): std of the last num_results losses < std, after grace_period."""
    if len(val_losses) < max(rule["grace_period"], rule["num_results"]):
        return False
    return float(np.std(val_losses[-rule["num_results"] :])) < rule["std"]


# --- the profile's run: recipes, folders, identity ---------------------------------------------


def recipe_settings(cfg: Config, recipe: str | None = None) -> tuple[str, dict[str, Any]]:
    """(name, settings) of a training recipe from baseline.yaml's ``training`` section; None: the profile's default.

    Taught in notebook 05, section 5.
    """
    recipes = cfg.training
    if not recipes:
        raise ConfigError(f"No 'training' section with recipes in {BASELINE_YAML}; add one like the course's own baseline.yaml.")
    name = recipe or cfg.settings.get("training_recipe", "baseline")
    if name not in recipes:
        raise ConfigError(f"Unknown training recipe {name!r}. Choose one of: {', '.join(recipes)}.")
    return name, copy.deepcopy(recipes[name])


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


def train(
    cfg: Config, recipe: str | None = None, seed: int = 0, run_dir: str | Path | None = None, max_epochs: int | None = None,
    callback: Callable[[dict[str, Any], DualEncoder], None] | None = None, verbose: bool = True,
) -> Path:
    """Train (or resume) the profile's dual encoder with a recipe; returns the best checkpoint.

    Taught in notebook 05, section 6.
    """
    name, settings = recipe_settings(cfg, recipe)
    if max_epochs is not None:
        settings["max_epochs"] = int(max_epochs)
    train_split, val_split = load_split(cfg, "development"), load_split(cfg, "validation")
    encoder_settings = cfg.settings["audio_encoder"]
    out_dim = cfg.baseline["DualEncoderModel"]["audio_enc"]["out_dim"]
    identity = run_identity(name, settings, seed, encoder_settings["width"], out_dim, cfg.settings["text_model"],
                            train_split.vectors.shape[1], encoder_settings["pretrained"], train_split)
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg, name)
    torch.manual_seed(seed)  # the random initialisation depends on the seed only
    if read_checkpoint(run_dir / "last.pt", identity) is not None:
        model = model_from_identity(identity)  # its weights come from the checkpoint
    else:
        encoder = ensure_pretrained_encoder(cfg)[0]  # PANNs weights when the profile asks for them, else random
        model = DualEncoder(encoder, identity["text_dim"])
    return fit(model, train_split, val_split, settings, run_dir, identity, seed, cfg.settings.get("device", "auto"),
               callback, verbose)


def ensure_trained(cfg: Config, recipe: str | None = None, verbose: bool = True) -> Path:
    """The best checkpoint of the profile's run of a recipe: reused when finished for this setup, else trained (resumed)."""
    name, settings = recipe_settings(cfg, recipe)
    run_dir = run_dir_for(cfg, name)
    try:
        last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError):
        last = None
    if last is not None and last.get("finished") and (run_dir / "best.pt").is_file():
        current = run_identity(name, settings, last["identity"]["seed"], cfg.settings["audio_encoder"]["width"],
                               cfg.baseline["DualEncoderModel"]["audio_enc"]["out_dim"], cfg.settings["text_model"],
                               last["identity"]["text_dim"], cfg.settings["audio_encoder"]["pretrained"],
                               load_split(cfg, "development"))
        if not differences(last["identity"], current):
            say(verbose, f"Reusing the trained model {run_dir / 'best.pt'} (epoch {best_epoch(last['history'], settings)}).")
            return run_dir / "best.pt"
    return train(cfg, name, verbose=verbose)


# --- checkpoints, history and random states ---------------------------------------------------


def save_atomically(obj: dict[str, Any], path: Path) -> Path:
    """torch.save to a temporary file, renamed into place when complete."""
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
    return path


def read_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none); TrainingError when it was made for another setup."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: say which and what to do
        raise TrainingError(f"Checkpoint {path} cannot be read ({exc}). Delete it to start this run again.") from exc
    changed = differences(checkpoint.get("identity", {}), identity)
    if changed:
        raise TrainingError(
            f"Checkpoint {path} was made for another setup, so it cannot be resumed:\n  " + "\n  ".join(changed)
            + f"\nUse another run folder, or delete {path.parent} to start again with the current settings."
        )
    return checkpoint


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of a run's identity (recipe, seed, model sizes, text model, training captions)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: checkpoint X, now Y' for every setting that differs (nested recipe settings flattened)."""
    old, new = _flatten(saved), _flatten(current)
    return [f"{key}: checkpoint {old.get(key, '(absent)')!r}, now {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def write_history(history: list[dict[str, Any]], run_dir: Path) -> None:
    """history.csv and history.json, one row an epoch."""
    write_text_atomically(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    write_json_atomically(run_dir / "history.json", [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                      for k, v in row.items()} for row in history])


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """A run's history as a DataFrame (one row an epoch). Taught in notebook 05, section 6."""
    return pd.read_csv(Path(run_dir) / "history.csv")


def best_epoch(history: list[dict[str, Any]], recipe: dict[str, Any]) -> int:
    """The epoch whose model best.pt holds."""
    return min(history, key=lambda row: selection_score(row, recipe))["epoch"]


def format_row(row: dict[str, Any]) -> str:
    """One history row as the line ``train`` prints an epoch. Taught in notebook 05, section 6."""
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val t2a mAP@10 {row['val_t2a_map10']:.3f}  lr {row['lr']:.0e}  {row['epoch_s']:.1f} s")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every GPU's too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(loader_rng: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs to continue exactly: Python, NumPy, torch (CPU, CUDA), the data order."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "loader": loader_rng.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], loader_rng: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    loader_rng.set_state(states["loader"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """'auto': CUDA, else Apple MPS, else CPU; or the device asked for.

    Taught in notebook 05 (its opening cell, before section 1).
    """
    if str(preference) != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, mixed_precision: bool = True) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs, None (fp32) elsewhere or when switched off."""
    if not mixed_precision or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --- private helpers --------------------------------------------------


def _loader_options(dataset, device: torch.device) -> dict[str, Any]:
    """No worker processes when the features are in memory; a few (each with its own HDF5 handle) when read from disk."""
    workers = 0 if dataset.store.preloaded else min(4, os.cpu_count() or 1)
    return {"num_workers": workers, "pin_memory": device.type == "cuda"}  # workers restart (and reseed) every epoch


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
