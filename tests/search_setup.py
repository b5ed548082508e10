"""The tiny search set-up shared by tests/test_search.py and tests/test_search_widget.py (not a test module).

A tiny synthetic Clotho-format profile (3 splits of 4-6 clips of 2-3 s) built by the course's own pipeline,
and an untrained CNN14 of width 0.125 saved as a checkpoint: enough to exercise every code path of the
engine and the widget in seconds. Whether a *trained* model searches well is not tested here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
import torch
import yaml

from course_lib.checkpoints import save_checkpoint
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import BASELINE_YAML, Config, load_config
from course_lib.model import DualEncoder
from course_lib.pipeline import prepare
from course_lib.search import ClipIndex, SearchEngine


def tiny_search_profile(root: Path) -> Config:
    """A tiny synthetic profile under root, prepared up to the caption embeddings, with an untrained model.pt beside it."""
    settings = yaml.safe_load(BASELINE_YAML.read_text())
    settings["profiles"]["synthetic"]["synth"] = {"seed": 3, "clips": {"development": 4, "validation": 4, "evaluation": 6},
                                                  "min_seconds": 2.0, "max_seconds": 3.0}
    (root / "tiny.yaml").write_text(yaml.safe_dump(settings))
    config = load_config("synthetic", data_root=root / "data", yaml_path=root / "tiny.yaml")
    prepare(config, until="embeddings", verbose=False)
    save_untrained_checkpoint(root / "model.pt", seed=0)
    return config


def tiny_engine(cfg: Config) -> SearchEngine:
    """The engine of the tiny profile's untrained model, on the CPU."""
    return SearchEngine.from_config(cfg, checkpoint=cfg.data_root.parent / "model.pt", device="cpu")


def save_untrained_checkpoint(path: Path, seed: int) -> Path:
    """An untrained DualEncoder (CNN14 width 0.125, MiniLM's 384-d text side) saved as a checkpoint."""
    torch.manual_seed(seed)
    model = DualEncoder(CNN14Encoder(300, 0.125), text_dim=384)
    identity = {"out_dim": 300, "width": 0.125, "text_dim": 384, "pad_value": 0.0}
    return save_checkpoint({"identity": identity, "model": model.state_dict()}, path)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str | None = None) -> bytes:
    """A WAV file's bytes (16-bit PCM unless subtype says otherwise)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


class Words:
    """A stand-in text model: one of 8 unit vectors a text, picked by its length."""

    def encode(self, texts, **kwargs):
        return np.eye(8, dtype=np.float32)[[len(text) % 8 for text in texts]]


def ready_engine(clip_vectors: np.ndarray, captions: pd.DataFrame | None = None,
                 caption_vectors: np.ndarray | None = None) -> SearchEngine:
    """An engine over one ready-made evaluation index (clips c0, c1, ... and no files), an untrained model (always
    the same one) and ``Words``; caption i's vector is the i-th unit vector unless ``caption_vectors`` are given."""
    torch.manual_seed(0)
    fids = np.array([f"c{j}" for j in range(len(clip_vectors))])
    if captions is None:
        captions = pd.DataFrame({"tid": ["t0"], "fid": ["c0"], "fname": ["c0.wav"], "raw_text": ["A hum."], "text": ["a hum"]})
    if caption_vectors is None:
        caption_vectors = np.eye(len(captions), 300, dtype=np.float32)
    index = ClipIndex("evaluation", fids, np.char.add(fids, ".wav"), np.asarray(clip_vectors, dtype=np.float32), captions,
                      np.asarray(caption_vectors, dtype=np.float32))
    return SearchEngine(DualEncoder(CNN14Encoder(300, 0.125), text_dim=8), Words(), {"evaluation": index})


def unit_rows(values: np.ndarray) -> np.ndarray:
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def query_engine(query: str, clips: int, seed: int, fitting: bool) -> SearchEngine:
    """``ready_engine`` over random clips, one caption a clip that fits it (its clip's vector plus some noise:
    cosine about 0.9); with ``fitting``, clip c7 points exactly where ``query`` points."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng.standard_normal((clips, 300)))  # cosines with any query: about N(0, 1/300)
    fids = [f"c{j}" for j in range(clips)]
    captions = pd.DataFrame({"tid": [f"t{j}" for j in range(clips)], "fid": fids, "fname": [f"{f}.wav" for f in fids],
                             "raw_text": [f"Sound {j}." for j in range(clips)], "text": [f"sound {j}" for j in range(clips)]})
    caption_vectors = unit_rows(vectors + 0.03 * rng.standard_normal((clips, 300)))
    if fitting:
        vectors[7] = ready_engine(vectors, captions, caption_vectors).embed_query(query)
    return ready_engine(vectors, captions, caption_vectors)
