"""Training the dual encoder with InfoNCE: the loop, one epoch, validation, and resuming.

Taught in notebook 05. ``fit`` reads top to bottom like nanoGPT's train.py, one comment a step:
device and precision, seeds, data, optimiser and schedule, resume, then the epochs. As in the
baseline (main.py, utils/model_utils.py), epoch 0 only measures the untrained model, every later
epoch trains one pass over the data, the validation loss drives ReduceLROnPlateau and picks the
best checkpoint, and training stops at ``max_epochs`` or on the baseline's plateau rule (the
standard deviation of the last 10 validation losses under 0.001, only after 60 epochs).

Differences from the baseline, all about bookkeeping: the training loss is the running mean over
the epoch (the baseline re-ran the train and eval splits in eval mode every epoch); validation
embeds every clip once, whole and unpadded, as evaluation does (notebook 06), and its loss is the
mean InfoNCE of fixed batches of captions (one shuffled order, the same every epoch) against those
embeddings (the baseline padded the validation batches, so their loss depended on the padding);
the validation text-to-audio mAP@10 is reported beside the loss without choosing anything.

A run lives in one folder (``run_dir``, which may be on Google Drive): ``last.pt`` (everything
needed to resume, written after every epoch), ``best.pt`` (the model with the lowest validation
loss), ``history.csv`` and ``history.json``. How they are written, checked and read back, and the
lock that keeps to one training per folder, is ``course_lib.checkpoints``. A run killed at any
moment resumes from its last complete epoch and ends where an uninterrupted run would; raising
``max_epochs`` continues a finished run.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from course_lib import metrics
from course_lib._gpu_memory import cuda_out_of_memory
from course_lib._report import say
from course_lib.checkpoints import (
    read_history,
    read_run,
    rng_states,
    run_identity,
    run_lock,
    save_checkpoint,
    seed_everything,
    set_rng_states,
    write_history,
)
from course_lib.config import BASELINE_YAML, OUT_DIM, Config, ConfigError, resolve_device
from course_lib.data import PAD_VALUES, Collate, SplitData, load_split, make_dataset, reseed
from course_lib.loss import infonce_loss
from course_lib.model import DualEncoder, embed_captions, embed_clips, model_from_identity, run_dir_for
from course_lib.panns import ensure_pretrained_encoder

__all__ = [
    "TrainingError", "Step", "fit", "train_one_epoch", "validate", "selects_by", "selection_score",
    "plateau_reached", "run_is_done", "recipe_settings", "epoch_budget", "train", "ensure_trained", "best_epoch",
    "format_row", "autocast_dtype", "read_history",
]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or embedding); the message says why and what to do."""


@dataclass
class Step:
    """How a training step runs: on which device, at which precision, with which InfoNCE temperature."""

    device: torch.device
    temperature: float
    amp_dtype: torch.dtype | None  # bf16 or fp16 autocast on a CUDA GPU; None: full fp32
    scaler: torch.amp.GradScaler  # scales the loss for fp16; passes it through otherwise

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()


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

    Taught in notebook 05, section 6. ``callback(history_row, model)`` is called after every epoch (live plots).
    """
    run_dir = Path(run_dir)
    # The device (CUDA, Apple MPS or CPU) and the precision: bf16 autocast where the GPU has it, else fp16 with a scaler.
    device = torch.device(resolve_device(device))
    amp_dtype = autocast_dtype(device, recipe.get("mixed_precision", True))
    step = Step(device, recipe["temperature"], amp_dtype, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))
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
    # Validation: every caption, in fixed batches of one shuffled order, against its clip embedded whole.
    val_order = np.random.default_rng(0).permutation(len(val_split.fids))
    val_batches = [val_order[i : i + recipe["batch_size"]] for i in range(0, len(val_order), recipe["batch_size"])]
    # Adam, and ReduceLROnPlateau on the validation loss (the baseline) or mAP@10, with the baseline's values.
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe.get("weight_decay", 0.0))
    plateau = recipe["lr_plateau"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min" if selects_by(recipe) == "val_loss" else "max", factor=plateau["factor"],
        patience=plateau["patience"], threshold=plateau["threshold"], threshold_mode="abs", min_lr=plateau["min_lr"],
    )
    # One training at a time in run_dir: a second run on it waits here, then continues or reuses what this one left.
    with run_lock(run_dir):
        # Resume: a previous run of this setup in run_dir continues after its last complete epoch.
        history: list[dict[str, Any]] = []
        best_score, start_epoch = math.inf, 0
        checkpoint = read_run(run_dir, identity)  # refused, naming the file, when damaged or made for another setup
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            step.scaler.load_state_dict(checkpoint["scaler"])
            set_rng_states(checkpoint["rng"], loader_rng)
            history, best_score = checkpoint["history"], checkpoint["best_score"]
            start_epoch = checkpoint["epoch"] + 1
            if run_is_done(history, recipe):
                say(verbose, f"{run_dir}: training already finished after epoch {checkpoint['epoch']}; nothing to do.")
                return run_dir / "best.pt"
            say(verbose, f"{run_dir}: resuming after epoch {checkpoint['epoch']} (max_epochs {recipe['max_epochs']}).")
        started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
        for epoch in range(start_epoch, recipe["max_epochs"] + 1):
            epoch_start = time.perf_counter()
            # Epoch 0 only measures the untrained model (as the baseline did); later epochs train one pass first.
            train_loss = math.nan
            if epoch > 0:
                reseed(train_set, collate, seed, epoch)  # this epoch's captions and crops: the same in any worker
                train_loss = train_one_epoch(model, train_loader, optimizer, step, epoch, verbose)
            # Validate: the loss (or, with select_by, mAP@10) picks the best model and drives the schedule.
            val_loss, val_map10 = validate(model, val_split, val_batches, step, epoch)
            scheduler.step(val_loss if selects_by(recipe) == "val_loss" else val_map10)
            history.append({
                "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_t2a_map10": val_map10,
                "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start,
                "elapsed_s": time.perf_counter() - started,
            })
            # Keep the best model so far: lowest validation loss (the baseline), or highest mAP@10.
            if selection_score(history[-1], recipe) < best_score:
                best_score = selection_score(history[-1], recipe)
                save_checkpoint({"model": model.state_dict(), "identity": identity, "epoch": epoch, "val_loss": val_loss,
                                 "val_t2a_map10": val_map10}, run_dir / "best.pt")
            # Stop after max_epochs, or on the baseline's plateau rule.
            finished = run_is_done(history, recipe)
            # Save everything needed to resume (model, optimiser, schedule, scaler, history, random states), then the history.
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": step.scaler.state_dict(), "epoch": epoch, "history": history, "best_score": best_score,
                "rng": rng_states(loader_rng), "identity": identity, "finished": finished,
            }, run_dir / "last.pt")
            write_history(history, run_dir)
            say(verbose, format_row(history[-1]))
            if callback is not None:
                callback(history[-1], model)
            if finished:
                break
    return run_dir / "best.pt"


def train_one_epoch(
    model: DualEncoder, loader: DataLoader, optimizer: torch.optim.Optimizer, step: Step, epoch: int, verbose: bool = True
) -> float:
    """One pass over the training data; returns the mean loss. Stops with TrainingError on a non-finite loss.

    Taught in notebook 05, section 6.
    """
    model.train()
    total, count = 0.0, 0
    # iter() first: given the loader itself, tqdm.auto starts a pass of its own (workers, random draws) besides the loop's.
    batches = tqdm(iter(loader), total=len(loader), desc=f"epoch {epoch}", leave=False, disable=not verbose)
    for batch, (audio, text, clip_ids) in enumerate(batches, 1):
        audio, text, clip_ids = audio.to(step.device), text.to(step.device), clip_ids.to(step.device)
        try:
            # Forward both branches and score the batch with InfoNCE.
            with step.autocast():
                audio_emb, text_emb = model(audio, text)
            loss = infonce_loss(audio_emb, text_emb, clip_ids, step.temperature)
            # A NaN or infinite loss would wreck the weights: stop now, before the update, keeping the last good checkpoint.
            if not torch.isfinite(loss):
                raise TrainingError(f"The training loss became {loss.item()} in epoch {epoch} (batch {batch} of "
                                    f"{len(loader)}), before the update. {_stopped_advice(epoch)}")
            # Backward and update (the scaler only scales for fp16 autocast; otherwise it passes through).
            optimizer.zero_grad(set_to_none=True)
            step.scaler.scale(loss).backward()
            step.scaler.step(optimizer)
            step.scaler.update()
        except torch.cuda.OutOfMemoryError as exc:  # the batch does not fit this GPU: say which batch size does, and how
            raise cuda_out_of_memory(exc, len(clip_ids), audio.shape[1], step.amp_dtype is not None, "baseline",
                                     model.audio_enc.width, model.text_enc.fc.in_features) from exc
        total, count = total + loss.item() * len(clip_ids), count + len(clip_ids)
    return total / max(count, 1)


@torch.no_grad()
def validate(
    model: DualEncoder, split: SplitData, batches: Sequence[np.ndarray], step: Step, epoch: int = 0
) -> tuple[float, float]:
    """Validation loss (mean InfoNCE of the caption batches) and text-to-audio mAP@10, from clips embedded as evaluation does.

    Each clip is embedded once, whole and unpadded (``embed_clips``); the mAP@10 is DCASE's on one score matrix.
    """
    clip_fids = list(split.clip_fids)
    audio = embed_clips(model, split.h5_path, clip_fids, device=str(step.device))
    text = embed_captions(model, split.vectors, device=str(step.device))
    if not (np.isfinite(audio).all() and np.isfinite(text).all()):
        raise TrainingError(f"The model gave NaN or infinite embeddings in the validation of epoch {epoch}: the last "
                            f"updates of the epoch broke its weights. {_stopped_advice(epoch)}")
    clip_of = pd.Index(clip_fids).get_indexer(split.fids)  # each caption's clip, as a row of ``audio``
    audio_t, text_t = torch.from_numpy(audio), torch.from_numpy(text)
    losses = [infonce_loss(audio_t[clip_of[rows]], text_t[rows], torch.from_numpy(clip_of[rows]), step.temperature).item()
              for rows in batches]
    retrieval = metrics.text_to_audio(metrics.score_matrix(text, audio), split.fids, clip_fids)
    return float(np.average(losses, weights=[len(rows) for rows in batches])), float(retrieval.means["mAP@10"])


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


def run_is_done(history: list[dict[str, Any]], recipe: dict[str, Any]) -> bool:
    """A run is done at max_epochs, or when the plateau rule stopped it (raising max_epochs continues any other run)."""
    return history[-1]["epoch"] >= recipe["max_epochs"] or plateau_reached([row["val_loss"] for row in history],
                                                                          recipe["plateau_stop"])


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


def epoch_budget(cfg: Config, settings: dict[str, Any]) -> int:
    """How many epochs the profile trains a recipe for: its ``epoch_budget`` (baseline.yaml), at most the recipe's own.

    Taught in notebook 05, section 5. A budget above the recipe's max_epochs changes nothing.
    """
    return min(settings["max_epochs"], cfg.settings.get("epoch_budget", settings["max_epochs"]))


def train(
    cfg: Config, recipe: str | None = None, seed: int = 0, run_dir: str | Path | None = None, max_epochs: int | None = None,
    callback: Callable[[dict[str, Any], DualEncoder], None] | None = None, verbose: bool = True,
) -> Path:
    """Train (or resume) the profile's dual encoder with a recipe; returns the best checkpoint.

    Taught in notebook 05, section 6. It trains ``max_epochs`` epochs, by default the profile's epoch budget.
    """
    name, settings = recipe_settings(cfg, recipe)
    settings["max_epochs"] = int(max_epochs) if max_epochs is not None else epoch_budget(cfg, settings)
    train_split, val_split = load_split(cfg, "development"), load_split(cfg, "validation")
    identity = _profile_identity(cfg, name, settings, seed, train_split)
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg, name)
    torch.manual_seed(seed)  # the random initialisation depends on the seed only
    if (run_dir / "last.pt").is_file():
        model = model_from_identity(identity)  # its weights come from last.pt, which fit checks before using it
    else:
        encoder = ensure_pretrained_encoder(cfg)[0]  # PANNs weights when the profile asks for them, else random
        model = DualEncoder(encoder, identity["text_dim"])
    return fit(model, train_split, val_split, settings, run_dir, identity, seed, cfg.settings.get("device", "auto"),
               callback, verbose)


def ensure_trained(cfg: Config, recipe: str | None = None, verbose: bool = True) -> Path:
    """The best checkpoint of the profile's run of a recipe: reused when done for this setup, else trained or resumed.

    The run is seed 0's, in ``run_dir_for(cfg, recipe)``, for the profile's epoch budget; a damaged checkpoint, or one
    of another setup, is refused.
    """
    name, settings = recipe_settings(cfg, recipe)
    settings["max_epochs"] = epoch_budget(cfg, settings)
    run_dir = run_dir_for(cfg, name)
    with run_lock(run_dir):  # a run training there now finishes first; then its result is checked
        identity = _profile_identity(cfg, name, settings, 0, load_split(cfg, "development"))
        last = read_run(run_dir, identity)  # refused, naming the file, when damaged or made for another setup
        if last is not None and run_is_done(last["history"], settings):
            say(verbose, f"Reusing the trained model {run_dir / 'best.pt'} (epoch {best_epoch(last['history'], settings)}).")
            return run_dir / "best.pt"
        return train(cfg, name, verbose=verbose)


def best_epoch(history: list[dict[str, Any]], recipe: dict[str, Any]) -> int:
    """The epoch whose model best.pt holds."""
    return min(history, key=lambda row: selection_score(row, recipe))["epoch"]


def format_row(row: dict[str, Any]) -> str:
    """One history row as the line ``train`` prints an epoch. Taught in notebook 05, section 6."""
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val t2a mAP@10 {row['val_t2a_map10']:.3f}  lr {row['lr']:.0e}  {row['epoch_s']:.1f} s")


def autocast_dtype(device: torch.device, mixed_precision: bool = True) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs, None (fp32) elsewhere or when switched off."""
    if not mixed_precision or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --- private helpers --------------------------------------------------


def _profile_identity(cfg: Config, name: str, settings: dict[str, Any], seed: int, train_split: SplitData) -> dict[str, Any]:
    """The identity of the profile's run of recipe ``name``: its encoder, text model, captions and settings."""
    encoder = cfg.settings["audio_encoder"]
    return run_identity(name, settings, seed, encoder["width"], OUT_DIM, cfg.settings["text_model"],
                        train_split.vectors.shape[1], encoder["pretrained"], train_split)


def _stopped_advice(epoch: int) -> str:
    """What to do after a non-finite loss or embedding in ``epoch``: advice the run folder's identity check accepts."""
    kept = f"epoch {epoch - 1}" if epoch > 0 else "none: the untrained model already failed"
    return (f"Training stopped; the run folder keeps its last good checkpoint, last.pt ({kept}). Running again unchanged "
            "resumes from it and will likely stop the same way. A lower lr, or mixed_precision: false, is another setup, "
            "which that run folder refuses to resume: train it in a new run folder (train.train(cfg, run_dir=...)), or "
            "delete the old run folder first.")


def _loader_options(dataset, device: torch.device) -> dict[str, Any]:
    """No worker processes when the features are in memory; a few (each with its own HDF5 handle) when read from disk."""
    workers = 0 if dataset.store.preloaded else min(4, os.cpu_count() or 1)
    return {"num_workers": workers, "pin_memory": device.type == "cuda"}  # workers restart (and reseed) every epoch
