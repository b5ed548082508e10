"""Clotho's captions as training data: cleaning, reproducible ids and one table per split.

Taught in notebook 01. A Clotho-format folder (``cfg.dataset_dir``, real or synthetic) holds

    clotho_captions_<split>.csv    file_name, caption_1 .. caption_5 (one row per clip, UTF-8)
    clotho_metadata_<split>.csv    file_name, keywords, sound_id, ... (ISO-8859-1 in Clotho v2.1)
    <split>/*.wav                  the clips, named as in the CSVs (three names start with a space)

From it, :func:`ensure_caption_tables` writes what the baseline's ``clotho_dataset.py`` wrote,
under ``cfg.prepared_dir``: ``<split>_text.csv`` (tid, fid, fname, raw_text, text, tokens),
``audio_info.json`` (clip durations) and ``vocab_info.json`` (vocabulary statistics).

Ids are reproducible, unlike the baseline's ``os.urandom`` ones. The rule: the first 9 bytes of
the sha1 of ``"<split>/<file name>"`` (fid) or ``"<split>/<file name>/<caption number 1-5>"``
(tid), written as urlsafe base64: 12 characters. The file name is the one on disk, leading
space included; the split is part of the key because one file name is in both development and
validation.

Below the lesson: reading a Clotho-format folder, then downloading (md5-checked) and extracting
Clotho v2.1 from Zenodo (``download_clotho``), which ``course_lib.pipeline`` calls on the clotho profile.
"""

from __future__ import annotations

import ast
import base64
import errno
import hashlib
import json
import os
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import py7zr
import soundfile as sf
from py7zr.callbacks import ExtractCallback
from tqdm.auto import tqdm

from course_lib._report import say
from course_lib.config import SPLITS, Config
from course_lib.download import fetch
from course_lib.files import atomic_path, building, replace_folder, write_json_atomically

__all__ = [
    "ZENODO_URL", "CAPTIONS_PER_CLIP", "TABLE_COLUMNS", "CAPTION_COLUMNS", "REBUILD_ADVICE", "REDOWNLOAD_ADVICE",
    "ClothoError", "clean_caption", "stable_id", "build_caption_table", "ensure_caption_tables", "check_unique_ids",
    "table_path", "load_caption_table", "vocabulary_info", "split_file_names", "read_captions", "read_metadata",
    "wav_names_on_disk", "split_is_complete", "RemoteFile", "CLOTHO_FILES", "file_url", "extract_split",
    "download_clotho",
]

ZENODO_URL = "https://zenodo.org/record/4783391/files"
CAPTIONS_PER_CLIP = 5
TABLE_COLUMNS = ["tid", "fid", "fname", "raw_text", "text", "tokens"]
CAPTION_COLUMNS = ["file_name"] + [f"caption_{number}" for number in range(1, CAPTIONS_PER_CLIP + 1)]
REBUILD_ADVICE = "Rebuild the dataset: delete the folder and run course_lib.pipeline.prepare(cfg, until='dataset')."
REDOWNLOAD_ADVICE = "Delete the archive and run the step again to download it afresh."

class ClothoError(RuntimeError):
    """The Clotho folder or an archive cannot be used; the message says what to do."""



# --- the lesson: caption cleaning, reproducible ids, caption tables -------------------------------------------------------

_APOSTROPHES = re.compile(r"['\u2019]")
_PUNCTUATION = re.compile(r"[^\w\s-]|_")
_LOOSE_HYPHENS = re.compile(r"(?<!\w)-|-(?!\w)")  # a hyphen not between two letters or digits


def clean_caption(text: str) -> str:
    """Lower case (the pronoun "I" kept), punctuation removed except hyphens inside words, single spaces.

    Taught in notebook 01, section 3.

    Apostrophes are dropped ("It's" -> "its"); other punctuation becomes a space, so "dog.The"
    splits into two words, and so does a hyphen that does not join two words ("a dog - barks").
    The baseline's cleaned captions also carry 8 rewrites done by hand (e.g. "beep, beep, beep"
    -> "beep"); those are not reproduced.
    """
    words = _LOOSE_HYPHENS.sub(" ", _PUNCTUATION.sub(" ", _APOSTROPHES.sub("", text))).split()
    return " ".join(word if word == "I" else word.lower() for word in words)


def stable_id(*parts: str | int) -> str:
    """12 urlsafe base64 characters of the sha1 of the parts joined by '/'. Taught in notebook 01, section 4."""
    digest = hashlib.sha1("/".join(str(part) for part in parts).encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode("ascii")


def build_caption_table(dataset_dir: Path, split: str, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """One row per caption, in the official CSV order, and {fid: {fname, duration}} of the split.

    Taught in notebook 01, section 1.
    """
    captions = read_captions(dataset_dir, split)
    audio_dir = Path(dataset_dir) / split
    fnames = wav_names_on_disk(audio_dir, list(captions["file_name"]))
    rows, audio = [], {}
    for fname, (_, clip) in zip(tqdm(fnames, desc=f"{split} captions", disable=not progress), captions.iterrows(), strict=True):
        fid = stable_id(split, fname)
        try:
            audio[fid] = {"fname": fname, "duration": sf.info(str(audio_dir / fname)).duration}
        except RuntimeError as exc:  # soundfile's errors for unreadable files
            raise ClothoError(f"{audio_dir / fname} is not a readable audio file ({exc}). Rebuild the dataset.") from exc
        for number in range(1, CAPTIONS_PER_CLIP + 1):
            raw_text, text = clip[f"caption_{number}"], clean_caption(clip[f"caption_{number}"])
            rows.append((stable_id(split, fname, number), fid, fname, raw_text, text, repr(text.split())))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), audio


def ensure_caption_tables(cfg: Config, progress: bool = True, verbose: bool = True) -> dict[str, pd.DataFrame]:
    """Write ``<split>_text.csv``, ``audio_info.json`` and ``vocab_info.json``, reusing valid tables.

    Taught in notebook 01, section 1. Reads the Clotho-format folder ``cfg.dataset_dir``, which must exist:
    ``course_lib.pipeline.prepare(cfg, until="captions")`` builds it first when it is missing.
    """
    _require_dataset(cfg.dataset_dir, cfg.splits)
    audio_info_path, vocab_info_path = cfg.prepared_dir / "audio_info.json", cfg.prepared_dir / "vocab_info.json"
    with building(audio_info_path):  # one run at a time writes a data root's caption tables
        audio_info = _read_json(audio_info_path) or {}
        tables, rebuilt = {}, []
        for split in cfg.splits:
            tables[split] = _reusable_table(cfg, split, audio_info)
            if tables[split] is None:
                tables[split], audio_info[split] = build_caption_table(cfg.dataset_dir, split, progress)
                with atomic_path(table_path(cfg, split)) as temporary:
                    tables[split].to_csv(temporary, index=False, encoding="utf-8")
                tables[split] = load_caption_table(cfg, split)
                rebuilt.append(split)
        check_unique_ids(tables)
        if rebuilt or _read_json(vocab_info_path) is None:
            write_json_atomically(audio_info_path, {split: audio_info[split] for split in cfg.splits})
            write_json_atomically(vocab_info_path, vocabulary_info(tables))
    reused = [split for split in cfg.splits if split not in rebuilt]
    if verbose:
        print(f"Caption tables in {cfg.prepared_dir}: built {rebuilt or 'none'}, reused {reused or 'none'}.")
    return tables


def check_unique_ids(tables: dict[str, pd.DataFrame]) -> None:
    """Fail loudly when two clips or two captions share an id (a file name listed twice, or a hash collision)."""
    captions = pd.concat([table.assign(split=split) for split, table in tables.items()])
    clips = captions.drop_duplicates(["split", "fname"])
    for column, rows in (("fid", clips), ("tid", captions)):
        repeated = rows[rows[column].duplicated(keep=False)]
        if len(repeated):
            raise ClothoError(
                f"{column}s are not unique; these rows share one (is a file listed twice in a captions CSV?):\n"
                f"{repeated[['split', column, 'fname']].to_string(index=False)}"
            )


def table_path(cfg: Config, split: str) -> Path:
    return cfg.prepared_dir / f"{split}_text.csv"


def load_caption_table(cfg: Config, split: str) -> pd.DataFrame:
    """A caption table as written by ensure_caption_tables, with tokens as lists.

    Taught in notebook 02 (its opening cell, before section 1); notebook 01, section 1 writes the tables.
    """
    path = table_path(cfg, split)
    if not path.is_file():
        raise ClothoError(f"{path} does not exist. Run course_lib.pipeline.prepare(cfg, until='captions') first.")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    table["tokens"] = table["tokens"].map(ast.literal_eval)
    return table


def _read_json(path: Path) -> dict | None:
    """A JSON object written by ensure_caption_tables; None when missing or unreadable (said so)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        value = exc
    if not isinstance(value, dict):
        print(f"{path} is unreadable ({value if isinstance(value, Exception) else 'not a JSON object'}); rebuilding it.")
    return value if isinstance(value, dict) else None


def _reusable_table(cfg: Config, split: str, audio_info: dict) -> pd.DataFrame | None:
    """The existing table when it is newer than the captions CSV, complete, cleaned by today's rules and has durations."""
    path, captions_csv = table_path(cfg, split), cfg.dataset_dir / split_file_names(split)[1]
    if not isinstance(audio_info.get(split), dict) or not path.is_file() or path.stat().st_mtime < captions_csv.stat().st_mtime:
        return None
    try:
        table = load_caption_table(cfg, split)
    except (KeyError, ValueError, SyntaxError, pd.errors.ParserError):
        return None
    expected_rows = CAPTIONS_PER_CLIP * len(read_captions(cfg.dataset_dir, split))
    ok = list(table.columns) == TABLE_COLUMNS and len(table) == expected_rows == CAPTIONS_PER_CLIP * len(audio_info[split])
    return table if ok and table["text"].equals(table["raw_text"].map(clean_caption)) else None


def vocabulary_info(tables: dict[str, pd.DataFrame]) -> dict:
    """Vocabulary size overall and per split, with clip, caption and word counts."""
    word_bags = {split: Counter(word for tokens in table["tokens"] for word in tokens) for split, table in tables.items()}
    vocabulary = sorted(set().union(*word_bags.values()))
    splits = {split: {"num_clips": int(table["fid"].nunique()), "num_captions": len(table),
                      "num_words": sum(word_bags[split].values()), "vocabulary_size": len(word_bags[split])}
              for split, table in tables.items()}
    return {"vocabulary_size": len(vocabulary), "splits": splits, "vocabulary": vocabulary}


# --- reading a Clotho-format folder ------------------------------------------------------


def split_file_names(split: str) -> tuple[str, str, str]:
    """The audio archive, captions CSV and metadata CSV names of one split."""
    if split not in SPLITS:
        raise ClothoError(f"Unknown split {split!r}. Choose from: {', '.join(SPLITS)}.")
    return f"clotho_audio_{split}.7z", f"clotho_captions_{split}.csv", f"clotho_metadata_{split}.csv"



def _read_csv(path: Path, encoding: str, columns: list[str]) -> pd.DataFrame:
    """Every cell as a string, spaces kept; an error that names the file when it is unreadable or lacks a column."""
    if not path.is_file():
        raise ClothoError(f"{path} does not exist. Run course_lib.pipeline.prepare(cfg, until='dataset') first.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ClothoError(
            f"{path} is not valid {encoding} (byte {exc.object[exc.start:exc.end]!r} at position {exc.start}). "
            f"Save it as {encoding}, or download the original again."
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ClothoError(f"{path} is not a readable CSV ({exc}). Fix it or download the original again.") from exc
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ClothoError(
            f"{path} lacks the column(s) {', '.join(missing)}: it has {', '.join(map(str, table.columns))}. "
            f"A Clotho CSV of this kind has {', '.join(columns)}."
        )
    return table


def read_captions(dataset_dir: Path, split: str) -> pd.DataFrame:
    """The official captions CSV of a split (UTF-8): file_name, caption_1 .. caption_5.

    Taught in notebook 01, section 1 (first used in notebook 00, section 5).
    """
    return _read_csv(Path(dataset_dir) / split_file_names(split)[1], "utf-8", CAPTION_COLUMNS)


def read_metadata(dataset_dir: Path, split: str) -> pd.DataFrame:
    """The metadata CSV of a split (keywords, Freesound id and link, licence), decoded from ISO-8859-1.

    Taught in notebook 01, section 6.
    """
    return _read_csv(Path(dataset_dir) / split_file_names(split)[2], "ISO-8859-1", ["file_name"])


def wav_names_on_disk(audio_dir: Path, csv_names: list[str], advice: str = REBUILD_ADVICE) -> list[str]:
    """The on-disk name of each file the CSV names; fails listing every missing one.

    Names are matched exactly first. A CSV that stores a name stripped of its leading space (like the
    baseline's own CSVs) still finds the file, and so does a name whose accents are composed
    differently (macOS writes NFD) or whose extension is upper case (``.WAV``); each such match is said.
    """
    folder = Path(audio_dir)
    on_disk = {path.name for path in folder.iterdir() if path.suffix.lower() == ".wav"} if folder.is_dir() else set()
    by_key = {_name_key(name): name for name in on_disk}
    resolved = [name if name in on_disk else by_key.get(_name_key(name)) for name in csv_names]
    missing = [name for name, found in zip(csv_names, resolved, strict=True) if found is None]
    if missing:
        listing = "\n  ".join(repr(name) for name in missing)
        raise ClothoError(
            f"{len(missing)} of {len(csv_names)} wav files named in the captions CSV are missing from "
            f"{audio_dir}:\n  {listing}\n{advice}"
        )
    for name, found in zip(csv_names, resolved, strict=True):
        if found != name and found.strip() != name.strip():  # a leading space alone is Clotho's own, known quirk
            print(f"{audio_dir}: the captions CSV's {name!r} is the file {found!r} (same name, other spelling).")
    return resolved


def _name_key(name: str) -> str:
    """A file name as compared across systems: composed Unicode (NFC), no outer spaces, a lower-case extension."""
    name = unicodedata.normalize("NFC", name).strip()
    stem, dot, extension = name.rpartition(".")
    return f"{stem}{dot}{extension.lower()}" if dot else name


def _require_dataset(dataset_dir: Path, splits: tuple[str, ...]) -> None:
    """Fail with what to run when the Clotho-format folder or a split's captions CSV is missing."""
    missing = [split_file_names(split)[1] for split in splits if not (Path(dataset_dir) / split_file_names(split)[1]).is_file()]
    if missing:
        raise ClothoError(
            f"No Clotho-format dataset in {dataset_dir} (missing {', '.join(missing)}). "
            "Build it with course_lib.pipeline.prepare(cfg, until='dataset')."
        )


def split_is_complete(dataset_dir: Path, split: str) -> bool:
    """True when the captions CSV exists and every wav it names is in ``<split>/``."""
    try:
        wav_names_on_disk(Path(dataset_dir) / split, list(read_captions(dataset_dir, split)["file_name"]))
    except ClothoError:
        return False
    return True



# --- download and extraction --------------------------------------------------------------

@dataclass(frozen=True)
class RemoteFile:
    """One file of Zenodo record 4783391 and its published md5; size is None where none is known."""

    name: str
    md5: str
    size: int | None


# md5s as published by aac-datasets (and soundata); sizes from Zenodo's metadata where known.
CLOTHO_FILES = {
    file.name: file
    for file in (
        RemoteFile("clotho_audio_development.7z", "c8b05bc7acdb13895bb3c6a29608667e", 4_541_582_263),
        RemoteFile("clotho_audio_validation.7z", "7dba730be08bada48bd15dc4e668df59", 1_260_701_425),
        RemoteFile("clotho_audio_evaluation.7z", "4569624ccadf96223f19cb59fe4f849f", None),
        RemoteFile("clotho_captions_development.csv", "d4090b39ce9f2491908eebf4d5b09bae", 1_336_762),
        RemoteFile("clotho_captions_validation.csv", "5879e023032b22a2c930aaa0528bead4", 367_649),
        RemoteFile("clotho_captions_evaluation.csv", "1b16b9e57cf7bdb7f13a13802aeb57e2", 361_995),
        RemoteFile("clotho_metadata_development.csv", "170d20935ecfdf161ce1bb154118cda5", 830_797),
        RemoteFile("clotho_metadata_validation.csv", "2e010427c56b1ce6008b0f03f41048ce", 224_803),
        RemoteFile("clotho_metadata_evaluation.csv", "13946f054d4e1bf48079813aac61bf77", None),
    )
}



def file_url(name: str, base_url: str | None = None) -> str:
    """Where a Clotho file is downloaded from (``COURSE_CLOTHO_URL`` overrides Zenodo)."""
    base = base_url or os.environ.get("COURSE_CLOTHO_URL") or ZENODO_URL
    return f"{base.rstrip('/')}/{name}?download=1"




class _ExtractProgress(ExtractCallback):
    """A tqdm bar that advances once per file py7zr has written."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
        self.bar.update(1)

    def report_start_preparation(self) -> None: ...
    def report_start(self, processing_file_path: str, processing_bytes: str) -> None: ...
    def report_update(self, decompressed_bytes: str) -> None: ...
    def report_warning(self, message: str) -> None: ...
    def report_postprocess(self) -> None: ...


def extract_split(archive: Path, dataset_dir: Path, split: str, progress: bool = True) -> Path:
    """Extract a split's archive into a folder beside ``<split>/``, moved into place only when complete.

    A full disk or an unwritable folder keeps the archive (it is not at fault); only an archive
    that cannot be decompressed is worth downloading again.
    """
    dataset_dir, destination = Path(dataset_dir), Path(dataset_dir) / split
    partial = dataset_dir / f".{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
    room = ""
    try:
        with py7zr.SevenZipFile(archive) as seven:
            needed, free = seven.archiveinfo().uncompressed, shutil.disk_usage(dataset_dir).free
            room = f" (about {needed / 1e9:.2g} GB for this split)"
            if free < needed:
                raise OSError(errno.ENOSPC, f"only {free / 1e9:.2g} GB free in {dataset_dir}")
            with tqdm(total=len(seven.getnames()), unit="file", desc=f"extract {split}", disable=not progress) as bar:
                seven.extractall(path=partial, callback=_ExtractProgress(bar))
        folders = {path.parent for path in partial.rglob("*.wav")}
        if len(folders) != 1:
            raise ClothoError(f"{archive} should hold one folder of wav files, not {len(folders)}. {REDOWNLOAD_ADVICE}")
        wav_names_on_disk(next(iter(folders)), list(read_captions(dataset_dir, split)["file_name"]), REDOWNLOAD_ADVICE)
        replace_folder(next(iter(folders)), destination)
    except ClothoError:
        raise
    except OSError as exc:  # the disk or the folder, not the archive
        raise ClothoError(
            f"Extracting {archive} failed ({exc}). Nothing was put in {destination}. Free disk space{room} "
            "or fix the folder's permissions, and rerun; the archive is kept."
        ) from exc
    except Exception as exc:  # py7zr's Bad7zFile, CrcError, lzma errors...: the archive is damaged
        raise ClothoError(
            f"Extracting {archive} failed: the archive is damaged ({type(exc).__name__}: {exc}). Nothing was put in "
            f"{destination}. {REDOWNLOAD_ADVICE}"
        ) from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return destination


def download_clotho(
    cfg: Config,
    splits: tuple[str, ...] | None = None,
    base_url: str | None = None,
    files: dict[str, RemoteFile] | None = None,
    keep_archives: bool = True,
    progress: bool = True,
    verbose: bool = True,
) -> Path:
    """Fetch (md5-checked) and extract Clotho v2.1 splits into ``cfg.dataset_dir``; reuse complete splits.

    Taught in notebook 01, section 7.
    """
    files = files or CLOTHO_FILES
    dataset_dir = cfg.dataset_dir
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for split in splits or cfg.splits:
        archive_name, *csv_names = split_file_names(split)
        for name in csv_names:  # small: checked against their md5 on every run, fetched when missing
            fetch(file_url(name, base_url), files[name].md5, dataset_dir / name, progress=progress)
        if split_is_complete(dataset_dir, split):
            count = len(read_captions(dataset_dir, split))
            say(verbose, f"{split}: reused the {count} wav files in {dataset_dir / split} (CSVs md5-checked).")
            continue
        remote = files[archive_name]
        size = f"{remote.size / 1e9:.2f} GB" if remote.size else "size unknown"
        say(verbose, f"{split}: fetching {archive_name} ({size}) unless a checked copy is in the downloads folder.")
        archive_path = cfg.downloads_dir / "clotho" / archive_name
        archive = fetch(file_url(archive_name, base_url), remote.md5, archive_path, progress=progress)
        with building(dataset_dir / split):
            if not split_is_complete(dataset_dir, split):  # another run may have extracted it meanwhile
                extract_split(archive, dataset_dir, split, progress=progress)
        say(verbose, f"{split}: extracted {len(read_captions(dataset_dir, split))} wav files into {dataset_dir / split}.")
        if not keep_archives:
            archive.unlink()
            say(verbose, f"{split}: deleted {archive} to save disk space.")
    return dataset_dir
