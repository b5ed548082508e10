"""Search the clips by describing them: an exact embedding index, and a widget to play with it.

Taught in notebook 07. The trained dual encoder maps every clip of a split to a unit vector, once:
that table is the index. A text query takes the road captions took in training (Sentence-BERT,
then the model's text projection) and ends as one unit vector too; its cosine with every clip is
one matrix product, and ``np.argpartition`` picks the k best without sorting all N scores.
Exact search like this is right up to about 100,000 clips (a few ms a query on 2 cores); Clotho
has under 7,000, so no approximate index is needed.

The same index answers sounds: a clip of the split ("more like this") or an uploaded file, through
the same log-mel front end and the audio branch, gives the nearest clips and the nearest captions
(audio-to-text).

    engine = SearchEngine.from_config(cfg)          # trained model + text model + cached index
    results = engine.search("rain on a tin roof", split="evaluation", k=10)
    SearchWidget(engine)                            # the ipywidgets UI (JupyterLab, Colab's ipywidgets 7.7)
    show_results(engine, results)                   # the same rows without widgets

Below the lesson: the index cache (rebuilt when the checkpoint or the features change), previews
kept small (a short excerpt at a low rate), reading uploads in both ipywidgets 7 and 8 formats,
and the widget itself.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
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
from course_lib.model import DualEncoder, best_checkpoint_path, embed_captions, embed_clips, load_trained_model

MAX_QUERY_CHARS = 300  # Sentence-BERT reads at most 256-384 word pieces; a query is a sentence, not a page
MAX_SOUND_SECONDS = 60.0  # an uploaded sound is cut here (Clotho's clips last 15-30 s)
PREVIEW_SECONDS = 4.0  # audio players play a short excerpt ...
PREVIEW_RATE = 11_025  # ... at a quarter of Clotho's rate, so a page of results stays small (88 kB a player)
TOP_K_CHOICES = (5, 10, 20, 50)


class QueryError(ValueError):
    """A query the engine cannot search for (empty, too long, not a readable sound); the message says what to do."""


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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first: argpartition finds them in O(N), then only k are sorted.

    Taught in notebook 07, section 1.
    """
    k = max(0, min(int(k), len(scores)))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def rank_of(scores: np.ndarray, row: int) -> int:
    """1-based rank of one entry among all scores (ties count in its favour)."""
    return int(np.sum(scores > scores[row])) + 1


@dataclass
class Hit:
    """One result row: a clip (or a caption) with its rank and score."""

    rank: int
    score: float
    fid: str
    fname: str
    text: str = ""  # for caption hits: the caption
    captions: list[str] = field(default_factory=list)  # for clip hits: the clip's own captions
    marked: bool = False  # the clip the query caption belongs to, or a caption of the query clip


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
        model = load_trained_model(checkpoint, device=device)
        text_model = load_text_model(cfg.settings["text_model"], device=device)
        return cls(model, text_model, lambda split: load_index(cfg, split, model, checkpoint), list(cfg.splits),
                   {split: cfg.dataset_dir / split for split in cfg.splits}, features.FeatureParams.from_config(cfg))

    def index(self, split: str) -> ClipIndex:
        """The split's index (built or read from its cache the first time)."""
        if split not in self._indexes:
            if self._build is None:
                raise QueryError(f"No index for split {split!r}; this engine has: {', '.join(self._indexes)}.")
            self._indexes[split] = self._build(split)
        return self._indexes[split]

    @torch.inference_mode()
    def embed_query(self, query: str) -> np.ndarray:
        """A text query as the model sees a caption: Sentence-BERT vector -> text projection -> (300,) unit vector."""
        from course_lib.text import encode_captions

        vector = encode_captions(self.text_model, [query], progress=False)
        return embed_captions(self.model, vector, device=self.device)[0]

    @torch.inference_mode()
    def embed_log_mel(self, log_mel: np.ndarray) -> np.ndarray:
        """A sound's (T, 64) log-mel through the audio branch: a (300,) unit vector."""
        batch = torch.from_numpy(np.asarray(log_mel, dtype=np.float32))[None].to(self.device)
        return self.model.audio_branch(batch)[0].float().cpu().numpy()

    def search(self, query: str, split: str = "evaluation", k: int = 10) -> Results:
        """Text-to-audio: the k clips closest to a description; a dataset caption's own clip is marked with its rank."""
        if message := query_problem(query):
            return Results(str(query), split, message=message)
        index = self.index(split)
        scores = index.clip_vectors @ self.embed_query(query.strip())  # one matrix product: N cosines
        results = Results(query, split, clips=self._clip_hits(index, scores, top_k(scores, k)))
        # A query that is one of the split's captions: where does the clip it describes land?
        owners = index.clips_described_by(query)
        for fid in owners:
            row = int(np.flatnonzero(index.fids == fid)[0])
            results.marked_ranks[str(index.fnames[row])] = rank_of(scores, row)
        for hit in results.clips:
            hit.marked = hit.fid in set(owners)
        return results

    def more_like_clip(self, fid: str, split: str = "evaluation", k: int = 10) -> Results:
        """Audio-to-audio and audio-to-text for one clip of the split: its nearest other clips and nearest captions."""
        index = self.index(split)
        rows = np.flatnonzero(index.fids == str(fid))
        if len(rows) == 0:
            raise QueryError(f"No clip {fid!r} in the {split} split. Pick one of its fids (engine.index(split).fids).")
        fname = str(index.fnames[rows[0]])
        return self._sound_results(index, index.clip_vectors[rows[0]], f"clip {fname}", k, own_fid=str(fid))

    def more_like_sound(self, data: bytes, name: str = "upload", split: str = "evaluation", k: int = 10) -> Results:
        """An uploaded sound file (any rate, mono or stereo) through the same front end: nearest clips and captions."""
        try:
            samples, log_mel = sound_to_log_mel(data, name, self.params)
        except QueryError as exc:
            return Results(name, split, message=str(exc))
        results = self._sound_results(self.index(split), self.embed_log_mel(log_mel), f"sound {name}", k)
        results.sound = (samples, self.params.sample_rate)
        return results

    # -- shared by the queries above --

    def _clip_hits(self, index: ClipIndex, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        return [Hit(rank, float(scores[row]), str(index.fids[row]), str(index.fnames[row]),
                    captions=index.captions_of(str(index.fids[row])))
                for rank, row in enumerate(rows, start=1)]

    def _sound_results(self, index: ClipIndex, vector: np.ndarray, query: str, k: int, own_fid: str | None = None) -> Results:
        clip_scores = index.clip_vectors @ vector
        if own_fid is not None:  # "more like this" leaves the clip itself out (it would always come first)
            clip_scores = np.where(index.fids == own_fid, -np.inf, clip_scores)
        rows = top_k(clip_scores, min(k, int(np.isfinite(clip_scores).sum())))
        caption_scores = index.caption_vectors @ vector
        caption_fids = index.captions["fid"].to_numpy()
        captions = [Hit(rank, float(caption_scores[row]), str(caption_fids[row]), str(index.captions["fname"].iat[row]),
                        text=str(index.captions["raw_text"].iat[row]), marked=caption_fids[row] == own_fid)
                    for rank, row in enumerate(top_k(caption_scores, k), start=1)]
        results = Results(query, index.split, clips=self._clip_hits(index, clip_scores, rows), captions=captions)
        if own_fid is not None:  # the ranks of the clip's own captions among all the split's captions
            own = np.flatnonzero(caption_fids == own_fid)
            results.marked_ranks = {str(index.captions["raw_text"].iat[row]): rank_of(caption_scores, row) for row in own}
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

    Taught in notebook 07: uploads go through the front end the clips went through (notebook 02).
    """
    params = params or features.FeatureParams()
    try:
        samples = features.load_audio(io.BytesIO(bytes(data)), params.sample_rate)
    except Exception as exc:  # soundfile raises several types for files it cannot read
        reason = str(getattr(exc, "error_string", None) or exc).rstrip(".")
        raise QueryError(f"{name!r} is not a sound file this course can read (wav, flac, ogg or mp3): {reason}. "
                         "Upload an audio file.") from None
    samples = samples[: int(MAX_SOUND_SECONDS * params.sample_rate)]
    log_mel = features.log_mel(samples, params.sample_rate, params)
    if len(log_mel) < MIN_FRAMES:
        seconds = len(samples) / params.sample_rate
        needed = MIN_FRAMES * params.hop_seconds
        raise QueryError(f"{name!r} lasts {seconds:.2f} s; the audio encoder needs at least {needed:.2f} s "
                         f"({MIN_FRAMES} frames of {params.hop_seconds * 1000:.0f} ms). Upload a longer sound.")
    return samples, log_mel


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
    caption_vectors = embed_captions(model, data.vectors, device=device)
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


# --- small previews: a short, low-rate excerpt and a small log-mel picture ---------------------


def preview_wav(samples: np.ndarray, sample_rate: int, seconds: float = PREVIEW_SECONDS, rate: int = PREVIEW_RATE) -> bytes:
    """A short 16-bit WAV excerpt at a low rate (88 kB for 4 s at 11 kHz instead of 1.4 MB for 15 s at 44.1 kHz)."""
    import soundfile

    excerpt = features.resample(np.asarray(samples[: int(seconds * sample_rate)], dtype=np.float32), sample_rate, rate)
    peak = float(np.max(np.abs(excerpt))) if len(excerpt) else 0.0
    buffer = io.BytesIO()
    soundfile.write(buffer, excerpt / peak * 0.9 if peak > 0 else excerpt, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@lru_cache(maxsize=256)
def clip_preview(path: str, seconds: float = PREVIEW_SECONDS, rate: int = PREVIEW_RATE) -> bytes | None:
    """The preview of a wav file on disk (None when the file is not there, e.g. features copied without audio)."""
    import soundfile

    try:
        info = soundfile.info(path)
        samples, file_rate = soundfile.read(path, frames=int(seconds * info.samplerate), dtype="float32", always_2d=True)
    except (OSError, RuntimeError):
        return None
    return preview_wav(features.to_mono(samples.T), file_rate, seconds, rate)


@lru_cache(maxsize=256)
def log_mel_png(h5_path: str, fid: str) -> bytes:
    """A small picture of a clip's log-mel (time across, low frequencies at the bottom) as PNG bytes."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, features.load_log_mel(h5_path, fid).T[::-1], cmap="magma", format="png")
    return buffer.getvalue()


def sound_png(log_mel: np.ndarray) -> bytes:
    """The same picture for a log-mel in memory (an uploaded sound)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.asarray(log_mel).T[::-1], cmap="magma", format="png")
    return buffer.getvalue()


def preview_of(engine: SearchEngine, split: str, fname: str) -> bytes | None:
    """The preview of a split's clip, from the split's audio folder (None without one)."""
    folder = engine.audio_dirs.get(split)
    return clip_preview(str(folder / fname)) if folder is not None else None


# --- without widgets: printed rows and IPython players ------------------------------------------


def show_results(engine: SearchEngine, results: Results, players: bool = True) -> None:
    """Print a query's results as rows (with IPython.display.Audio players): for front ends without widgets.

    Taught in notebook 07, section 4.
    """
    from IPython.display import Audio, display

    for line in describe(results)[:2]:
        print(line)
    if results.message and not results.clips:
        return
    index = engine.index(results.split)
    for hit in results.clips:
        print(f"{hit.rank:>3}. {hit.score:+.3f}  {hit.fname}{'   <- the clip of this caption' if hit.marked else ''}")
        for caption in hit.captions:
            print(f"        · {caption}")
        audio = preview_of(engine, index.split, hit.fname) if players else None
        if audio is not None:
            display(Audio(data=audio, rate=PREVIEW_RATE))
    if results.captions:
        print("nearest captions:")
        for hit in results.captions:
            print(f"{hit.rank:>3}. {hit.score:+.3f}  {hit.text}   ({hit.fname}){'   <- its own' if hit.marked else ''}")


def search_and_show(engine: SearchEngine, query: str, split: str = "evaluation", k: int = 5, players: bool = True) -> Results:
    """Search and print the rows in one call (the plain-function twin of the widget). Taught in notebook 07, section 3."""
    results = engine.search(query, split, k)
    show_results(engine, results, players)
    return results


def describe(results: Results) -> list[str]:
    """A header line, and a line on the marked clips (or captions) and their ranks."""
    if results.message and not results.clips:
        return [results.message]
    kind = "clips" if not results.captions else "clips and captions"
    lines = [f"{results.query!r} in {results.split}: the {len(results.clips)} nearest {kind}"]
    if results.marked_ranks and not results.captions:
        owners = ", ".join(f"{fname} (rank {rank})" for fname, rank in results.marked_ranks.items())
        lines.append(f"this is a caption of {owners}")
    elif results.marked_ranks:
        ranks = sorted(results.marked_ranks.values())
        lines.append(f"its own captions rank {', '.join(map(str, ranks))} among the {results.split} captions")
    return lines


# --- uploads: ipywidgets 7 gives a dict by file name, 8 a tuple of dicts ------------------------


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """[(file name, bytes)] from a FileUpload value, in ipywidgets 8's format (a tuple of dicts with name and
    content) or 7's ({name: {"metadata": {...}, "content": bytes}})."""
    if isinstance(value, dict):  # ipywidgets 7
        return [(str(name), bytes(item["content"])) for name, item in value.items()]
    return [(str(item["name"]), bytes(item["content"])) for item in value or ()]


# --- the widget --------------------------------------------------------------------------------


class SearchWidget:
    """The search UI: a query box (Enter or Search), top k, split; clip picker and upload for sounds.

    Taught in notebook 07, section 2. Works with ipywidgets 7.7 (Colab) and 8.x. Display it as the last
    expression of a cell, or with ``display(widget.ui)``. Every callback catches its own errors and
    shows them as a message: a widget callback's traceback would otherwise vanish.
    """

    def __init__(self, engine: SearchEngine, split: str = "evaluation", k: int = 5):
        import ipywidgets as w

        self.engine, self._w, self._last = engine, w, None
        splits = engine.splits or [split]
        self.query = w.Text(placeholder="describe a sound, e.g. 'rain falling on a metal roof'", continuous_update=False,
                            layout=w.Layout(width="420px"))
        self.search_button = w.Button(description="Search", button_style="primary", icon="search")
        self.k = w.Dropdown(options=list(TOP_K_CHOICES), value=k if k in TOP_K_CHOICES else TOP_K_CHOICES[0],
                            description="top k", layout=w.Layout(width="140px"))
        self.split = w.Dropdown(options=splits, value=split if split in splits else splits[0], description="split",
                                layout=w.Layout(width="220px"))
        self.clip = w.Dropdown(options=self._clip_options(), description="clip", layout=w.Layout(width="420px"))
        self.more_button = w.Button(description="More like this", icon="music")
        self.upload = w.FileUpload(accept="audio/*,.wav,.flac,.ogg,.mp3", multiple=False, description="Upload a sound")
        self.message = w.HTML()
        self.rows = w.VBox()
        self.ui = w.VBox([w.HBox([self.query, self.search_button, self.k, self.split]),
                          w.HBox([self.clip, self.more_button, self.upload]), self.message, self.rows])
        self.results: Results | None = None
        # Enter (continuous_update=False sends the value on Enter) or the button; k and split re-run the last query.
        self.query.observe(lambda change: self.on_search(), names="value")
        self.search_button.on_click(lambda button: self.on_search(force=True))
        self.k.observe(lambda change: self._rerun(), names="value")
        self.split.observe(self._on_split, names="value")
        self.more_button.on_click(lambda button: self.on_more_like_clip())
        self.upload.observe(lambda change: self.on_upload(), names="value")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)

    # -- callbacks (the unit tests call these directly) --

    def on_search(self, force: bool = False) -> Results | None:
        """Search for the text in the box and show the rows (skipped when nothing changed, unless forced)."""
        return self._run(("text", self.query.value, self.split.value, self.k.value), force,
                         lambda: self.engine.search(self.query.value, self.split.value, self.k.value))

    def on_more_like_clip(self, fid: str | None = None) -> Results | None:
        """The nearest clips and captions of the picked clip (or ``fid``)."""
        fid = fid or self.clip.value
        if not fid:
            return self._show(Results("", self.split.value, message="Pick a clip first."))
        return self._run(("clip", fid, self.split.value, self.k.value), True,
                         lambda: self.engine.more_like_clip(fid, self.split.value, self.k.value))

    def on_upload(self) -> Results | None:
        """The nearest clips and captions of the uploaded sound; a message when it is not usable audio."""
        files = uploaded_files(self.upload.value)
        if not files:
            return None
        name, data = files[-1]
        return self._run(("upload", name, len(data), self.split.value, self.k.value), True,
                         lambda: self.engine.more_like_sound(data, name, self.split.value, self.k.value))

    # -- drawing --

    def _run(self, key: tuple, force: bool, query: Callable[[], Results]) -> Results | None:
        if key == self._last and not force:
            return self.results
        self._last = key
        try:
            results = query()
        except Exception as exc:  # shown, never a traceback that vanishes in a callback
            results = Results(str(key[1]), self.split.value, message=f"Something went wrong: {exc}")
        return self._show(results)

    def _rerun(self) -> None:
        last, self._last = self._last, None
        if last is not None and last[0] == "text":
            self.on_search()
        elif last is not None and last[0] == "clip":
            self.on_more_like_clip(last[1])
        elif last is not None:
            self.on_upload()

    def _on_split(self, change: Any) -> None:
        self.clip.options = self._clip_options()
        self.clip.value = ""
        self._rerun()

    def _clip_options(self) -> list[tuple[str, str]]:
        try:
            index = self.engine.index(self.split.value)
        except Exception:  # an index that cannot be built shows its error on the first search instead
            index = None
        if index is None:
            return [("(pick a clip)", "")]
        return [("(pick a clip)", "")] + sorted(zip(index.fnames.tolist(), index.fids.tolist(), strict=True))

    def _show(self, results: Results) -> Results:
        w = self._w
        self.results = results
        lines = describe(results)
        style = "color:#a33" if results.message and not results.clips else ""
        self.message.value = "<br>".join(f"<span style='{style}'>{_html(line)}</span>" for line in lines)
        rows = []
        if results.sound is not None:
            rows.append(w.HBox([w.HTML("<b>your sound</b>", layout=w.Layout(width="120px")),
                                self._player(preview_wav(*results.sound))]))
        rows += [self._clip_row(results.split, hit) for hit in results.clips]
        if results.captions:
            rows.append(w.HTML("<b>nearest captions</b> (audio-to-text)"))
            rows += [w.HTML(_caption_line(hit)) for hit in results.captions]
        self.rows.children = rows
        return results

    def _clip_row(self, split: str, hit: Hit) -> Any:
        w = self._w
        index = self.engine.index(split)
        mark = " <b style='color:#1a7f37'>&larr; the clip of this caption</b>" if hit.marked else ""
        captions = "".join(f"<li>{_html(caption)}</li>" for caption in hit.captions)
        text = w.HTML(f"<b>{hit.rank}.</b> <code>{hit.score:+.3f}</code> {_html(hit.fname)}{mark}"
                      f"<ul style='margin:2px 0 0 0;font-size:90%;line-height:1.3'>{captions}</ul>",
                      layout=w.Layout(width="470px"))
        parts = [text]
        audio = preview_of(self.engine, split, hit.fname)
        parts.append(self._player(audio) if audio is not None else w.HTML("<i>no audio file</i>"))
        if index.h5_path is not None:
            parts.append(w.Image(value=log_mel_png(str(index.h5_path), hit.fid), format="png",
                                 layout=w.Layout(width="160px", height="48px")))
        more = w.Button(description="more like this", layout=w.Layout(width="120px"))
        more.on_click(lambda button, fid=hit.fid: self.on_more_like_clip(fid))
        parts.append(more)
        return w.HBox(parts, layout=w.Layout(border="1px solid #9dc1ff" if hit.marked else "", align_items="center"))

    def _player(self, wav: bytes) -> Any:
        w = self._w
        return w.Audio(value=wav, format="wav", autoplay=False, loop=False, layout=w.Layout(width="260px"))


def _caption_line(hit: Hit) -> str:
    mark = " <b style='color:#1a7f37'>&larr; its own caption</b>" if hit.marked else ""
    return f"<b>{hit.rank}.</b> <code>{hit.score:+.3f}</code> {_html(hit.text)} <small>({_html(hit.fname)})</small>{mark}"


def _html(text: str) -> str:
    import html

    return html.escape(str(text), quote=False)
