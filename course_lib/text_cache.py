"""The caption-embedding cache: one .npz file of unit-length vectors keyed by caption id.

Taught in notebook 04, section 6. ``course_lib.text`` computes the vectors and decides when the
file is reused, extended or rebuilt; this module holds the file's format, reading and writing, and
the fingerprint that says which model built it:

    <prepared>/caption_embeddings_<model>.npz
        tids      (N,)    caption ids, development then validation then evaluation
        texts     (N,)    the raw_text each vector was computed from
        vectors   (N, d)  float32, unit length
        identity  ()      JSON: model name, folder, dimension, fingerprint of the model files

A file is written under a temporary name and renamed into place (``course_lib.files.atomic_path``),
and read back only when its arrays agree with each other, so a half-written or damaged cache is
never taken for a valid one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from course_lib.config import Config
from course_lib.files import atomic_path

__all__ = [
    "UNIT_LENGTH_TOLERANCE", "MODEL_FILE_SUFFIXES", "SKIPPED_FOLDERS", "CacheError", "EmbeddingCache",
    "check_unit_length", "cache_file_name", "caption_embeddings_path", "read_cache", "read_cache_or_none",
    "write_cache", "matching_rows", "model_fingerprint", "built_with",
]

UNIT_LENGTH_TOLERANCE = 1e-3
MODEL_FILE_SUFFIXES = {".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth"}
SKIPPED_FOLDERS = {"onnx", "openvino", ".git", ".cache"}


class CacheError(ValueError):
    """A cache file that exists but cannot be used (truncated, missing arrays, inconsistent)."""


@dataclass
class EmbeddingCache:
    """The contents of one caption-embedding file."""

    tids: np.ndarray
    texts: np.ndarray
    vectors: np.ndarray
    identity: dict[str, Any]


def check_unit_length(vectors: np.ndarray, tolerance: float = UNIT_LENGTH_TOLERANCE) -> None:
    """Fail when any row's L2 norm is not 1 (the dot product then would not be a cosine)."""
    norms = np.linalg.norm(vectors, axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > tolerance)
    if len(off):
        first = off[0]
        raise ValueError(f"{len(off)} of {len(vectors)} embeddings are not unit length (row {first}: norm {norms[first]:.4f}).")


def cache_file_name(model_name: str | Path) -> str:
    """caption_embeddings_<last part of the model name or folder>.npz."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(model_name).rstrip("/\\")).name) or "model"
    return f"caption_embeddings_{stem}.npz"


def caption_embeddings_path(cfg: Config, model_name: str | None = None) -> Path:
    """Where the profile's caption embeddings for a model (default: the profile's text_model) live."""
    return cfg.prepared_dir / cache_file_name(model_name or cfg.settings["text_model"])


def read_cache(path: Path) -> EmbeddingCache | None:
    """The cache file's contents; None when there is no file, CacheError when it cannot be used."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            cache = EmbeddingCache(stored["tids"], stored["texts"], stored["vectors"], json.loads(str(stored["identity"])))
        rows, dimension = cache.vectors.shape
        if cache.vectors.dtype != np.float32 or len(cache.tids) != rows or len(cache.texts) != rows:
            raise ValueError("arrays of different lengths or not float32")
        if dimension != cache.identity["dimension"]:
            raise ValueError(f"vectors are {dimension}-d but the identity says {cache.identity['dimension']}")
        check_unit_length(cache.vectors)
    except Exception as exc:  # a truncated zip, a missing key, bad JSON: all mean "unusable"
        raise CacheError(f"{path} is unreadable or inconsistent ({type(exc).__name__}: {exc})") from exc
    return cache


def read_cache_or_none(path: Path) -> EmbeddingCache | None:
    """The cache, or None (with a message) when it is missing or cannot be used."""
    try:
        return read_cache(path)
    except CacheError as exc:
        print(f"{exc}; rebuilding it.")
        return None


def write_cache(path: Path, cache: EmbeddingCache) -> None:
    """Write the cache atomically: under a temporary name, renamed into place only once complete."""
    needed = cache.vectors.nbytes + sum(len(str(text)) for text in cache.texts) * 4 + len(cache.tids) * 48
    # A handle, so numpy does not append ".npz" to the temporary name.
    with atomic_path(path, needed_bytes=needed) as temporary, open(temporary, "wb") as handle:
        np.savez(
            handle,
            tids=np.asarray(cache.tids, dtype=str),
            texts=np.asarray(cache.texts, dtype=str),
            vectors=np.asarray(cache.vectors, dtype=np.float32),
            identity=np.asarray(json.dumps(cache.identity)),
        )


def matching_rows(cache: EmbeddingCache | None, wanted: dict[str, str]) -> dict[str, int]:
    """{tid: row} of the cached vectors whose tid is wanted with the very same text."""
    if cache is None:
        return {}
    return {tid: row for row, (tid, text) in enumerate(zip(cache.tids, cache.texts, strict=True)) if wanted.get(tid) == text}


# --- which model built it ----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the model's weights, configs and vocabulary files (README and exports ignored)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or path.suffix not in MODEL_FILE_SUFFIXES or path.name.startswith(("README", ".")):
            continue
        if SKIPPED_FOLDERS & set(relative.parts[:-1]):
            continue
        stat = path.stat()
        digest.update(f"{relative.as_posix()}:{_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def built_with(cache: EmbeddingCache | None, model_name: str | Path, folder: str | None) -> bool:
    """Whether the cache was built with the model in ``folder`` (by fingerprint), or under model_name when folder is None."""
    if cache is None:
        return False
    if folder is None:
        return cache.identity.get("model") == str(model_name)
    fingerprint, stored = model_fingerprint(folder), str(cache.identity.get("fingerprint"))
    if stored != fingerprint:
        print(f"The cache was built with {cache.identity.get('model')} (fingerprint {stored[:12]}), "
              f"not {model_name} (fingerprint {fingerprint[:12]}): rebuilding it.")
    return stored == fingerprint
