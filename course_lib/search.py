"""Search the clips by describing them: an exact embedding index, and the queries it answers.

Taught in notebook 07. The trained dual encoder maps every clip of a split to a unit vector, once:
that table is the index. A text query takes the road captions took in training (Sentence-BERT,
then the model's text projection) and ends as one unit vector too; its cosine with every clip is
one matrix product, and ``metrics.top_k`` picks the k best without sorting all N scores. Ranks and
ties follow the one rule of ``course_lib.metrics`` (an equal score never counts in an item's favour),
so a rank here is the rank notebook 06 measures. Exact search like this is right up to about 100,000
clips (a few ms a query on 2 cores); Clotho has under 7,000, so no approximate index is needed.

A score alone does not say that a clip fits: a query that describes nothing still has a best clip.
Two yardsticks, both computed here and shown by the widget: each hit's **z-score**, how many standard
deviations its score lies above the query's mean score over the whole index (one clip far above the
rest, or a group, or a flat field); and the best clip's **fit** (``fit_percentile``): every caption of
the split is a real description of a sound, so the best scores the split's captions reach as queries
(``ClipIndex.best_scores``) show what the top result of a real description scores with this model; the
fit is the share of them that the query's best clip beats. Below 5 % (the best clip scores lower than
the best clip of 95 % of the split's captions), **nothing stands out**, and the results say so.

The same index answers sounds: a clip of the split ("more like this") or an uploaded file, through
the same log-mel front end and the audio branch, gives the nearest clips and the nearest captions
(audio-to-text).

    engine = SearchEngine.from_config(cfg)          # trained model + text model + cached index
    results = engine.search("rain on a tin roof", split="evaluation", k=10)

The widget and the printed rows are in ``course_lib.search_widget``. Below the lesson: checks on
queries, k, splits and uploads, and the index cache (rebuilt when the checkpoint or the features change).
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from course_lib import features
from course_lib.clotho import clean_caption, load_caption_table
from course_lib.cnn14 import MIN_FRAMES
from course_lib.config import Config, resolve_device
from course_lib.data import load_split
from course_lib.files import atomic_path, building
from course_lib.metrics import ranks_of, top_k
from course_lib.model import (
    DualEncoder,
    best_checkpoint_path,
    caption_inputs,
    embed_captions,
    embed_clips,
    load_trained_model,
)
from course_lib.text_finetune import tokenise

__all__ = [
    "ClipIndex", "Hit", "QueryError", "Results", "SearchEngine", "build_index", "fit_percentile", "load_index",
    "query_problem", "sound_to_log_mel", "z_scores",
]

MAX_QUERY_CHARS = 300  # Sentence-BERT reads at most 256-384 word pieces; a query is a sentence, not a page
MAX_SOUND_SECONDS = 60.0  # an uploaded sound is cut here (Clotho's clips last 15-30 s)
NOTHING_STANDS_OUT_BELOW = 5.0  # percent: the best clip scores lower than the best clip of 95 % of the split's captions


class QueryError(ValueError):
    """A query the engine cannot search for (empty, too long, not a readable sound, a bad k or split); says what to do."""


# --- the lesson: an index, a query vector, one matrix product ---------------------------------


@dataclass
class ClipIndex:
    """One split's clips and captions, embedded by one trained model (unit rows, so a dot product is a cosine)."""

    split: str
    fids: np.ndarray  # (N,) clip ids
    fnames: np.ndarray  # (N,) wav file names
    clip_vectors: np.ndarray  # (N, 300) the audio branch of each whole clip
    captions: pd.DataFrame  # one row per caption: tid, fid, fname, raw_text, text
    caption_vectors: np.ndarray  # (M, 300) the text branch of each caption
    h5_path: Path | None = None  # the split's log-mels (for pictures)

    def captions_of(self, fid: str) -> list[str]:
        """The clip's own captions (raw text), in the CSV's order."""
        return self._captions_by_fid.get(fid, [])

    @cached_property
    def _captions_by_fid(self) -> dict[str, list[str]]:
        return {str(fid): group.tolist() for fid, group in self.captions.groupby("fid", sort=False)["raw_text"]}

    def clips_described_by(self, query: str) -> list[str]:
        """The fids of the clips that have ``query`` as one of their captions (compared as cleaned text)."""
        return self._fids_by_text.get(clean_caption(query), [])

    @cached_property
    def _fids_by_text(self) -> dict[str, list[str]]:
        groups = self.captions.groupby("text", sort=False)["fid"]
        return {str(text): list(dict.fromkeys(group.tolist())) for text, group in groups}

    @cached_property
    def best_scores(self) -> np.ndarray:
        """(M,) sorted: each caption's best score over the split's clips, i.e. the top result of a real description."""
        if len(self.caption_vectors) != len(self.captions) or not len(self.fids):  # no captions to compare with
            return np.zeros(0, dtype=np.float32)
        return np.sort((self.caption_vectors @ self.clip_vectors.T).max(axis=1))


def z_scores(scores: np.ndarray) -> np.ndarray:
    """Each score's distance above the query's mean score over the index, in standard deviations.

    Taught in notebook 07, section 1. Scores of -inf (an item left out of the ranking) are left out of
    the mean and spread; when every score is equal there is no spread and every z-score is 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    spread = float(finite.std()) if len(finite) else 0.0
    if spread == 0.0:
        return np.where(np.isfinite(scores), 0.0, scores)
    return (scores - finite.mean()) / spread


def fit_percentile(score: float, best_scores: np.ndarray) -> float:
    """The percentage of the split's captions (``ClipIndex.best_scores``, sorted) whose best clip scores lower than ``score``.

    Taught in notebook 07, section 1. 50: the query's best clip scores like the best clip of a typical
    caption; below 5 (NOTHING_STANDS_OUT_BELOW), lower than for 95 % of them: nothing stands out. NaN
    without captions to compare with.
    """
    if len(best_scores) == 0:
        return float("nan")
    return 100.0 * int(np.searchsorted(best_scores, score, side="left")) / len(best_scores)


@dataclass
class Hit:
    """One result row: a clip (or a caption) with its rank, score and how that score stands among all the scores."""

    rank: int
    score: float
    fid: str
    fname: str
    text: str = ""  # for caption hits: the caption
    captions: list[str] = field(default_factory=list)  # for clip hits: the clip's own captions
    marked: bool = False  # the clip the query caption belongs to, or a caption of the query clip
    z: float = 0.0  # standard deviations above the query's mean score over the index (z_scores)


@dataclass
class Results:
    """What one query found: clips (and, for a sound, captions), the marked clips' ranks, or a message."""

    query: str
    split: str
    clips: list[Hit] = field(default_factory=list)
    captions: list[Hit] = field(default_factory=list)
    marked_ranks: dict[str, int] = field(default_factory=dict)  # {fname: rank among all clips or captions}
    message: str = ""  # why nothing was searched (a bad query), or a note on what was
    sound: tuple[np.ndarray, int] | None = None  # an uploaded sound (samples, rate), for its player
    best_fit: float = float("nan")  # text queries: fit_percentile of the best clip's score (NaN: not measured)

    @property
    def nothing_stands_out(self) -> bool:
        """True when a text query's best clip scores lower than the best clip of 95 % of the split's captions."""
        return bool(self.clips) and self.best_fit < NOTHING_STANDS_OUT_BELOW


class SearchEngine:
    """A trained dual encoder, its Sentence-BERT model and one index a split. Taught in notebook 07 (its opening cells)."""

    def __init__(self, model: DualEncoder, text_model: Any, indexes: dict[str, ClipIndex] | Callable[[str], ClipIndex],
                 splits: list[str] | None = None, audio_dirs: dict[str, Path] | None = None,
                 params: features.FeatureParams | None = None):
        self.model = model.eval()
        self.text_model = text_model  # a SentenceTransformer (anything with its encode method)
        self._indexes = dict(indexes) if isinstance(indexes, dict) else {}
        self._build = None if isinstance(indexes, dict) else indexes  # builds a split's index when first asked for
        self.splits = list(splits or self._indexes)
        self.audio_dirs = audio_dirs or {}  # {split: folder of its wav files}, for the players
        self.params = params or features.FeatureParams()
        self.device = next(model.parameters()).device

    @classmethod
    def from_config(cls, cfg: Config, checkpoint: str | Path | None = None, device: str | None = None) -> SearchEngine:
        """The profile's trained model (or ``checkpoint``), its text model; indexes built or loaded when first used."""
        from course_lib.text import load_text_model

        checkpoint = Path(checkpoint or best_checkpoint_path(cfg))
        device = resolve_device(device or cfg.settings.get("device", "auto"))
        model = load_trained_model(checkpoint, device=device, cfg=cfg)  # refused when made for another setup
        text_model = load_text_model(cfg.settings["text_model"], device=device)
        return cls(model, text_model, lambda split: load_index(cfg, split, model, checkpoint), list(cfg.splits),
                   {split: cfg.dataset_dir / split for split in cfg.splits}, features.FeatureParams.from_config(cfg))

    def index(self, split: str) -> ClipIndex:
        """The split's index (built or read from its cache the first time)."""
        if split not in self._indexes:
            if self._build is None or split not in self.splits:
                known = ", ".join(map(repr, self.splits or self._indexes))
                raise QueryError(f"No split {split!r} to search: this engine searches {known}.")
            self._indexes[split] = self._build(split)
        return self._indexes[split]

    @torch.inference_mode()
    def embed_query(self, query: str) -> np.ndarray:
        """A text query as the model sees a caption: Sentence-BERT vector -> text projection -> (300,) unit vector."""
        from course_lib.text import encode_captions

        if self.model.caption_encoder is not None:  # a fine-tuned text encoder (notebook 09) reads the query's tokens
            return embed_captions(self.model, tokenise(self.model.caption_encoder.text_model, [query]), device=self.device)[0]
        vector = encode_captions(self.text_model, [query], progress=False)
        return embed_captions(self.model, vector, device=self.device)[0]

    @torch.inference_mode()
    def embed_log_mel(self, log_mel: np.ndarray) -> np.ndarray:
        """A sound's (T, 64) log-mel through the audio branch: a (300,) unit vector."""
        batch = torch.from_numpy(np.asarray(log_mel, dtype=np.float32))[None].to(self.device)
        return self.model.audio_branch(batch)[0].float().cpu().numpy()

    def search(self, query: str, split: str = "evaluation", k: int = 10) -> Results:
        """Text-to-audio: the k clips closest to a description; a dataset caption's own clip is marked with its rank."""
        k, index = _check_k(k), self.index(split)
        if message := query_problem(query):
            return Results(str(query), split, message=message)
        scores = index.clip_vectors @ self.embed_query(query.strip())  # one matrix product: N cosines
        results = Results(query, split, clips=self._clip_hits(index, scores, top_k(scores, k)))
        results.best_fit = fit_percentile(results.clips[0].score, index.best_scores) if results.clips else float("nan")
        # A query that is one of the split's captions: where does the clip it describes land (metrics' rule)?
        owners = index.clips_described_by(query)
        rows = np.array([np.flatnonzero(index.fids == fid)[0] for fid in owners], dtype=np.int64)
        for row, rank in zip(rows, _ranks_in(scores, rows), strict=True):
            results.marked_ranks[str(index.fnames[row])] = int(rank)
        for hit in results.clips:
            hit.marked = hit.fid in set(owners)
        return results

    def more_like_clip(self, fid: str, split: str = "evaluation", k: int = 10) -> Results:
        """Audio-to-audio and audio-to-text for one clip of the split: its nearest other clips and nearest captions."""
        k, index = _check_k(k), self.index(split)
        rows = np.flatnonzero(index.fids == str(fid))
        if len(rows) == 0:
            raise QueryError(f"No clip {fid!r} in the {split} split. Pick one of its fids (engine.index(split).fids).")
        fname = str(index.fnames[rows[0]])
        return self._sound_results(index, index.clip_vectors[rows[0]], f"clip {fname}", k, own_fid=str(fid))

    def more_like_sound(self, data: bytes, name: str = "upload", split: str = "evaluation", k: int = 10) -> Results:
        """An uploaded sound file (any rate, mono or stereo) through the same front end: nearest clips and captions."""
        k, index = _check_k(k), self.index(split)
        try:
            samples, log_mel = sound_to_log_mel(data, name, self.params)
        except QueryError as exc:
            return Results(name, split, message=str(exc))
        results = self._sound_results(index, self.embed_log_mel(log_mel), f"sound {name}", k)
        results.sound = (samples, self.params.sample_rate)
        return results

    # -- shared by the queries above --

    def _clip_hits(self, index: ClipIndex, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        z = z_scores(scores)
        return [Hit(rank, float(scores[row]), str(index.fids[row]), str(index.fnames[row]),
                    captions=index.captions_of(str(index.fids[row])), z=float(z[row]))
                for rank, row in enumerate(rows, start=1)]

    def _sound_results(self, index: ClipIndex, vector: np.ndarray, query: str, k: int, own_fid: str | None = None) -> Results:
        clip_scores = index.clip_vectors @ vector
        if own_fid is not None:  # "more like this" leaves the clip itself out (it would always come first)
            clip_scores = np.where(index.fids == own_fid, -np.inf, clip_scores)
        rows = top_k(clip_scores, min(k, int(np.isfinite(clip_scores).sum())))
        caption_scores = index.caption_vectors @ vector
        caption_z = z_scores(caption_scores)
        caption_fids = index.captions["fid"].to_numpy()
        captions = [Hit(rank, float(caption_scores[row]), str(caption_fids[row]), str(index.captions["fname"].iat[row]),
                        text=str(index.captions["raw_text"].iat[row]), marked=caption_fids[row] == own_fid,
                        z=float(caption_z[row]))
                    for rank, row in enumerate(top_k(caption_scores, k), start=1)]
        results = Results(query, index.split, clips=self._clip_hits(index, clip_scores, rows), captions=captions)
        if own_fid is not None:  # the ranks of the clip's own captions among all the split's captions
            own = np.flatnonzero(caption_fids == own_fid)
            results.marked_ranks = {str(index.captions["raw_text"].iat[row]): int(rank)
                                    for row, rank in zip(own, _ranks_in(caption_scores, own), strict=True)}
        return results


def query_problem(query: Any) -> str:
    """A friendly message for a query that cannot be searched (empty, blank, too long, not text); '' when it is fine."""
    if not isinstance(query, str):
        return f"A query is text, not {type(query).__name__}: type what you want to hear, e.g. 'a dog barks'."
    if not query.strip():
        return "Type a few words that describe a sound, e.g. 'birds singing in the morning', then press Enter."
    if len(query.strip()) > MAX_QUERY_CHARS:
        return (f"That query has {len(query.strip())} characters; keep it under {MAX_QUERY_CHARS}: "
                "describe one sound in a sentence, as Clotho's captions do.")
    return ""


def sound_to_log_mel(data: bytes, name: str, params: features.FeatureParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mono samples at params' rate, (T, 64) log-mel) of a sound file's bytes; QueryError when unusable.

    Taught in notebook 07, section 4: uploads go through the front end the clips went through (notebook 02).
    """
    params = params or features.FeatureParams()
    decoded, rate = _decoded(data, name)
    samples = features.resample(features.to_mono(decoded.T), rate, params.sample_rate)
    samples = samples[: int(MAX_SOUND_SECONDS * params.sample_rate)]
    log_mel = features.log_mel(samples, params.sample_rate, params)
    if len(log_mel) < MIN_FRAMES:
        seconds = len(samples) / params.sample_rate
        needed = MIN_FRAMES * params.hop_seconds
        raise QueryError(f"{name!r} lasts {seconds:.2f} s; the audio encoder needs at least {needed:.2f} s "
                         f"({MIN_FRAMES} frames of {params.hop_seconds * 1000:.0f} ms). Upload a longer sound.")
    return samples, log_mel


# --- after the lesson: checks on what a caller passes ---------------------------------------------


def _check_k(k: Any) -> int:
    """``k`` as an int when it is a whole number of results >= 1; QueryError saying what to pass otherwise."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise QueryError(f"k is how many results to show, a whole number of at least 1 (e.g. k=10); got {k!r}.")
    return int(k)


def _ranks_in(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The 1-based ranks of items ``rows`` among one query's ``scores``, by metrics' rule (ties: the earlier item first)."""
    rows = np.asarray(rows, dtype=np.int64)
    return ranks_of(np.broadcast_to(scores, (len(rows), len(scores))), rows)


def _decoded(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """((frames, channels) float32 samples, rate) of a sound file's bytes, every sample finite; QueryError if not."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for files it cannot read
        reason = str(getattr(exc, "error_string", None) or exc).rstrip(".")
        raise QueryError(f"{name!r} is not a sound file this course can read (wav, flac, ogg or mp3): {reason}. "
                         "Upload an audio file.") from None
    if len(samples) == 0:
        raise QueryError(f"{name!r} is not a sound file this course can read: it holds no audio samples. "
                         "Upload an audio file.")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise QueryError(f"{name!r} holds {bad} samples that are NaN or infinite (a damaged file, or floats written "
                         "by a program that failed): it cannot be heard or searched. Export the sound again and upload it.")
    return samples, int(rate)


# --- the index, computed once a model and cached -----------------------------------------------


def build_index(cfg: Config, split: str, model: DualEncoder, clip_vectors: np.ndarray | None = None) -> ClipIndex:
    """Embed a split's clips (audio branch) and captions (text branch) with ``model``. Taught in notebook 07."""
    data = load_split(cfg, split)
    table = load_caption_table(cfg, split)
    fids = np.asarray(data.clip_fids, dtype=str)
    fname_of = dict(zip(table["fid"], table["fname"], strict=True))
    device = next(model.parameters()).device
    if clip_vectors is None:  # embed_clips pads no clip, just as a sound searched for is not padded
        clip_vectors = embed_clips(model, data.h5_path, fids, device=str(device))
    caption_vectors = embed_captions(model, caption_inputs(model, data), device=device)
    captions = table[["tid", "fid", "fname", "raw_text", "text"]].reset_index(drop=True)
    return ClipIndex(split, fids, np.array([fname_of[fid] for fid in fids]), clip_vectors, captions, caption_vectors,
                     data.h5_path)


def index_path(cfg: Config, split: str) -> Path:
    """Where a split's clip embeddings are cached: beside the models they come from."""
    return cfg.models_dir / "search_index" / f"{split}_clips.npz"


def load_index(cfg: Config, split: str, model: DualEncoder, checkpoint: str | Path, verbose: bool = True) -> ClipIndex:
    """The split's index for the model in ``checkpoint``: clip embeddings read from the cache when it was built
    from this checkpoint and these features, else computed and cached. Taught in notebook 07."""
    path = index_path(cfg, split)
    stamp = index_stamp(Path(checkpoint), features.features_path(cfg, split))
    with building(path):
        cached = _read_cached(path, stamp)
        index = build_index(cfg, split, model, clip_vectors=None if cached is None else cached[1])
        if cached is not None and list(cached[0]) == list(index.fids):
            return index
        if cached is not None:  # the same stamp but other clips (the caption table changed): embed again
            index = build_index(cfg, split, model)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, fids=index.fids, vectors=index.clip_vectors, stamp=json.dumps(stamp))
    if verbose:
        print(f"search index {split}: {len(index.fids)} clips embedded, cached in {path}")
    return index


def index_stamp(checkpoint: Path, h5_path: Path) -> dict[str, str]:
    """What the clip embeddings depend on: the checkpoint's bytes (sha256) and the features file's fingerprint."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"No checkpoint at {checkpoint}. Train one with course_lib.train.ensure_trained(cfg).")
    with open(checkpoint, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"checkpoint_sha256": digest, "features": features.source_fingerprint(h5_path)}


def _read_cached(path: Path, stamp: dict[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(fids, vectors) from a cache built with this stamp; None when missing, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            if json.loads(str(cached["stamp"])) != stamp:
                return None
            return cached["fids"].astype(str), cached["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
