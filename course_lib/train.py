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

Beyond the baseline (notebook 09), a recipe can switch on ideas of the later systems, each off in
``baseline``: a learned temperature, a fine-tuned text encoder, SpecAugment masks, extra captions, and
self-distillation from a first model (``OPTIONS``). A recipe without one of these keys has it off.

A run lives in one folder (``run_dir``, which may be on Google Drive): ``last.pt`` (everything
needed to resume, written after every epoch), ``best.pt`` (the model with the lowest validation
loss), ``history.csv`` and ``history.json``. How they are written, checked and read back, and the
lock that keeps to one training per folder, is ``course_lib.checkpoints``. A run killed at any
moment resumes from its last complete epoch and ends where an uninterrupted run would; raising
``max_epochs`` continues a finished run.
"""

from __future__ import annotations

import copy
import dataclasses
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
from course_lib._text_models import load_text_model
from course_lib.augment import SPEC_AUGMENT_OFF, spec_augment_on
from course_lib.caption_augment import extra_caption_vectors
from course_lib.checkpoints import (
    load_checkpoint,
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
from course_lib.config import BASELINE_YAML, OUT_DIM, Config, ConfigError, recipe_problems, resolve_device
from course_lib.data import PAD_VALUES, Collate, SplitData, load_split, make_dataset, reseed
from course_lib.distill import load_teacher
from course_lib.loss import Temperature, infonce_loss, soft_infonce_loss
from course_lib.model import (
    DualEncoder,
    caption_inputs,
    embed_captions,
    embed_clips,
    finetuned_layers,
    model_from_identity,
    run_dir_for,
)
from course_lib.panns import ensure_pretrained_encoder
from course_lib.text_finetune import CaptionEncoder, trainable_parameters

__all__ = [
    "TrainingError", "Step", "fit", "train_one_epoch", "validate", "selects_by", "selection_score",
    "plateau_reached", "run_is_done", "recipe_settings", "epoch_budget", "train", "ensure_trained", "best_epoch",
    "format_row", "autocast_dtype", "read_history", "OPTIONS", "options_on", "recipe_with",
]

# Beyond the baseline (notebook 09): each idea's settings when it is off, as in baseline.yaml's baseline recipe.
OPTIONS: dict[str, Any] = {
    "learn_temperature": False,  # true: tau is a parameter (log tau), starting at the recipe's temperature
    "text_finetune": {"layers": 0, "lr": 2.0e-5},  # layers > 0: the text model's top layers train, at their own lr
    "spec_augment": SPEC_AUGMENT_OFF,  # time and frequency masks on training log-mels
    "caption_augment": {"source": None, "probability": 0.5, "per_caption": 2},  # extra captions of the same clip
    "distill": {"teacher": None, "weight": 0.5, "temperature": 0.07},  # a first model's best.pt to distil from
}


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or embedding); the message says why and what to do."""


@dataclass
class Step:
    """How a training step runs: on which device, at which precision, with which InfoNCE temperature."""

    device: torch.device
    temperature: Temperature | float  # step.temperature() is tau: fixed (the baseline) or learned (notebook 09)
    amp_dtype: torch.dtype | None  # bf16 or fp16 autocast on a CUDA GPU; None: full fp32
    scaler: torch.amp.GradScaler  # scales the loss for fp16; passes it through otherwise
    teacher: Any = None  # notebook 09: a course_lib.distill.Teacher whose scores soften the targets; None: one-hot

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, Temperature):  # a number: the baseline's fixed temperature
            self.temperature = Temperature(float(self.temperature)).to(self.device)

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
    extras: dict[str, Any] | None = None,
) -> Path:
    """Train ``model`` with InfoNCE as ``recipe`` says, resuming ``run_dir`` when it holds a run; returns best.pt.

    Taught in notebook 05, section 6. ``callback(history_row, model)`` is called after every epoch (live plots).
    ``extras`` carries what notebook 09's options need beyond the recipe ("teacher", "extra_vectors"; ``train`` fills it).
    """
    run_dir, extras = Path(run_dir), extras or {}
    # The device (CUDA, Apple MPS or CPU) and the precision: bf16 autocast where the GPU has it, else fp16 with a scaler.
    device = torch.device(resolve_device(device))
    amp_dtype = autocast_dtype(device, recipe.get("mixed_precision", True))
    temperature = Temperature(recipe["temperature"], learnable=recipe.get("learn_temperature", False)).to(device)
    step = Step(device, temperature, amp_dtype, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                extras.get("teacher"))
    # Seeds: the same seed gives the same model (on a CPU, bit for bit).
    seed_everything(seed)
    model.pad_value = PAD_VALUES[recipe["pad_value"]]
    model.to(device)
    # The data: captions (or clips) in a new random order every epoch; whole clips padded, or random crops.
    collate = Collate(recipe.get("crop_frames"), model.pad_value, recipe.get("spec_augment"))
    train_set = make_dataset(train_split, recipe["sampling"], text_inputs=caption_inputs(model, train_split))
    train_set.extra_vectors = extras.get("extra_vectors") or {}  # caption augmentation (notebook 09)
    train_set.extra_probability = (recipe.get("caption_augment") or {}).get("probability", 0.0)
    loader_rng = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, recipe["batch_size"], shuffle=True, generator=loader_rng, collate_fn=collate,
                              **_loader_options(train_set, device))
    # Validation: every caption, in fixed batches of one shuffled order, against its clip embedded whole.
    val_order = np.random.default_rng(0).permutation(len(val_split.fids))
    val_batches = [val_order[i : i + recipe["batch_size"]] for i in range(0, len(val_order), recipe["batch_size"])]
    val_text = caption_inputs(model, val_split)  # vectors, or tokens (tokenised once) for a fine-tuned text encoder
    # Adam, and ReduceLROnPlateau on the validation loss (the baseline) or mAP@10, with the baseline's values.
    optimizer = torch.optim.Adam(_parameter_groups(model, temperature, recipe), lr=recipe["lr"],
                                 weight_decay=recipe.get("weight_decay", 0.0))
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
            if "temperature" in checkpoint:  # runs saved before the option existed had the fixed 0.07
                temperature.load_state_dict(checkpoint["temperature"])
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
            val_loss, val_map10 = validate(model, val_split, val_batches, step, epoch, val_text)
            scheduler.step(val_loss if selects_by(recipe) == "val_loss" else val_map10)
            history.append({
                "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_t2a_map10": val_map10,
                "lr": optimizer.param_groups[0]["lr"], "temperature": float(temperature().detach()),
                "epoch_s": time.perf_counter() - epoch_start,
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
                "scaler": step.scaler.state_dict(), "temperature": temperature.state_dict(), "epoch": epoch,
                "history": history, "best_score": best_score,
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
            if step.teacher is None:
                loss = infonce_loss(audio_emb, text_emb, clip_ids, step.temperature())
            else:  # self-distillation (notebook 09): the targets mix the matches with a first model's softened scores
                loss = soft_infonce_loss(audio_emb, text_emb, clip_ids, step.teacher.targets(text, clip_ids),
                                         step.temperature())
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
    model: DualEncoder, split: SplitData, batches: Sequence[np.ndarray], step: Step, epoch: int = 0,
    text_inputs: np.ndarray | torch.Tensor | None = None,
) -> tuple[float, float]:
    """Validation loss (mean InfoNCE of the caption batches) and text-to-audio mAP@10, from clips embedded as evaluation does.

    Each clip is embedded once, whole and unpadded (``embed_clips``); the mAP@10 is DCASE's on one score matrix.
    ``text_inputs``: what the text branch reads (default: ``caption_inputs(model, split)``; ``fit`` tokenises once).
    """
    clip_fids = list(split.clip_fids)
    audio = embed_clips(model, split.h5_path, clip_fids, device=str(step.device))
    text_inputs = caption_inputs(model, split) if text_inputs is None else text_inputs
    text = embed_captions(model, text_inputs, device=str(step.device))
    if not (np.isfinite(audio).all() and np.isfinite(text).all()):
        raise TrainingError(f"The model gave NaN or infinite embeddings in the validation of epoch {epoch}: the last "
                            f"updates of the epoch broke its weights. {_stopped_advice(epoch)}")
    clip_of = pd.Index(clip_fids).get_indexer(split.fids)  # each caption's clip, as a row of ``audio``
    audio_t, text_t = torch.from_numpy(audio), torch.from_numpy(text)
    tau = float(step.temperature().detach())
    losses = [infonce_loss(audio_t[clip_of[rows]], text_t[rows], torch.from_numpy(clip_of[rows]), tau).item()
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
    _check_options(name, settings)
    train_split, val_split = load_split(cfg, "development"), load_split(cfg, "validation")
    identity = _profile_identity(cfg, name, _with_teacher_fingerprint(cfg, settings), seed, train_split)
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg, name)
    torch.manual_seed(seed)  # the random initialisation depends on the seed only
    if (run_dir / "last.pt").is_file():
        model = model_from_identity(identity)  # its weights come from last.pt, which fit checks before using it
    else:
        encoder = ensure_pretrained_encoder(cfg, verbose=verbose)[0]  # PANNs weights when the profile asks for them
        model = DualEncoder(encoder, identity["text_dim"], caption_encoder=_caption_encoder(cfg, settings))
    device = cfg.settings.get("device", "auto")
    return fit(model, train_split, val_split, settings, run_dir, identity, seed, device, callback, verbose,
               _option_extras(cfg, settings, train_split, resolve_device(device)))


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
    """The identity of the profile's run of recipe ``name``: its encoder, text model, captions and settings.

    Notebook 09's options count only when on: a baseline run is the same run with or without their keys.
    """
    encoder = cfg.settings["audio_encoder"]
    on = options_on(settings)
    settings = {key: value for key, value in settings.items() if key not in OPTIONS or key in on}
    return run_identity(name, settings, seed, encoder["width"], OUT_DIM, cfg.settings["text_model"],
                        train_split.vectors.shape[1], encoder["pretrained"], train_split)


# --- beyond the baseline (notebook 09) --------------------------------------------------------


def options_on(recipe: dict[str, Any]) -> list[str]:
    """The names of notebook 09's options a recipe switches on (none in the baseline)."""
    on = {
        "learn_temperature": bool(recipe.get("learn_temperature", False)),
        "text_finetune": finetuned_layers(recipe) > 0,
        "spec_augment": spec_augment_on(recipe.get("spec_augment")),
        "caption_augment": (recipe.get("caption_augment") or {}).get("source") is not None,
        "distill": (recipe.get("distill") or {}).get("teacher") is not None,
    }
    return [name for name, is_on in on.items() if is_on]


def recipe_with(cfg: Config, changes: dict[str, Any], recipe: str | None = None, name: str | None = None) -> tuple[str, Config]:
    """(recipe name, a Config holding the recipe with ``changes``): nested settings are merged, unknown keys refused.

    Notebook 09's experiments (course_lib.beyond) and notebook 08's trials use it. ``name`` names the changed recipe
    (default: unchanged).
    """
    base, settings = recipe_settings(cfg, recipe)
    unknown = sorted(set(changes) - set(settings) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"Recipe {base!r} has no setting {unknown}. Use its settings ({', '.join(settings)}) or "
                          f"notebook 09's options ({', '.join(OPTIONS)}).")
    for key, value in changes.items():
        default = settings.get(key, OPTIONS.get(key))
        settings[key] = {**copy.deepcopy(default), **value} if isinstance(default, dict) and isinstance(value, dict) else value
    if problems := recipe_problems(settings, f"training.{base}"):
        raise ConfigError(f"Recipe {base!r} with {changes} cannot be used: " + "; ".join(problems))
    name = name or base
    return name, dataclasses.replace(cfg, training={**(cfg.training or {}), name: settings})


def _check_options(name: str, recipe: dict[str, Any]) -> None:
    """Refuse options that cannot go together, naming them and what to do."""
    on = set(options_on(recipe))
    for pair in (("text_finetune", "caption_augment"), ("text_finetune", "distill")):
        if set(pair) <= on:
            raise ConfigError(f"Recipe {name!r} switches on both {pair[0]} and {pair[1]}; this course trains them one at "
                              f"a time. Switch one off.")


def _option_extras(cfg: Config, recipe: dict[str, Any], train_split: SplitData, device: str) -> dict[str, Any]:
    """What the switched-on options need beyond the recipe: the teacher, the extra caption vectors."""
    extras: dict[str, Any] = {}
    if "distill" in options_on(recipe):
        distill = _option(recipe, "distill")
        extras["teacher"] = load_teacher(_teacher_path(cfg, distill["teacher"]), train_split, distill["weight"],
                                         distill["temperature"], device, cfg)
    if "caption_augment" in options_on(recipe):
        augment = _option(recipe, "caption_augment")
        extras["extra_vectors"] = extra_caption_vectors(cfg, augment["source"], augment["per_caption"])
    return extras


def _option(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """An option's settings: the recipe's, with OPTIONS' values for the keys it leaves out."""
    return {**OPTIONS[name], **(recipe.get(name) or {})}


def _caption_encoder(cfg: Config, recipe: dict[str, Any]) -> torch.nn.Module | None:
    """The text model with its top layers trainable when the recipe fine-tunes it, else None (cached vectors)."""
    if not (layers := finetuned_layers(recipe)):
        return None
    return CaptionEncoder(load_text_model(cfg.settings["text_model"]), layers)


def _teacher_path(cfg: Config, teacher: str) -> Path:
    """A teacher's best.pt: a path to a .pt file or a folder holding best.pt, else a recipe's run of this profile."""
    path = Path(str(teacher)).expanduser()
    if path.suffix == ".pt" or path.is_dir() or "/" in str(teacher):
        return path / "best.pt" if path.is_dir() else path
    return run_dir_for(cfg, str(teacher)) / "best.pt"


def _with_teacher_fingerprint(cfg: Config, recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as its run's identity sees it: a teacher by its checkpoint's fingerprint, not by where it lies."""
    if "distill" not in options_on(recipe):
        return recipe
    path = _teacher_path(cfg, recipe["distill"]["teacher"])
    if not path.is_file():
        raise ConfigError(f"The distillation teacher {path} does not exist. Train it first (its recipe's run, or the "
                          "run folder you named), or set distill.teacher to a trained model's best.pt.")
    return {**recipe, "distill": {**recipe["distill"], "teacher": f"fingerprint {load_checkpoint(path)['fingerprint']}"}}


def _parameter_groups(model: DualEncoder, temperature: Temperature, recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Adam's parameter groups: the model at the recipe's lr, a learned temperature, a fine-tuned text encoder at its lr."""
    text = model.caption_encoder
    groups = [{"params": [p for name, p in model.named_parameters()
                          if p.requires_grad and not name.startswith("caption_encoder.")]}]
    if temperature.log_tau.requires_grad:  # no weight decay: it would pull tau towards 1
        groups.append({"params": [temperature.log_tau], "weight_decay": 0.0})
    if text is not None:
        groups.append({"params": trainable_parameters(text), "lr": _option(recipe, "text_finetune")["lr"]})
    return groups


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
