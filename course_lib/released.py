"""The baseline's released weights (Zenodo record 7752975): load them into the course's model and evaluate.

Taught in notebook 06. The DCASE 2023 Task 6B baseline published two kinds of file:

* ``audio_encoder.pth``: the trained audio encoder alone, a bare ``CNN14Encoder`` state_dict
  (keys ``bn0.*``, ``cnn.*``, ``fc.1.*``, ``fc2.*``). ``course_lib.panns.load_encoder_weights``
  already loads such files; ``load_released_audio_encoder`` reads the width and output size off the
  file and builds the encoder to fit.
* a training checkpoint as the baseline's ``main.py`` saved it: a tuple ``(model_state,
  optimizer_state)``. The model keys are ``audio_enc.*`` (the encoder above), ``text_enc.fc.*`` (the
  trained 768 -> 300 caption projection) and ``text_enc.embedding.weight``: the frozen
  all-mpnet-base-v2 vectors of every Clotho caption, 29,646 x 768, row 0 the padding and row i+1 the
  i-th caption in development -> validation -> evaluation CSV order.

``load_released_checkpoint`` puts the audio encoder and the projection into a ``DualEncoder``;
``evaluate_released`` embeds a split's clips and captions with it and scores them with
``course_lib.metrics``: the published baseline, evaluated without training anything.

Getting the files: the course does not download them. The record's file names, sizes and md5
checksums could not be read when this was written, so none are written here (a wrong checksum
would be worse than none). ``how_to_get_released_files`` says where to put them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from course_lib import clotho, features, metrics, text
from course_lib._panns_weights import encoder_state, looks_like, read_checkpoint, refuse_non_finite, width_of
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import Config
from course_lib.model import DualEncoder, embed_captions, embed_clips
from course_lib.panns import load_encoder_weights

__all__ = [
    "ZENODO_RECORD", "RELEASED_FOLDER", "ENCODER_FILENAME", "CLOTHO_CAPTIONS", "TEXT_DIM", "SPLIT_ORDER",
    "load_released_audio_encoder", "ReleasedBaseline", "load_released_checkpoint", "table_rows", "evaluate_released",
    "released_paths", "how_to_get_released_files", "random_released_checkpoint",
]

ZENODO_RECORD = "https://zenodo.org/records/7752975"
RELEASED_FOLDER = "dcase2023_task6b_baseline"  # under cfg.downloads_dir
ENCODER_FILENAME = "audio_encoder.pth"  # the name the baseline's example/audio_encoder.py uses
CLOTHO_CAPTIONS = 29_645  # 19,195 development + 5,225 validation + 5,225 evaluation
TEXT_DIM = 768  # all-mpnet-base-v2
SPLIT_ORDER = ("development", "validation", "evaluation")  # the order the baseline numbered captions in


# --- the lesson: two file layouts into one model ---------------------------------------------------------------------


def load_released_audio_encoder(path_or_state: str | Path | Mapping) -> CNN14Encoder:
    """The released ``audio_encoder.pth`` (a bare CNN14Encoder state_dict) as an encoder in eval mode.

    Taught in notebook 06, section 6. The width and output size are read off the file's tensors.
    """
    checkpoint, source = read_checkpoint(path_or_state)
    state = encoder_state(checkpoint, source)
    out_dim, width = _encoder_shape(state, source)
    return load_encoder_weights(CNN14Encoder(out_dim=out_dim, width=width), state).eval()


@dataclass
class ReleasedBaseline:
    """The baseline's model as a course DualEncoder, plus the caption-vector table its checkpoint carried."""

    model: DualEncoder
    caption_table: torch.Tensor | None  # (1 + captions, 768); row 0 padding; None when the file lacks it
    source: str


def load_released_checkpoint(path_or_state: str | Path | Mapping | tuple) -> ReleasedBaseline:
    """A baseline training checkpoint ((model_state, optimizer_state), keys audio_enc.*, text_enc.*) as a DualEncoder.

    Taught in notebook 06, section 6. The audio encoder and the caption projection ``text_enc.fc`` are loaded
    strictly; the frozen table ``text_enc.embedding.weight`` is returned beside the model (the course
    reads caption vectors from its own embeddings file instead); the optimiser state is not needed.
    """
    checkpoint, source = read_checkpoint(path_or_state)
    model_state = _model_state(checkpoint, source)
    audio = load_released_audio_encoder(encoder_state(model_state, source))
    weight, bias = _projection(model_state, source, audio.out_dim)
    model = DualEncoder(audio, text_dim=weight.shape[1], pad_value=0.0)  # the baseline padded batches with zeros
    model.text_enc.fc.load_state_dict({"weight": weight, "bias": bias})
    table = model_state.get("text_enc.embedding.weight")
    if table is not None and (table.ndim != 2 or table.shape[1] != weight.shape[1]):
        raise ValueError(f"{source}: text_enc.embedding.weight has shape {tuple(table.shape)}, but the projection takes "
                         f"{weight.shape[1]}-d vectors. The file is damaged or from another model.")
    return ReleasedBaseline(model.eval(), table, source)


def table_rows(tables: Mapping[str, pd.DataFrame], split: str) -> np.ndarray:
    """Rows of the released caption table holding ``split``'s captions, in the split table's order.

    Taught in notebook 06, section 6. The baseline numbered captions 1, 2, ... through the development,
    validation and evaluation CSVs in that order (row 0 is padding), whatever their ids.
    """
    missing = [name for name in SPLIT_ORDER if name not in tables]
    if missing:
        raise ValueError(f"The caption table numbers captions over all three splits; tables for {missing} are missing.")
    offset = 1 + sum(len(tables[name]) for name in SPLIT_ORDER[: SPLIT_ORDER.index(split)])
    return offset + np.arange(len(tables[split]))


def evaluate_released(
    cfg: Config, checkpoint: str | Path | ReleasedBaseline, split: str = "evaluation", text_source: str = "course",
    device: str = "cpu",
) -> dict[str, Any]:
    """Text-to-audio and audio-to-text metrics of the released baseline on a split of the profile's data.

    Taught in notebook 06, section 6. ``text_source="course"`` embeds captions with the profile's Sentence-BERT
    (all-mpnet-base-v2 on the clotho profile) and projects them with the released ``text_enc.fc``;
    ``"table"`` uses the vectors stored in the checkpoint (real Clotho v2.1 only). Needs the
    profile's log-mels and caption tables (``course_lib.pipeline.prepare(cfg, until="embeddings")``).
    """
    released = checkpoint if isinstance(checkpoint, ReleasedBaseline) else load_released_checkpoint(checkpoint)
    tables = {name: clotho.load_caption_table(cfg, name) for name in cfg.splits}
    table = tables[split]
    if text_source == "course":
        tids, vectors = text.load_caption_embeddings(cfg)
        row_of = {tid: i for i, tid in enumerate(tids)}
        vectors = vectors[[row_of[tid] for tid in table["tid"]]]
    elif text_source == "table":
        vectors = _table_vectors(released, tables, split)
    else:
        raise ValueError(f"text_source must be 'course' or 'table', got {text_source!r}.")
    expected = released.model.text_enc.fc.in_features
    if vectors.shape[1] != expected:
        raise ValueError(
            f"The released projection takes {expected}-d caption vectors (all-mpnet-base-v2); profile {cfg.profile!r} "
            f"embeds captions with {cfg.settings['text_model']} ({vectors.shape[1]}-d). Use the clotho profile, "
            "or text_source='table' on real Clotho."
        )
    fids = list(dict.fromkeys(table["fid"]))
    audio_emb = embed_clips(released.model, features.features_path(cfg, split), fids, device=device)
    text_emb = embed_captions(released.model, vectors, device=device)
    scores = metrics.score_matrix(text_emb, audio_emb)
    return {"text_to_audio": metrics.text_to_audio(scores, list(table["fid"]), fids),
            "audio_to_text": metrics.audio_to_text(scores, list(table["fid"]), fids),
            "scores": scores, "caption_fids": list(table["fid"]), "clip_fids": fids}


def released_paths(cfg: Config) -> dict[str, Path]:
    """Where the course looks for the released files: <downloads>/dcase2023_task6b_baseline/{audio_encoder.pth, checkpoint}.

    Taught in notebook 06, section 6.
    """
    folder = Path(cfg.downloads_dir) / RELEASED_FOLDER
    return {"folder": folder, "audio_encoder": folder / ENCODER_FILENAME, "checkpoint": folder / "checkpoint"}


def how_to_get_released_files(cfg: Config) -> str:
    """Plain instructions for providing the released files by hand (offline, or because no checksum is known).

    Taught in notebook 06, section 6.
    """
    paths = released_paths(cfg)
    return (
        f"The DCASE 2023 Task 6B baseline's weights are on Zenodo, record 7752975 ({ZENODO_RECORD}).\n"
        f"1. Open the record in a browser and download the audio encoder ({ENCODER_FILENAME}, about 321 MB) and, if the "
        "record has it, the full training checkpoint (about 1 GB).\n"
        f"2. Put them in {paths['folder']}: the encoder as {paths['audio_encoder'].name}, the checkpoint as "
        f"{paths['checkpoint'].name}.\n"
        "3. Where the record lists a file's URL and md5, course_lib.download.fetch(url, md5, path) downloads and verifies "
        "it. The course ships no URL or md5 for these files: they could not be read when it was written, and a guessed "
        "checksum would be worse than none. Compare the md5 with the one Zenodo shows (course_lib.download.file_md5).\n"
        "4. Offline (no browser on this machine)? Download them elsewhere and copy them into that folder."
    )


def random_released_checkpoint(
    width: float = 0.125, text_dim: int = TEXT_DIM, captions: int = 30, out_dim: int = 300, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A stand-in in the baseline's checkpoint layout ((model_state, optimizer_state)) from random tensors: tests, demos.

    Taught in notebook 06, section 6.
    """
    torch.manual_seed(seed)
    model = DualEncoder(CNN14Encoder(out_dim=out_dim, width=width), text_dim)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["text_enc.embedding.weight"] = torch.randn(1 + captions, text_dim)
    state["text_enc.embedding.weight"][0] = 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return state, optimizer.state_dict()


# --- checks --------------------------------------------------------------------------------------------------------


def _encoder_shape(state: Mapping[str, torch.Tensor], source: str) -> tuple[int, float]:
    if "cnn.0.weight" not in state or "fc2.weight" not in state:
        raise ValueError(f"{source} is not a CNN14Encoder state_dict (no cnn.0.weight / fc2.weight); "
                         f"it looks like {looks_like(set(state))}. The released audio encoder is {ENCODER_FILENAME}.")
    return int(state["fc2.weight"].shape[0]), width_of(state["cnn.0.weight"])


def _model_state(checkpoint: Any, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, tuple | list) and checkpoint and isinstance(checkpoint[0], Mapping):
        checkpoint = checkpoint[0]  # (model_state, optimizer_state)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source} holds a {type(checkpoint).__name__}; the baseline's checkpoint is a tuple "
                         "(model_state_dict, optimizer_state_dict).")
    keys = set(checkpoint)
    if not any(str(key).startswith("audio_enc.") for key in keys) or "text_enc.fc.weight" not in keys:
        hint = f" For a bare encoder ({ENCODER_FILENAME}) use load_released_audio_encoder." if "cnn.0.weight" in keys else ""
        raise ValueError(f"{source} is not a baseline training checkpoint: it needs audio_enc.* and text_enc.fc.* keys; "
                         f"it looks like {looks_like(keys)}.{hint}")
    return checkpoint


def _projection(state: Mapping[str, torch.Tensor], source: str, out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = state["text_enc.fc.weight"], state.get("text_enc.fc.bias")
    if weight.ndim != 2 or weight.shape[0] != out_dim or bias is None or tuple(bias.shape) != (out_dim,):
        raise ValueError(f"{source}: text_enc.fc.weight has shape {tuple(weight.shape)} and text_enc.fc.bias "
                         f"{None if bias is None else tuple(bias.shape)}; the audio encoder ends in {out_dim} dimensions, "
                         f"so the projection must be ({out_dim}, d) and ({out_dim},).")
    refuse_non_finite({"text_enc.fc.weight": weight, "text_enc.fc.bias": bias}, source)
    return weight, bias


def _table_vectors(released: ReleasedBaseline, tables: Mapping[str, pd.DataFrame], split: str) -> np.ndarray:
    table = released.caption_table
    total = sum(len(tables[name]) for name in SPLIT_ORDER if name in tables)
    if table is None or len(table) != 1 + total:
        rows = "no caption table" if table is None else f"a table of {len(table)} rows"
        raise ValueError(f"{released.source} has {rows}; this data has {total} captions (+1 padding row). The stored "
                         "vectors only fit real Clotho v2.1 (29,646 rows). Use text_source='course'.")
    return table[table_rows(tables, split)].float().numpy()
