"""Caption augmentation: more captions for each training clip, as text and as caption vectors.

Taught in notebook 09. Clotho gives five captions a clip; the systems after the 2023 baseline trained on
more, written by a language model. Here the extra captions come from one of two sources:

    "paraphrases"     the synthetic profile only: the generator's own grammar rewords each of a clip's five
                      captions, keeping what it says (its events and the attributes it mentions)
    path/to/file.csv  any profile: columns file_name,caption, one extra caption a row, for development clips

``extra_captions`` returns them as a table (fid, caption); ``extra_caption_vectors`` embeds them with the
profile's text model, like the clip's own captions, cached under ``cfg.prepared_dir``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from course_lib.clotho import clean_caption, load_caption_table, table_path
from course_lib.config import Config
from course_lib.synth import Clip, plan_split
from course_lib.synth_captions import paraphrase
from course_lib.text import ensure_embeddings
from course_lib.text_cache import cache_file_name, read_cache

__all__ = ["SPLIT", "PARAPHRASES", "CaptionSourceError", "extra_captions", "extra_caption_vectors", "extra_vectors_path"]

PARAPHRASES = "paraphrases"
SPLIT = "development"  # captions are augmented for training only


class CaptionSourceError(ValueError):
    """An extra-caption source that cannot be used; the message says what to pass instead."""


# --- the lesson: extra captions, then their vectors ----------------------------------------------


def extra_captions(cfg: Config, source: str, per_caption: int = 2, seed: int = 0) -> pd.DataFrame:
    """Extra captions of development clips, one row each (fid, caption): paraphrases or a CSV file's captions.

    Taught in notebook 09, section 5. ``per_caption`` and ``seed`` apply to paraphrases (that many of each caption); a CSV
    file gives what it holds.
    """
    if str(source) != PARAPHRASES:
        return _read_caption_file(cfg, source, load_caption_table(cfg, SPLIT))
    if "synth" not in cfg.settings:
        raise CaptionSourceError(
            f"Paraphrases come from the synthetic generator's grammar, and profile {cfg.profile!r} uses real data. "
            "Pass the path of a CSV file with columns file_name,caption (extra captions of development clips)."
        )
    if int(per_caption) < 1:
        raise ValueError(f"per_caption is {per_caption}: ask for at least 1 paraphrase of each caption.")
    rows = []
    for index, (fid, clip) in enumerate(_planned_clips(cfg, load_caption_table(cfg, SPLIT))):
        rng = np.random.default_rng([seed, index])  # each clip's own generator: its paraphrases do not depend on others
        written = set(clip.captions)  # never repeat a caption, its own or an earlier paraphrase
        for content in clip.contents:
            for _ in range(per_caption):
                written.add(text := paraphrase(clip.scene, content, rng, avoid=written))
                rows.append((fid, text))
    return pd.DataFrame(rows, columns=["fid", "caption"])


def extra_caption_vectors(cfg: Config, source: str, per_caption: int = 2, seed: int = 0,
                          verbose: bool = True) -> dict[str, np.ndarray]:
    """{fid: (k, d) float32 unit vectors} of every development clip's extra captions (k = 0 for a clip with none).

    Taught in notebook 09, section 5. Embedded with the profile's text_model; a second call reuses the cache file.
    """
    extra = extra_captions(cfg, source, per_caption, seed)
    tids = [f"{fid}/extra_{number}" for fid, number in zip(extra["fid"], extra.groupby("fid").cumcount(), strict=True)]
    path = extra_vectors_path(cfg, source, per_caption, seed)
    model_name = cfg.settings["text_model"]
    ensure_embeddings(path, tids, list(extra["caption"]), model_name, cfg.settings.get("device", "auto"),
                      progress=verbose, verbose=verbose)
    cache = read_cache(path)
    row_of = {str(tid): row for row, tid in enumerate(cache.tids)}
    rows: dict[str, list[int]] = {}
    for fid, tid in zip(extra["fid"], tids, strict=True):
        rows.setdefault(fid, []).append(row_of[tid])
    return {fid: cache.vectors[rows.get(fid, [])] for fid in load_caption_table(cfg, SPLIT)["fid"].unique()}


def extra_vectors_path(cfg: Config, source: str, per_caption: int = 2, seed: int = 0) -> Path:
    """The cache file of these extra captions' vectors: named by the source (a file: its name and contents),
    per_caption, seed and the text model."""
    if str(source) == PARAPHRASES:
        tag = f"{PARAPHRASES}-{per_caption}x-seed{seed}"
    else:
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]
        tag = f"{re.sub(r'[^A-Za-z0-9._-]', '_', Path(source).stem)}-{digest}"
    return cfg.prepared_dir / f"extra_{tag}_{cache_file_name(cfg.settings['text_model'])}"


# --- the synthetic clips replayed, a caption file read and checked ---------------------------------------


def _planned_clips(cfg: Config, table: pd.DataFrame) -> list[tuple[str, Clip]]:
    """The development clips as the generator planned them (scenes, captions and their contents; no audio),
    checked against the caption table so that the paraphrases belong to the clips on disk."""
    synth = cfg.settings["synth"]
    fids = _fids_by_name(table)
    captions = table.groupby("fid")["raw_text"].apply(list).to_dict()
    planned = plan_split(SPLIT, len(fids), synth.get("seed", 0), synth.get("min_seconds", 5.0), synth.get("max_seconds", 8.0))
    clips = [(fids.get(_name_key(clip.file_name), ""), clip) for clip in planned]
    if any(captions.get(fid) != clip.captions for fid, clip in clips):
        raise CaptionSourceError(
            f"The development captions in {table_path(cfg, SPLIT)} are not the ones profile {cfg.profile!r}'s synth "
            f"settings ({synth}) write: the dataset was made with other settings. Rebuild it and its tables with "
            "course_lib.pipeline.prepare(cfg, until='captions')."
        )
    return clips


def _read_caption_file(cfg: Config, source: str, table: pd.DataFrame) -> pd.DataFrame:
    """A learner's extra captions (file_name,caption, UTF-8) as (fid, caption) rows, refused with the reason."""
    path = Path(source).expanduser()
    usage = "a UTF-8 CSV file with columns file_name,caption (one extra caption a row, file_name a development clip's)"
    synthetic = "synth" in cfg.settings
    if not path.is_file():
        if synthetic and not path.suffix and len(path.parts) == 1:  # a word, not a file name
            raise CaptionSourceError(f"Unknown caption source {str(source)!r}: pass {PARAPHRASES!r} for the generator's "
                                     f"paraphrases, or the path of {usage}.")
        raise CaptionSourceError(f"{path} does not exist. Pass the path of {usage}"
                                 + (f", or {PARAPHRASES!r} for the generator's paraphrases." if synthetic else "."))
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CaptionSourceError(f"{path} is not a readable UTF-8 CSV ({exc}). Pass {usage}.") from exc
    missing = [column for column in ("file_name", "caption") if column not in rows.columns]
    if missing:
        raise CaptionSourceError(f"{path} lacks the column(s) {', '.join(missing)} (it has "
                                 f"{', '.join(map(str, rows.columns))}). Pass {usage}.")
    if not len(rows):
        raise CaptionSourceError(f"{path} has no captions, only a header. Pass {usage}.")
    fids = _fids_by_name(table)
    unknown = sorted({name for name in rows["file_name"] if _name_key(name) not in fids})
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise CaptionSourceError(
            f"{path} names {len(unknown)} clip(s) that are not in the development split: {shown}. Use the file names "
            f"of {table_path(cfg, SPLIT)}'s fname column (clotho_captions_development.csv's file_name); extra captions "
            "of validation or evaluation clips would leak into the scores."
        )
    empty = [line for line, caption in enumerate(rows["caption"], start=2) if not clean_caption(caption)]
    if empty:
        raise CaptionSourceError(f"{path} has captions with no words on line(s) {', '.join(map(str, empty[:10]))}. "
                                 "Write a caption there or delete the row.")
    return pd.DataFrame({"fid": [fids[_name_key(name)] for name in rows["file_name"]], "caption": rows["caption"]})


def _fids_by_name(table: pd.DataFrame) -> dict[str, str]:
    return {_name_key(fname): fid for fname, fid in zip(table["fname"], table["fid"], strict=True)}


def _name_key(name: str) -> str:
    """A file name as clotho.wav_names_on_disk matches it: composed Unicode, no outer spaces (Clotho's leading ones)."""
    return unicodedata.normalize("NFC", str(name)).strip()
