"""Sentence-BERT caption embeddings: one frozen, unit-length vector per caption.

Taught in notebook 04. The baseline keeps Sentence-BERT frozen: every caption's ``raw_text`` is
embedded once, the unit-length vectors are stored by tid, and training only learns a linear
projection on top of them (notebook 05). ``ensure_caption_embeddings(cfg)`` does that step and
``load_caption_embeddings(cfg)`` reads its result. The file itself (what it holds, how it is
written and read) is in ``course_lib.text_cache``.

The cache is reused when the model's fingerprint matches and it holds exactly the captions asked
for (same tid, same text); captions it lacks are embedded and added, captions no longer asked for
are dropped, and a cache from another model (or an unreadable one) is rebuilt. Finding and
loading the model (a folder, the MiniLM PyPI package, the Hub) is in ``course_lib._text_models``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from course_lib._report import say
from course_lib._text_models import (
    TextModelError,
    embedding_dimension,
    has_normalize_module,
    load_text_model,
    loaded_from,
    resolve_text_model,
)
from course_lib.clotho import load_caption_table
from course_lib.config import Config, resolve_device
from course_lib.files import building, remove_stale
from course_lib.text_cache import (
    CacheError,
    EmbeddingCache,
    built_with,
    caption_embeddings_path,
    check_unit_length,
    matching_rows,
    model_fingerprint,
    read_cache,
    read_cache_or_none,
    write_cache,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "TextModelError", "embedding_dimension", "encode_captions", "ensure_caption_embeddings", "ensure_embeddings",
    "has_normalize_module", "load_caption_embeddings", "load_text_model", "resolve_text_model",
]

# --- the lesson: encode every caption once --------------------------------------------------------


def encode_captions(model: SentenceTransformer, texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """(N, d) float32 unit-length embeddings of the texts, in their order.

    Taught in notebook 04, section 2.
    """
    if not texts:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    vectors = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    check_unit_length(vectors)
    return vectors


def ensure_caption_embeddings(
    cfg: Config, model: SentenceTransformer | None = None, batch_size: int = 128, progress: bool = True, verbose: bool = True
) -> Path:
    """Embed every caption's raw_text with the profile's text_model (``model``, if already loaded); reuse a valid cache.

    Taught in notebook 04, section 3. Reads the caption tables (``prepare(cfg, until="captions")`` writes them).
    """
    tables = {split: load_caption_table(cfg, split) for split in cfg.splits}
    tids = [tid for split in cfg.splits for tid in tables[split]["tid"]]
    texts = [text for split in cfg.splits for text in tables[split]["raw_text"]]
    warn_empty_captions(tables)
    model_name = cfg.settings["text_model"]
    path = caption_embeddings_path(cfg, model_name)
    device = cfg.settings.get("device", "auto")
    return ensure_embeddings(path, tids, texts, model_name, device, batch_size, progress, model, verbose=verbose)


def load_caption_embeddings(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(tids, (N, d) float32 matrix) of every caption, read from the file ensure_caption_embeddings wrote.

    Taught in notebook 04, section 3.
    """
    path = caption_embeddings_path(cfg)
    try:
        cache = read_cache(path)
    except CacheError as exc:
        raise CacheError(f"{exc}. Rebuild it: course_lib.pipeline.prepare(cfg, until='embeddings').") from exc
    if cache is None:
        raise FileNotFoundError(f"No caption embeddings at {path}: run course_lib.pipeline.prepare(cfg, until='embeddings').")
    return cache.tids, cache.vectors


def warn_empty_captions(tables: dict) -> list[str]:
    """Warn, naming the clip and caption number, about captions with no word in them; returns their tids."""
    empty = []
    for split, table in tables.items():
        for number, (tid, fname, text) in enumerate(zip(table["tid"], table["fname"], table["text"], strict=True)):
            if not str(text).strip():
                empty.append(tid)
                warnings.warn(
                    f"{split} clip {fname!r}, caption {number % 5 + 1} has no words (empty or punctuation only): "
                    "its embedding carries no meaning. Fix the captions CSV if this is a mistake.",
                    stacklevel=2,
                )
    return empty


# --- reuse, extend or rebuild the cache ------------------------------------------------------


def _model_folder(model_name: str | Path, model: SentenceTransformer | None) -> str | None:
    """The folder of the model that embeds: the given model's (checked to be model_name), else model_name's; None if absent."""
    if model is None:
        try:
            return resolve_text_model(model_name)
        except TextModelError:
            return None
    folder, named = loaded_from(model), resolve_text_model(model_name)
    if folder != named and model_fingerprint(folder) != model_fingerprint(named):
        raise TextModelError(
            f"The model passed was loaded from {folder}, which is not {model_name} ({named}). "
            "Pass the model that text_model names, or no model."
        )
    return folder


def ensure_embeddings(
    path: Path,
    tids: list[str],
    texts: list[str],
    model_name: str | Path,
    device: str = "auto",
    batch_size: int = 128,
    progress: bool = True,
    model: SentenceTransformer | None = None,
    verbose: bool = True,
) -> Path:
    """Make ``path`` hold a unit-length embedding of exactly these texts by tid: reuse, extend or rebuild the cache.

    ``model``: ``model_name`` already loaded by ``load_text_model``, used instead of loading it again (still fingerprinted).
    """
    with building(path):  # one run at a time writes a cache file; a second waits, then reuses it
        return _ensure_embeddings(path, tids, texts, model_name, device, batch_size, progress, model, verbose)


def _ensure_embeddings(path: Path, tids: list[str], texts: list[str], model_name: str | Path, device: str, batch_size: int,
                       progress: bool, model: SentenceTransformer | None, verbose: bool) -> Path:
    tids, texts = [str(tid) for tid in tids], [str(text) for text in texts]
    if not tids or len(set(tids)) != len(tids) or len(tids) != len(texts):
        raise ValueError("Pass at least one caption, unique tids and as many texts as tids.")
    remove_stale(path.parent, path.name)  # a temporary left by a writer that was killed
    wanted = dict(zip(tids, texts, strict=True))
    cache = read_cache_or_none(path)
    folder = _model_folder(model_name, model)
    known = matching_rows(cache, wanted) if built_with(cache, model_name, folder) else {}
    complete = bool(known) and len(known) == len(tids) == len(cache.tids)
    if folder is None:  # offline without the model: only a complete cache built under the same name can serve
        if not complete:
            resolve_text_model(model_name)  # raises the error that says how to provide the model
        say(verbose, f"{model_name} is not on this machine to check its fingerprint; reusing {path}, built under that name.")
        return path
    if complete:
        say(verbose, f"Reused {path} ({len(tids)} captions, {cache.identity['dimension']}-d, {cache.identity['model']}).")
        return path
    missing = [tid for tid in tids if tid not in known]
    if known:
        dropped = len(cache.tids) - len(known)
        say(verbose, f"{path.name}: keeping {len(known)} cached captions, embedding {len(missing)} new, dropping {dropped}.")
    rows = {tid: cache.vectors[row] for tid, row in known.items()}
    identity = dict(cache.identity) if known else {}
    unsaved = _UNSAVED.get(str(path))
    if unsaved and unsaved[0].get("fingerprint") == model_fingerprint(folder):  # computed before a write failed
        identity = unsaved[0]
        rows.update({tid: vector for tid, vector in unsaved[1].items() if tid in wanted and wanted[tid] == unsaved[2][tid]})
        missing = [tid for tid in tids if tid not in rows]
    if missing:
        model = model if model is not None else load_text_model(folder, resolve_device(device))
        rows.update(zip(missing, encode_captions(model, [wanted[tid] for tid in missing], batch_size, progress), strict=True))
        identity = {
            "model": str(model_name),
            "folder": folder,
            "dimension": embedding_dimension(model),
            "fingerprint": model_fingerprint(folder),
            "normalize_module": has_normalize_module(model),
        }
        say(verbose, f"Embedded {len(missing)} captions with {model_name} ({identity['dimension']}-d) on {model.device}.")
    vectors = np.stack([rows[tid] for tid in tids]).astype(np.float32)
    try:
        write_cache(path, EmbeddingCache(np.asarray(tids), np.asarray(texts), vectors, identity))
    except OSError:  # a full disk, say: keep the embeddings so that a retry in this session does not recompute them
        _UNSAVED[str(path)] = (identity, rows, wanted)
        raise
    _UNSAVED.pop(str(path), None)
    say(verbose, f"Wrote {path} ({len(tids)} captions).")
    return path


# Embeddings computed in this Python session whose cache file could not be written: {path: (identity, rows, texts)}.
_UNSAVED: dict[str, tuple[dict, dict[str, np.ndarray], dict[str, str]]] = {}
