"""Offline stand-ins for what the clotho profile downloads: Zenodo's files, PANNs' checkpoint, the Hub's text model.

Not a lesson: ``make rehearsal`` (benchmarks/rehearsal.py) and the tests use these to run the clotho
profile's own code path on a machine that cannot reach Zenodo or the Hugging Face Hub. Each stand-in
has the real thing's layout and shapes, never its content:

* ``FileServer`` serves files on 127.0.0.1 (never the internet), with HTTP ranges like Zenodo's, and
  can misbehave on demand (a corrupt body, a dropped connection, an HTTP error);
* ``pack_clotho_files`` turns a Clotho-format folder into Clotho v2.1's nine files (one ``.7z`` of
  wavs and two CSVs a split, under Zenodo's names), ``remote_files`` gives their md5 table;
* ``write_random_panns`` writes ``Cnn14_mAP=0.431.pth`` in PANNs' exact key and shape layout, random weights;
* ``write_random_sentence_model`` saves a sentence-transformers folder with all-mpnet-base-v2's
  architecture (its published config.json values) and random weights.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import py7zr
import torch

from course_lib._panns_weights import random_panns_checkpoint
from course_lib.clotho import RemoteFile, read_captions, split_file_names
from course_lib.config import SPLITS
from course_lib.files import atomic_path

# all-mpnet-base-v2's config.json as published on the Hub (sentence-transformers/all-mpnet-base-v2). transformers'
# MPNetConfig defaults agree except max_position_embeddings (512 there) and layer_norm_eps (1e-12 there).
ALL_MPNET_BASE_V2 = {
    "vocab_size": 30_527, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 514, "layer_norm_eps": 1e-5,
    "relative_attention_num_buckets": 32, "hidden_act": "gelu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}
MPNET_MAX_SEQ_LENGTH = 384  # its sentence_bert_config.json: longer inputs are truncated to 384 word pieces
MPNET_SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, as in MPNet's vocabulary; "<mask>" is the last id
CHUNK_BYTES = 1 << 16


# --- a local file server ------------------------------------------------------------------------------------------


class FileServer:
    """Serves ``contents`` ({file name: bytes, or the Path of a file}) on 127.0.0.1, never the internet.

    It records every request (``requests``: names; ``range_starts``: the byte a request asked to
    start from, None without a Range header), answers 404 for unknown names, supports
    ``Range: bytes=N-`` (206 Partial Content, or 416 past the end) like Zenodo, and can misbehave on
    demand: ``corrupt`` (serve the bytes reversed), ``break_once`` (send half, then close the
    connection), ``no_ranges`` (ignore Range headers: 200 and the whole file, like some servers),
    ``slow`` (send in ten pieces a fifth of a second apart) and ``status`` ({name: HTTP code}
    answered instead of the file). Files given as a Path are streamed from disk, not held in memory.
    """

    def __init__(self, contents: dict[str, bytes | Path]) -> None:
        self.contents = dict(contents)
        self.requests: list[str] = []
        self.range_starts: list[int | None] = []
        self.corrupt: set[str] = set()
        self.break_once: set[str] = set()
        self.no_ranges: set[str] = set()
        self.slow: set[str] = set()
        self.status: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = unquote(urlparse(self.path).path).rsplit("/", 1)[-1]
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                start = int(asked.group(1)) if asked else None
                server.requests.append(name)
                server.range_starts.append(start)
                if name in server.status or name not in server.contents:
                    self.send_error(server.status.get(name, 404))
                    return
                body = server.contents[name]
                if name in server.corrupt | server.break_once | server.slow and isinstance(body, Path):
                    body = body.read_bytes()  # misbehaviour is for small test files: read them whole
                if name in server.corrupt:
                    body = bytes(reversed(body))
                size = body.stat().st_size if isinstance(body, Path) else len(body)
                first = 0
                if start is not None and name not in server.no_ranges:
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                    first = start
                else:
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "none" if name in server.no_ranges else "bytes")
                self.send_header("Content-Length", str(size - first))
                self.end_headers()
                if isinstance(body, Path):
                    self._stream(body, first)
                    return
                body = body[first:]
                if name in server.break_once:
                    server.break_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])  # then the connection closes
                    return
                if name in server.slow:
                    step = len(body) // 10 + 1
                    for offset in range(0, len(body), step):
                        self.wfile.write(body[offset : offset + step])
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                self.wfile.write(body)

            def _stream(self, path: Path, first: int) -> None:
                with open(path, "rb") as handle:
                    handle.seek(first)
                    while chunk := handle.read(CHUNK_BYTES):
                        self.wfile.write(chunk)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url_of(self, name: str) -> str:
        """The address of one served file, written as Zenodo writes its download links."""
        return f"{self.url}/{name.replace('=', '%3D')}?download=1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --- Clotho's nine files -------------------------------------------------------------------------------------


def pack_clotho_files(dataset_dir: Path, out_dir: Path, splits: tuple[str, ...] = SPLITS, preset: int = 1) -> dict[str, Path]:
    """Clotho v2.1's files of ``splits`` made from a Clotho-format folder: {Zenodo name: path in ``out_dir``}.

    Each split gives ``clotho_audio_<split>.7z`` (its wavs under ``<split>/``, LZMA2 as Zenodo's archives; a low
    ``preset`` packs fast and unpacks as fast as a high one) and copies of its two CSVs.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in splits:
        archive_name, captions_name, metadata_name = split_file_names(split)
        with atomic_path(out_dir / archive_name) as temporary:
            with py7zr.SevenZipFile(temporary, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": preset}]) as archive:
                for fname in read_captions(dataset_dir, split)["file_name"]:
                    archive.write(dataset_dir / split / fname, arcname=f"{split}/{fname}")
        paths[archive_name] = out_dir / archive_name
        for name in (captions_name, metadata_name):
            paths[name] = Path(shutil.copyfile(dataset_dir / name, out_dir / name))
    return paths


def remote_files(paths: dict[str, Path]) -> dict[str, RemoteFile]:
    """The md5 table of served files, in the form of ``course_lib.clotho.CLOTHO_FILES``."""
    return {name: RemoteFile(name, md5_of(path), path.stat().st_size) for name, path in paths.items()}


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- PANNs' checkpoint ------------------------------------------------------------------------------------------


def write_random_panns(path: Path, seed: int = 0) -> Path:
    """``Cnn14_mAP=0.431.pth`` in PANNs' layout ({'model': 84 tensors}, full width: about 327 MB), random weights."""
    with atomic_path(path) as temporary:
        torch.save(random_panns_checkpoint(width=1.0, seed=seed), temporary)
    return Path(path)


# --- a Sentence-BERT model with all-mpnet-base-v2's architecture -----------------------------------------------------


def write_random_sentence_model(folder: Path, texts: list[str], layers: int | None = None, seed: int = 0) -> Path:
    """A sentence-transformers folder shaped like all-mpnet-base-v2 (MPNet -> mean pooling -> Normalize), random weights.

    ``layers`` (default 12, the real model's) only shortens the stack for quick tests; the width and the
    768-d output stay. The word-piece vocabulary holds the words of ``texts`` whole (as a trained vocabulary holds
    common English words), single characters as a fallback, and is padded to the real model's 30,527 entries,
    so captions tokenise into about as many pieces as with the real model.
    """
    from sentence_transformers import SentenceTransformer
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers before 6.2
        from sentence_transformers.models import Normalize, Pooling, Transformer

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    raw = folder.with_name(folder.name + ".transformer")
    shutil.rmtree(raw, ignore_errors=True)
    config = MPNetConfig(**{**ALL_MPNET_BASE_V2, "num_hidden_layers": layers or ALL_MPNET_BASE_V2["num_hidden_layers"]})
    torch.manual_seed(seed)
    MPNetModel(config, add_pooling_layer=False).save_pretrained(raw)
    vocabulary = _word_pieces(texts, config.vocab_size)
    _tokenizer(MPNetTokenizerFast, vocabulary, raw).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=MPNET_MAX_SEQ_LENGTH)
    model = SentenceTransformer(modules=[transformer, Pooling(config.hidden_size, "mean"), Normalize()], device="cpu")
    model.save(str(folder), create_model_card=False)  # a model card would ask the Hub about the base model
    shutil.rmtree(raw, ignore_errors=True)
    (folder / "STAND_IN.json").write_text(json.dumps({
        "what": "random weights in all-mpnet-base-v2's architecture, for offline rehearsals; its vectors mean nothing",
        "config": {**ALL_MPNET_BASE_V2, "num_hidden_layers": config.num_hidden_layers}, "seed": seed}, indent=1))
    return folder


def _word_pieces(texts: list[str], size: int) -> list[str]:
    """MPNet's special tokens, the texts' lower-cased words and characters, '##' characters, padding, '<mask>' last."""
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    characters = sorted({character for word in words for character in word})
    pieces = list(dict.fromkeys([*MPNET_SPECIAL, "[UNK]", *characters, *(f"##{c}" for c in characters), *words]))
    if len(pieces) + 1 > size:
        raise ValueError(f"The texts hold {len(pieces)} distinct word pieces, more than a {size}-entry vocabulary.")
    return pieces + [f"[unused{i}]" for i in range(size - len(pieces) - 1)] + ["<mask>"]


def _tokenizer(tokenizer_class, vocabulary: list[str], folder: Path):
    """MPNet's word-piece tokenizer over ``vocabulary`` (transformers 5 takes the vocabulary itself, 4.x a file)."""
    import inspect

    if "vocab" in inspect.signature(tokenizer_class.__init__).parameters:
        return tokenizer_class(vocab={piece: i for i, piece in enumerate(vocabulary)})
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return tokenizer_class(vocab_file=str(vocab_file))
