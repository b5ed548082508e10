"""Hashed downloads: fetch a file once, check its md5, reuse it while the md5 holds.

Taught in notebook 01 (Clotho) and used again in notebook 03 (PANNs weights). pooch's
``HTTPDownloader`` streams the file, with a progress bar, into a temporary name beside the
target (``course_lib.files.atomic_path``); the md5 is checked before the file is renamed into
place, so an interrupted, corrupted or wrong transfer never leaves a file that looks finished.
Only a failure that another try can cure (a broken connection, a busy server) is retried;
every failure ends in a ``DownloadError`` whose ``kind`` says which of these it was:

    "checksum"    the file arrived but its md5 is not the published one
    "url"         the address itself is malformed (no http://, a typo in the scheme)
    "http"        the server refused the file (404 not found, 403 forbidden, ...)
    "connection"  no answer, a broken transfer or a server error, after every retry
    "local"       this machine could not store the file (disk full, a folder that cannot be written)
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pooch
import requests
from tqdm.auto import tqdm

from course_lib.files import atomic_path, remove_stale

CHUNK_BYTES = 1 << 20
# Errors another try can cure; HTTP 5xx, 408 (timeout) and 429 (rate limit) count as well.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError)
TRANSIENT_STATUS = {408, 429}
MALFORMED_URL_ERRORS = (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                        requests.exceptions.InvalidURL, requests.exceptions.URLRequired)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its md5; ``kind`` says why, the message what to do."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def file_md5(path: Path) -> str:
    """The md5 of a file on disk, as lowercase hex."""
    return pooch.file_hash(str(path), alg="md5")


def _download_once(url: str, md5: str, path: Path, timeout_seconds: float, progress: bool) -> None:
    """Stream ``url`` into a temporary file, and rename it to ``path`` only if its md5 is ``md5``."""
    # pooch sets the bar's total from Content-Length; a total of 1 keeps bool(bar) true until then.
    bar = tqdm(total=1, unit="B", unit_scale=True, desc=path.name, leave=False) if progress else None
    downloader = pooch.HTTPDownloader(progressbar=bar if bar is not None else False, chunk_size=CHUNK_BYTES,
                                      timeout=timeout_seconds)
    try:
        with atomic_path(path) as temporary:
            downloader(url, str(temporary), None)
            received = file_md5(temporary)
            if received != md5:  # atomic_path removes the temporary file
                raise DownloadError(
                    f"{path.name} downloaded from {url} has md5 {received}, not the published {md5}; it was "
                    "removed and not used. Run the step again; if it keeps failing, the server's copy differs "
                    "from the published one: download the file by hand and check its md5.",
                    "checksum",
                )
    finally:
        if bar is not None:
            bar.close()


def _refusal(exc: requests.RequestException, url: str, path: Path) -> DownloadError | None:
    """The error to raise at once for ``exc``, or None when another try may succeed."""
    by_hand = f"download it by hand and save it as {path}"
    if isinstance(exc, MALFORMED_URL_ERRORS):
        return DownloadError(
            f"{url!r} is not a valid download address ({exc}). Check the URL: it must start with http:// or "
            "https:// (a base URL you set yourself, such as COURSE_CLOTHO_URL, included).",
            "url",
        )
    response = exc.response if isinstance(exc, requests.HTTPError) else None
    if response is not None and (response.status_code >= 500 or response.status_code in TRANSIENT_STATUS):
        return None
    if response is not None and response.status_code == 404:
        return DownloadError(f"{path.name} was not found (404) at {url}: the file may have moved; {by_hand}.", "http")
    if response is not None:
        return DownloadError(f"The server refused {url} ({response.status_code} {response.reason}); {by_hand}.", "http")
    if isinstance(exc, TRANSIENT_ERRORS):
        return None
    return DownloadError(f"Could not download {url} ({type(exc).__name__}: {exc}); {by_hand}.", "http")


def _local_problem(exc: OSError, path: Path) -> DownloadError:
    return DownloadError(
        f"Could not store {path.name} in {path.parent} ({exc}). The problem is on this machine, not the "
        "server: free disk space there, or choose a data folder you can write to, and run the step again.",
        "local",
    )


def fetch(url: str, md5: str, path: Path, retries: int = 3, timeout_seconds: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` unless a file with md5 ``md5`` is already there.

    A broken transfer, a timeout or a server error (HTTP 5xx) is retried, ``retries`` tries in
    all; a malformed URL, a refusal (HTTP 404, 403), a wrong md5 or a local problem fails at
    once. A file whose md5 does not match is removed and never returned.
    """
    if not md5:
        raise ValueError(f"fetch needs the published md5 of {url}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if remove_stale(path.parent, path.name):  # a download killed before it could clean up
            print(f"{path.name}: removed the partial file of an interrupted download.")
        if path.is_file():
            if file_md5(path) == md5:
                return path
            print(f"{path.name}: the file on disk does not match md5 {md5}; downloading it again.")
            path.unlink()
    except OSError as exc:
        raise _local_problem(exc, path) from exc

    last_error: requests.RequestException | None = None
    for attempt in range(1, retries + 1):
        try:
            _download_once(url, md5, path, timeout_seconds, progress)
            return path
        except requests.RequestException as exc:  # before OSError: requests' errors are OSErrors too
            if (refusal := _refusal(exc, url, path)) is not None:
                raise refusal from exc
            last_error = exc
            if attempt < retries:
                print(f"{path.name}: transfer failed ({type(exc).__name__}); restarting ({attempt}/{retries}).")
                time.sleep(min(2.0 * attempt, 10.0))
        except OSError as exc:
            raise _local_problem(exc, path) from exc
    raise DownloadError(
        f"Could not download {url} after {retries} tries ({type(last_error).__name__}: {last_error}). Check your "
        "internet connection and run the step again (later, if the server is down), or download the file by hand "
        f"and save it as {path}.",
        "connection",
    ) from last_error


def host_reachable(url: str, timeout_seconds: float = 3.0) -> bool:
    """Whether the host of ``url`` accepts a connection within a few seconds (so offline never means a long wait)."""
    parts = urlparse(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_seconds):
            return True
    except OSError:
        return False
