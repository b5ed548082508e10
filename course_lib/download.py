"""Hashed downloads: fetch a file once, check its md5, reuse it while the md5 holds.

Taught in notebook 01 (Clotho) and used again in notebook 03 (PANNs weights). The file is streamed,
with a progress bar, into ``.<name>.incomplete`` beside the target; the md5 is checked on the whole
file before it is renamed into place, so an interrupted, corrupted or wrong transfer never leaves a
file that looks finished. An interrupted transfer (a broken connection, Ctrl-C, a Colab reset) is
resumed where it stopped with an HTTP range request when the server supports them, and restarted
from byte 0 when it does not. Only a failure that another try can cure (a broken connection, a busy
server) is retried; every failure ends in a ``DownloadError`` whose ``kind`` says which it was:

    "checksum"    the file arrived but its md5 is not the published one
    "url"         the address itself is malformed (no http://, a typo in the scheme)
    "http"        the server refused the file (404 not found, 403 forbidden, ...)
    "connection"  no answer, a broken transfer or a server error, after every retry
    "local"       this machine could not store the file (disk full, a folder that cannot be written)
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pooch
import requests
from tqdm.auto import tqdm

from course_lib.files import DiskFullError, building, describe_bytes, is_disk_full, remove_stale

__all__ = [
    "CHUNK_BYTES", "TRANSIENT_ERRORS", "TRANSIENT_STATUS", "MALFORMED_URL_ERRORS", "INCOMPLETE_SUFFIX",
    "DownloadError", "file_md5", "incomplete_path", "fetch", "host_reachable",
]

CHUNK_BYTES = 1 << 16  # what a broken connection can lose of the bytes in flight: at most one chunk
# Errors another try can cure; HTTP 5xx, 408 (timeout) and 429 (rate limit) count as well.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError)
TRANSIENT_STATUS = {408, 429}
MALFORMED_URL_ERRORS = (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                        requests.exceptions.InvalidURL, requests.exceptions.URLRequired)
INCOMPLETE_SUFFIX = ".incomplete"


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its md5; ``kind`` says why, the message what to do."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def file_md5(path: Path) -> str:
    """The md5 of a file on disk, as lowercase hex."""
    return pooch.file_hash(str(path), alg="md5")


def incomplete_path(path: Path) -> Path:
    """Where the bytes of an unfinished download of ``path`` wait to be resumed."""
    return path.with_name(f".{path.name}{INCOMPLETE_SUFFIX}")


def fetch(url: str, md5: str, path: Path, retries: int = 3, timeout_seconds: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` unless a file with md5 ``md5`` is already there.

    A broken transfer, a timeout or a server error (HTTP 5xx) is retried, ``retries`` tries in
    all, each resuming where the last stopped; a malformed URL, a refusal (HTTP 404, 403), a wrong
    md5 or a local problem fails at once. A file whose md5 does not match is never returned, and
    one already on disk is replaced only by a download that arrived whole and matched.
    """
    if not md5:
        raise ValueError(f"fetch needs the published md5 of {url}")
    path = Path(path)
    try:
        if path.is_file() and file_md5(path) == md5:  # the usual case, without a lock (a read-only folder works)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local_problem(exc, path) from exc
    with building(path):  # another run fetching the same file: wait for it, then reuse what it fetched
        return _fetch_alone(url, md5, path, retries, timeout_seconds, progress)


def _fetch_alone(url: str, md5: str, path: Path, retries: int, timeout_seconds: float, progress: bool) -> Path:
    """``fetch``, with the file's lock held: nobody else touches ``path`` or its incomplete download."""
    try:
        if remove_stale(path.parent, path.name):  # an older version's temporary, its writer gone
            print(f"{path.name}: removed the partial file of an interrupted download.")
        if path.is_file():
            if file_md5(path) == md5:
                return path
            print(f"{path.name}: the file on disk does not match md5 {md5}; downloading it again (the file on disk "
                  "is kept until the new one has arrived and matches).")
    except OSError as exc:
        raise _local_problem(exc, path) from exc

    last_error: requests.RequestException | None = None
    for attempt in range(1, retries + 1):
        try:
            _download(url, md5, path, timeout_seconds, progress)
            return path
        except requests.RequestException as exc:  # before OSError: requests' errors are OSErrors too
            if (refusal := _refusal(exc, url, path)) is not None:
                raise refusal from exc
            last_error = exc
            if attempt < retries:
                print(f"{path.name}: transfer failed ({type(exc).__name__}); trying again ({attempt}/{retries}).")
                time.sleep(min(2.0 * attempt, 10.0))
        except OSError as exc:
            raise _local_problem(exc, path) from exc
    partial = incomplete_path(path)
    kept = (f" The {describe_bytes(partial.stat().st_size)} received so far are kept in {partial}; the next run resumes "
            "from there." if partial.is_file() and partial.stat().st_size else "")
    raise DownloadError(
        f"Could not download {url} after {retries} tries ({type(last_error).__name__}: {last_error}). Check your "
        "internet connection and run the step again (later, if the server is down), or download the file by hand "
        f"and save it as {path}.{kept}",
        "connection",
    ) from last_error


def _download(url: str, md5: str, path: Path, timeout_seconds: float, progress: bool) -> None:
    """Stream ``url`` into ``path``'s incomplete file, resuming it when the server allows; rename it once its md5 is ``md5``.

    Written with requests rather than pooch's HTTPDownloader: that one always opens its output with
    "w+b" (from byte 0) and cannot ask for, or check, a range; pooch still computes the md5.
    """
    partial = incomplete_path(path)
    offset = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_seconds) as response:
        if offset and response.status_code == 416:  # nothing left to send: the incomplete file may be whole
            if file_md5(partial) == md5:
                os.replace(partial, path)
                return
            partial.unlink()
            return _download(url, md5, path, timeout_seconds, progress)
        response.raise_for_status()
        resumed = offset > 0 and response.status_code == 206 and _range_start(response) == offset
        if offset and not resumed:
            if response.status_code == 206:  # a range we did not ask for: start again without one
                partial.unlink()
                return _download(url, md5, path, timeout_seconds, progress)
            print(f"{path.name}: the server cannot resume the interrupted download; starting again from byte 0.")
        elif resumed:
            print(f"{path.name}: resuming the interrupted download after {describe_bytes(offset)}.")
        start = offset if resumed else 0
        total = start + int(response.headers.get("Content-Length") or 0) or None
        with open(partial, "ab" if resumed else "wb") as handle, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=path.name, leave=False, disable=not progress
        ) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                _write(handle, chunk, path, None if total is None else total - bar.n)
                bar.update(len(chunk))
    received = file_md5(partial)
    if received != md5:
        partial.unlink()
        if resumed:  # the part kept from before may belong to another version of the file: one clean try
            print(f"{path.name}: the resumed download does not match md5 {md5}; downloading it again from byte 0.")
            return _download(url, md5, path, timeout_seconds, progress)
        raise DownloadError(
            f"{path.name} downloaded from {url} has md5 {received}, not the published {md5}; it was "
            "removed and not used. Run the step again; if it keeps failing, the server's copy differs "
            "from the published one: download the file by hand and check its md5.",
            "checksum",
        )
    os.replace(partial, path)


def _range_start(response: requests.Response) -> int | None:
    """The first byte of a 206 answer, from its Content-Range header ("bytes 100-999/1000")."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _write(handle, chunk: bytes, path: Path, remaining: int | None) -> None:
    """Append ``chunk``; a full disk says where, and how much more the download needs."""
    try:
        handle.write(chunk)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError.while_writing(path, remaining) from exc
        raise


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
    if isinstance(exc, DiskFullError):
        partial = incomplete_path(path)
        kept = (f" The part received so far is kept in {partial}; the next run resumes from there."
                if partial.is_file() and partial.stat().st_size else "")
        return DownloadError(f"{exc} The problem is on this machine, not the server.{kept}", "local")
    return DownloadError(
        f"Could not store {path.name} in {path.parent} ({exc}). The problem is on this machine, not the "
        "server: free disk space there, or choose a data folder you can write to, and run the step again.",
        "local",
    )


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
