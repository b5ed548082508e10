"""Self-distillation: a second training whose targets mix the true matches with a first model's scores.

Taught in notebook 09. The idea of the DCASE 2024 winner (salsa): a caption often fits more clips than the
one it was written for, and a trained model knows which. Its scores, softened by a softmax, say how well
each clip of a batch fits each caption; a second model then trains against targets that mix the one-hot
matches (weight 1 - w) with those softened scores (weight w): ``loss.distillation_targets``. Here the first
model (the teacher) is frozen: its audio embeddings of the training clips are computed once, whole, and its
text branch scores each batch's captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.config import Config
from course_lib.data import SplitData
from course_lib.loss import distillation_targets
from course_lib.model import DualEncoder, embed_clips, load_trained_model

__all__ = [
    "Teacher", "load_teacher",
]


@dataclass
class Teacher:
    """A trained model's view of the training data: its text branch and every training clip's embedding."""

    model: DualEncoder
    clip_embeddings: torch.Tensor  # (clips, D): row k is training clip k (the clip ids of a batch index it)
    weight: float  # w: the share of the teacher's scores in the targets
    temperature: float  # how much its scores are softened

    @torch.no_grad()
    def targets(self, text: torch.Tensor, clip_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's (text->audio, audio->text) targets: the matches mixed with the teacher's softened scores."""
        scores = self.model.text_branch(text.to(self.clip_embeddings.device)) @ self.clip_embeddings[clip_ids].T
        return distillation_targets(scores, clip_ids, self.weight, self.temperature)


def load_teacher(checkpoint: str | Path, train_split: SplitData, weight: float, temperature: float,
                 device: str = "cpu", cfg: Config | None = None) -> Teacher:
    """The teacher from a trained model's checkpoint (read as every course checkpoint is), its clips embedded once.

    With ``cfg``, a teacher made for another setup of the profile (width, text model) is refused before training.
    """
    model = load_trained_model(Path(checkpoint), device=device, cfg=cfg)
    if getattr(model, "caption_encoder", None) is not None:
        raise ValueError(f"The teacher {checkpoint} fine-tunes its text encoder; distil from a model that reads cached "
                         "caption vectors (the baseline recipe's).")
    clips = embed_clips(model, train_split.h5_path, list(train_split.clip_fids), device=device)
    return Teacher(model, torch.from_numpy(clips).to(device), float(weight), float(temperature))
