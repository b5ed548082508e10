"""Hashed downloads: fetch a file once, check its checksum, reuse it while the checksum holds.

Taught in notebook 01 (Clotho) and used again in notebook 03 (PANNs weights). pooch does the
work: it downloads into a temporary file beside the target, checks the hash, and only then
moves the file into place, so an interrupted or corrupted transfer never leaves a file that
looks finished. This module adds retries (an interrupted transfer restarts) and messages that
say what to do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pooch
import requests
from tqdm.auto import tqdm


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message says what to do."""


def file_md5(path: Path) -> str:
    """The md5 of a file on disk, as lowercase hex."""
    return pooch.file_hash(str(path), alg="md5")


def fetch(
    url: str,
    md5: str | None,
    path: Path,
    retries: int = 3,
    timeout_seconds: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``path`` unless a file with the right md5 is already there.

    A transfer that breaks off is restarted up to ``retries`` times. A file whose md5 does not
    match is removed and never returned. ``md5=None`` skips the check (for files with no
    published checksum); the md5 of what arrived is then printed so it can be pinned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    known_hash = f"md5:{md5}" if md5 else None
    if path.is_file() and md5 and file_md5(path) == md5:
        return path
    if path.is_file() and md5:
        print(f"{path.name}: the file on disk does not match md5 {md5}; downloading it again.")
        path.unlink()

    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        # pooch sets the bar's total from Content-Length; a total of 1 keeps bool(bar) true until then.
        bar = tqdm(total=1, unit="B", unit_scale=True, desc=path.name, leave=False) if progress else None
        downloader = pooch.HTTPDownloader(progressbar=bar or False, timeout=timeout_seconds)
        try:
            pooch.retrieve(url, known_hash, fname=path.name, path=path.parent, downloader=downloader)
        except ValueError as exc:  # pooch's checksum mismatch; it already removed the bad file
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"{path.name} downloaded from {url} does not match its md5 {md5}; the file was "
                "removed and not used. Run the step again; if it keeps failing, the server copy "
                f"differs from the published one: download it by hand and check it ({exc})."
            ) from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            last_error = exc
            path.unlink(missing_ok=True)
            if attempt < retries:
                print(f"{path.name}: transfer failed ({type(exc).__name__}); restarting ({attempt}/{retries}).")
                time.sleep(min(2.0 * attempt, 10.0))
            continue
        finally:
            if bar is not None:
                bar.close()
        if md5 is None:
            print(f"{path.name}: no published md5; the downloaded file has md5 {file_md5(path)}.")
        return path
    raise DownloadError(
        f"Could not download {url} after {retries} tries ({last_error}). Check your internet "
        f"connection, or download the file by hand and save it as {path}."
    ) from last_error
