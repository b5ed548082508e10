"""Tiny Clotho-format folders and a local file server for the tests of course_lib.clotho and
course_lib.download (not a test module itself)."""

from __future__ import annotations

import csv
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import soundfile as sf

SAMPLE_RATE = 8000
SHARED_NAME = "City Ambience w_ Car Passing_1-2.wav"  # in development and validation, as in Clotho v2.1

# {split: [(file name, seconds), ...]}: a leading-space name and the name shared by two splits.
TINY_CLIPS = {
    "development": [(" Ambience Birds.wav", 1.5), ("dog barking.wav", 0.5), (SHARED_NAME, 0.25)],
    "validation": [(" e ieio ieai.wav", 0.75), (SHARED_NAME, 0.5)],
    "evaluation": [("rain on a roof.wav", 1.0), ("walkie-talkie chatter.wav", 0.5)],
}


def captions_for(fname: str) -> list[str]:
    """Five raw captions per clip, with punctuation, capitals, a pronoun I and a trailing space."""
    stem = fname.strip().removesuffix(".wav")
    return [
        f"A recording of {stem}, loudly!",
        f"I think it is {stem}.",
        f"Someone uses a walkie-talkie near {stem}",
        f"It's  {stem}   outside ",
        f"The {stem}; then silence?",
    ]


def write_wav(path: Path, seconds: float, sample_rate: int = SAMPLE_RATE) -> None:
    samples = np.sin(2 * np.pi * 440 * np.arange(round(seconds * sample_rate)) / sample_rate).astype(np.float32)
    sf.write(path, 0.1 * samples, sample_rate, subtype="PCM_16")


def write_split(dataset_dir: Path, split: str, clips: list[tuple[str, float]], write_audio: bool = True) -> None:
    """The captions CSV, the ISO-8859-1 metadata CSV and (optionally) the wavs of one split."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *(f"caption_{n}" for n in range(1, 6))])
        for fname, _ in clips:
            writer.writerow([fname, *captions_for(fname)])
    with open(dataset_dir / f"clotho_metadata_{split}.csv", "w", newline="", encoding="ISO-8859-1") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"])
        for number, (fname, _) in enumerate(clips):
            writer.writerow([fname, "café;pluie;élan", number, f"https://freesound.org/s/{number}", "", "Jürgen", "CC0"])
    if write_audio:
        (dataset_dir / split).mkdir(exist_ok=True)
        for fname, seconds in clips:
            write_wav(dataset_dir / split / fname, seconds)


def write_clotho_folder(dataset_dir: Path, clips: dict[str, list[tuple[str, float]]] | None = None) -> Path:
    """A complete Clotho-format folder with every split of ``clips`` (default: TINY_CLIPS)."""
    for split, split_clips in (clips or TINY_CLIPS).items():
        write_split(dataset_dir, split, split_clips)
    return dataset_dir


class FileServer:
    """Serves ``contents`` ({file name: bytes}) on 127.0.0.1, never the internet.

    It records every request (``requests``: names; ``range_starts``: the byte a request asked to
    start from, None without a Range header), answers 404 for unknown names, supports
    ``Range: bytes=N-`` (206 Partial Content, or 416 past the end) like Zenodo, and can misbehave on
    demand: ``corrupt`` (serve the bytes reversed), ``break_once`` (send half, then close the
    connection), ``no_ranges`` (ignore Range headers: 200 and the whole file, like some servers),
    ``slow`` (send in ten pieces a fifth of a second apart) and ``status`` ({name: HTTP code}
    answered instead of the file).
    """

    def __init__(self, contents: dict[str, bytes]) -> None:
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
                if name in server.corrupt:
                    body = bytes(reversed(body))
                if start is not None and name not in server.no_ranges:
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    body = body[start:]
                else:
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "none" if name in server.no_ranges else "bytes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.break_once:
                    server.break_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])  # then the connection closes
                    return
                if name in server.slow:
                    step = len(body) // 10 + 1
                    for first in range(0, len(body), step):
                        self.wfile.write(body[first : first + step])
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
