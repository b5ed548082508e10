"""The dual encoder: clips and captions mapped into one 300-d space where a dot product scores a match.

Taught in notebook 05. As in the baseline (models/core.py, ``DualEncoderModel``):

    audio_enc   CNN14Encoder: log-mels (B, T, 64) -> (B, 300), trained
    text_enc    frozen Sentence-BERT caption vectors (B, d) -> fc = Linear(d, 300), the only trained text part
    both outputs are L2-normalised, so the dot product of two embeddings is their cosine similarity.

Parameter names keep the baseline's prefixes (``audio_enc.*``, ``text_enc.fc.*``). The baseline's
text_enc also stored the frozen SBERT table as ``text_enc.embedding.weight``; here the caption
vectors are read from the embeddings file instead, so that key is absent (load a released
checkpoint with ``strict=False`` and check that only it is left over).

Beyond the baseline (notebook 09): with ``caption_encoder`` set, the text branch reads caption tokens and runs
them through a Sentence-BERT whose top layers train (``course_lib.text_finetune``) before the projection;
``ensemble_text_to_audio`` scores a split with the mean of several models' score matrices.

A trained model is read back from its run's best.pt through ``course_lib.checkpoints.load_checkpoint``
(``weights_only=True``, fingerprint checked), the one way the course reads its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import metrics
from course_lib._text_models import load_text_model
from course_lib.checkpoints import CheckpointError, differences, load_checkpoint
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import OUT_DIM, Config
from course_lib.data import SplitData
from course_lib.features import REBUILD_FEATURES, check_log_mel
from course_lib.text_cache import caption_embeddings_path
from course_lib.text_finetune import CaptionEncoder, tokenise

__all__ = [
    "TextProjection", "DualEncoder", "embed_clips", "embed_captions", "caption_inputs", "split_scores",
    "evaluate_text_to_audio", "ensemble_text_to_audio", "load_trained_model", "run_dir_for", "best_checkpoint_path",
    "model_from_identity", "finetuned_layers",
]


class TextProjection(nn.Module):
    """The trainable part of the baseline's text encoder: caption vectors (B, d) -> (B, out_dim)."""

    def __init__(self, text_dim: int, out_dim: int = OUT_DIM):
        super().__init__()
        self.fc = nn.Linear(text_dim, out_dim)
        nn.init.kaiming_normal_(self.fc.weight)  # the baseline's init: Kaiming normal, zero bias
        nn.init.zeros_(self.fc.bias)

    def forward(self, caption_vectors: torch.Tensor) -> torch.Tensor:
        return self.fc(caption_vectors)


class DualEncoder(nn.Module):
    """CNN14 audio branch and caption projection, both ending in unit-length 300-d embeddings.

    Taught in notebook 05, section 1.
    """

    def __init__(self, audio_enc: CNN14Encoder, text_dim: int, pad_value: float = 0.0,
                 caption_encoder: nn.Module | None = None):
        super().__init__()
        self.audio_enc = audio_enc
        self.text_enc = TextProjection(text_dim, audio_enc.out_dim)
        self.pad_value = float(pad_value)  # how training padded its batches (kept with the checkpoint)
        self.caption_encoder = caption_encoder  # notebook 09: a fine-tuned Sentence-BERT reading tokens; None: vectors

    def audio_branch(self, log_mels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_enc(log_mels), p=2, dim=-1)

    def text_branch(self, captions: torch.Tensor) -> torch.Tensor:
        if self.caption_encoder is not None:  # tokens -> sentence vectors, as Sentence-BERT computes them
            captions = self.caption_encoder(captions)
        return F.normalize(self.text_enc(captions), p=2, dim=-1)

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_branch(audio), self.text_branch(text)


@torch.no_grad()
def embed_clips(
    model: DualEncoder, h5_path: str | Path, fids: list[str] | np.ndarray, batch_size: int = 32, device: str = "cpu"
) -> np.ndarray:
    """(N, 300) unit embeddings of whole clips, in the order of ``fids``. Taught in notebook 05, section 7.

    Each clip is embedded whole and unpadded, as the baseline's scoring script did: padding would change
    a clip's embedding (it enters bn0 and the pooling). Only clips of equal length share a forward pass.
    """
    model.eval().to(device)
    with h5py.File(h5_path, "r") as h5:
        clips = [_read_clip(h5, str(fid), h5_path) for fid in fids]
    out = np.zeros((len(clips), model.audio_enc.out_dim), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for row, clip in enumerate(clips):
        by_length.setdefault(len(clip), []).append(row)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            batch_rows = rows[start : start + batch_size]
            batch = torch.from_numpy(np.stack([clips[row] for row in batch_rows])).to(device)
            out[batch_rows] = model.audio_branch(batch).float().cpu().numpy()
    return out


@torch.no_grad()
def embed_captions(
    model: DualEncoder, vectors: np.ndarray | torch.Tensor, batch_size: int = 4096, device: str = "cpu"
) -> np.ndarray:
    """(M, 300) unit embeddings of caption vectors (M, d), or of caption tokens for a fine-tuned text encoder.

    Taught in notebook 05, section 7.
    """
    model.eval().to(device)
    if isinstance(vectors, torch.Tensor) and not vectors.is_floating_point():
        batch_size = min(batch_size, 256)  # tokens go through a transformer
    else:
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    parts = [model.text_branch(vectors[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(vectors), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.text_enc.fc.out_features), dtype=np.float32)


def caption_inputs(model: DualEncoder, split: SplitData) -> np.ndarray | torch.Tensor:
    """What the model's text branch reads for a split's captions: the cached vectors, or their tokens (notebook 09)."""
    if model.caption_encoder is None:
        return split.vectors
    return tokenise(model.caption_encoder.text_model, list(split.captions))


def split_scores(model: DualEncoder, split: SplitData, device: str = "cpu") -> np.ndarray:
    """(captions, clips) scores of a split: every caption against every clip, each clip embedded whole."""
    return metrics.score_matrix(embed_captions(model, caption_inputs(model, split), device=device),
                                embed_clips(model, split.h5_path, list(split.clip_fids), device=device))


def evaluate_text_to_audio(model: DualEncoder, split: SplitData, device: str = "cpu") -> metrics.Retrieval:
    """DCASE text-to-audio retrieval on a split: every caption scored against every clip, each clip embedded whole."""
    return metrics.text_to_audio(split_scores(model, split, device), split.fids, list(split.clip_fids))


def ensemble_text_to_audio(models: list[DualEncoder], split: SplitData, device: str = "cpu") -> metrics.Retrieval:
    """Text-to-audio retrieval ranked by the mean of several models' score matrices. Taught in notebook 09, section 6."""
    if not models:
        raise ValueError("An ensemble needs at least one model; pass a list of trained models.")
    scores = np.mean([split_scores(model, split, device) for model in models], axis=0)
    return metrics.text_to_audio(scores, split.fids, list(split.clip_fids))


def load_trained_model(cfg_or_checkpoint_path: Any, device: str = "cpu", cfg: Config | None = None) -> DualEncoder:
    """The trained DualEncoder (eval mode) from a checkpoint file, or the profile's best one for a Config.

    Taught in notebook 05, section 7. With a Config (first argument, or ``cfg``) a checkpoint made for
    another setup of the profile (encoder width, output size, text model) is refused.
    """
    if isinstance(cfg_or_checkpoint_path, str | Path):
        path = Path(cfg_or_checkpoint_path)
    else:
        cfg = cfg_or_checkpoint_path
        path = best_checkpoint_path(cfg)
    if not path.is_file():
        raise FileNotFoundError(f"No trained model at {path}. Train one with course_lib.train.ensure_trained(cfg) (notebook 05).")
    checkpoint = load_checkpoint(path)
    if cfg is not None:
        _check_profile(path, checkpoint["identity"], cfg)
    model = _model_for(path, checkpoint)
    return model.to(device).eval()


def run_dir_for(cfg: Config, recipe: str | None = None) -> Path:
    """Where the profile's training run of a recipe lives: <models>/dual_encoder/<recipe>/ (default: the profile's recipe)."""
    return cfg.models_dir / "dual_encoder" / (recipe or cfg.settings.get("training_recipe", "baseline"))


def best_checkpoint_path(cfg: Config, recipe: str | None = None) -> Path:
    """The best checkpoint (lowest validation loss) of the profile's run of a recipe."""
    return run_dir_for(cfg, recipe) / "best.pt"


def model_from_identity(identity: dict[str, Any], caption_encoder: bool = True) -> DualEncoder:
    """A fresh DualEncoder with the sizes a training run recorded (width, out_dim, text_dim, pad value), and the
    fine-tuned text encoder when the run had one (``caption_encoder=False`` leaves it out).
    """
    audio_enc = CNN14Encoder(out_dim=int(identity["out_dim"]), width=float(identity["width"]))
    text = None
    if caption_encoder and (layers := finetuned_layers(identity.get("settings", {}))):
        text = CaptionEncoder(load_text_model(identity["text_model"]), layers)
    return DualEncoder(audio_enc, int(identity["text_dim"]), pad_value=float(identity["pad_value"]), caption_encoder=text)


def finetuned_layers(recipe: dict[str, Any]) -> int:
    """How many top layers of the text model a recipe fine-tunes (0: the baseline's cached, frozen vectors)."""
    return int((recipe.get("text_finetune") or {}).get("layers", 0))


# --- helpers -----------------------------------------------------------------------------------


def _check_profile(path: Path, identity: dict[str, Any], cfg: Config) -> None:
    """Refuse a checkpoint whose encoder width, output size, text model or caption-vector size is not the profile's."""
    wanted = {"width": float(cfg.settings["audio_encoder"]["width"]), "out_dim": OUT_DIM}
    if "text_model" in identity:
        wanted["text_model"] = str(cfg.settings["text_model"])
    if (text_dim := _caption_vector_size(cfg)) is not None:
        wanted["text_dim"] = text_dim
    changed = differences({key: identity.get(key) for key in wanted}, wanted)
    if changed:
        raise CheckpointError(
            f"Checkpoint {path} was made for another setup than profile {cfg.profile!r}:\n  " + "\n  ".join(changed)
            + "\nTrain this profile's model with course_lib.train.ensure_trained(cfg) (notebook 05), after deleting "
            f"{path.parent} if it holds that other run."
        )


def _caption_vector_size(cfg: Config) -> int | None:
    """The size of the profile's caption vectors, from its embeddings file's identity (None when there is none yet)."""
    try:
        with np.load(caption_embeddings_path(cfg), allow_pickle=False) as stored:
            return int(json.loads(str(stored["identity"]))["dimension"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _model_for(path: Path, checkpoint: dict[str, Any]) -> DualEncoder:
    """The model a checkpoint's identity describes, with its weights; shapes are compared before any memory is taken."""
    try:
        with torch.device("meta"):  # sizes only: a checkpoint naming an absurd width allocates nothing
            skeleton = model_from_identity(checkpoint["identity"], caption_encoder=False).state_dict()
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint {path} has an incomplete run identity ({exc!r}). Train the model again.") from None
    # A fine-tuned text encoder (notebook 09) is the text model's own architecture: its keys are checked on loading.
    state = {key: value for key, value in checkpoint["model"].items() if not key.startswith("caption_encoder.")}
    wrong = [f"{key}: {tuple(state[key].shape) if key in state else 'missing'} in the file, {tuple(value.shape)} wanted"
             for key, value in skeleton.items() if key not in state or state[key].shape != value.shape]
    wrong += [f"{key}: in the file, not in the model" for key in state if key not in skeleton]
    if wrong:
        raise CheckpointError(f"Checkpoint {path} does not fit the model its identity describes: " + "; ".join(wrong[:3])
                              + ". Train the model again.")
    model = model_from_identity(checkpoint["identity"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:  # only the fine-tuned text encoder's keys can differ here
        raise CheckpointError(f"Checkpoint {path} does not fit its fine-tuned text encoder ({exc}). "
                              "Train the model again.") from None
    return model


def _read_clip(h5: h5py.File, fid: str, h5_path: str | Path) -> np.ndarray:
    if fid not in h5:
        raise KeyError(f"No log-mel for fid {fid!r} in {h5_path}. {REBUILD_FEATURES}")
    return check_log_mel(np.asarray(h5[fid][()], dtype=np.float32), fid, h5_path)
