"""Log-mel features as the baseline computes them, a torch twin for GPUs, and their HDF5 storage.

Taught in notebook 02. The baseline (preprocessing/audio_logmel.py) reads each wav as mono,
frames it with a 40 ms Hann window every 20 ms, keeps 64 Slaney mel bands of the power spectrum
from 0 Hz to Nyquist and takes the natural log of (mel + machine epsilon): a (T, 64) float32
array per clip, T = 1 + floor(N / hop), stored in one flat HDF5 file per split, one dataset per fid.

One deliberate difference: the baseline keeps each file's own sample rate, so a 48 kHz file gets
other window lengths and mel bands reaching 24 kHz. Here every clip is first resampled to 44.1 kHz
(Clotho's rate, so Clotho's features are unchanged) and all clips share one mel filter bank.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import librosa
import numpy as np
import soundfile
import torch
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from course_lib._pool import default_workers, map_in_processes
from course_lib._report import say
from course_lib.clotho import load_caption_table
from course_lib.config import HOP_SECONDS, SAMPLE_RATE, Config
from course_lib.files import atomic_path, building, remove_stale, write_json_atomically

__all__ = [
    "RESAMPLE_TYPE", "BLAS", "PARALLEL_FROM_CLIPS", "LOG_MEL_LIMIT", "REBUILD_FEATURES", "FeatureExtractionError",
    "FeatureParams", "frame_count", "to_mono", "resample", "mel_filter_bank", "log_mel", "load_audio", "TorchLogMel",
    "features_path", "skipped_path", "load_log_mel", "check_log_mel", "clip_files", "invalid_reason",
    "source_fingerprint", "extract_clip", "extract_all", "build_split", "bad_files_message", "read_skipped",
    "ensure_features",
]

RESAMPLE_TYPE = "soxr_hq"  # librosa's default resampler since 0.10, named so it cannot drift
BLAS = ThreadpoolController()  # to run the mel matrix product on one BLAS thread (see log_mel)
# ensure_features' default: one process below this many clips in a split, every core from it on. On 2 cores,
# starting the workers took 2.2 s the first time in a session (the fork server, see course_lib._pool) and 0.1 s
# later; two processes won that back from about 400 clips of 15-30 s (benchmarks/results/features.json).
PARALLEL_FROM_CLIPS = 500
LOG_MEL_LIMIT = 1e3
REBUILD_FEATURES = "rebuild the features with course_lib.pipeline.prepare(cfg, until='features')."


class FeatureExtractionError(RuntimeError):
    """Some wav files could not be turned into log-mels; the message lists them all."""


@dataclass(frozen=True)
class FeatureParams:
    """The log-mel settings; window and hop are in seconds, converted with the sample rate. Taught in notebook 02, section 1."""

    sample_rate: int = SAMPLE_RATE
    window_seconds: float = 0.040
    hop_seconds: float = HOP_SECONDS
    n_mels: int = 64
    log_offset: float = float(np.spacing(1))  # machine epsilon, about 2.22e-16

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureParams:
        """Read window, hop, n_mels and the log offset from cfg.baseline['feature_conf']."""
        conf = cfg.baseline.get("feature_conf", {})
        offset = conf.get("log_offset", "machine_epsilon")
        return cls(
            window_seconds=float(conf.get("window_seconds", cls.window_seconds)),
            hop_seconds=float(conf.get("hop_seconds", cls.hop_seconds)),
            n_mels=int(conf.get("n_mels", cls.n_mels)),
            log_offset=float(np.spacing(1)) if offset == "machine_epsilon" else float(offset),
        )

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.window_seconds)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_seconds)

    @property
    def n_fft(self) -> int:
        """The next power of two at or above the window length (2048 for 1764)."""
        return 1 << (self.win_length - 1).bit_length()

    @property
    def fmax(self) -> float:
        return self.sample_rate / 2.0

    def attrs(self) -> dict[str, float | int | str]:
        """Everything that shapes the features, as stored in each HDF5 file's root attributes."""
        return {
            **asdict(self), "win_length": self.win_length, "hop_length": self.hop_length, "n_fft": self.n_fft,
            "fmin": 0.0, "fmax": self.fmax, "power": 2.0, "window": "hann", "center": True, "pad_mode": "constant",
            "mel_scale": "slaney", "mel_norm": "slaney", "log": "natural", "resample_type": RESAMPLE_TYPE,
        }


def frame_count(num_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT: one every hop, plus one (751 for 15 s at 44.1 kHz). Taught in notebook 02, section 4."""
    return 1 + num_samples // hop_length


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (channels, N) array, librosa's layout; 1-D input is returned as is."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
        raise ValueError(f"Samples of shape {samples.shape} look like (N, channels); pass (channels, N), e.g. samples.T.")
    return samples if samples.ndim == 1 else librosa.to_mono(samples)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Bring mono samples to target_rate (a no-op at that rate)."""
    if sample_rate == target_rate:
        return samples
    return librosa.resample(samples, orig_sr=sample_rate, target_sr=target_rate, res_type=RESAMPLE_TYPE).astype(np.float32)


def mel_filter_bank(params: FeatureParams) -> np.ndarray:
    """librosa's Slaney mel filter bank, (n_mels, n_fft // 2 + 1) float32. Taught in notebook 02, section 2."""
    return librosa.filters.mel(
        sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=0.0, fmax=params.fmax,
        htk=False, norm="slaney", dtype=np.float32,
    )


def log_mel(samples: np.ndarray, sample_rate: int, params: FeatureParams | None = None) -> np.ndarray:
    """The baseline's log-mel of a clip: (T, n_mels) float32, after downmix and resampling to params.sample_rate.

    Taught in notebook 02, section 2 (first used in notebook 00, section 4).
    """
    params = params or FeatureParams()
    mono = resample(to_mono(samples), sample_rate, params.sample_rate)
    # One BLAS thread: the result no longer depends on the machine's thread count (summation order),
    # and it is never slower: on 2 cores, 2 BLAS threads ran as fast when the machine was quiet and 4-6x
    # slower when other programs were busy (benchmarks/bench_features.py), since they then compete for cores.
    with BLAS.limit(limits=1, user_api="blas"):
        mel = librosa.feature.melspectrogram(
            y=mono, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length,
            window="hann", center=True, pad_mode="constant", power=2.0,
            n_mels=params.n_mels, fmin=0.0, fmax=params.fmax, htk=False, norm="slaney",
        )
    # A float32 offset keeps the sum and the log in float32, as under the baseline's NumPy 1.23.
    return np.log(mel + np.float32(params.log_offset)).T.astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a sound file as mono float32 at sample_rate (soundfile reads it, as librosa.load does).

    Taught in notebook 02 (its opening cell, before section 1); first used in notebook 00, section 5.
    """
    data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("the file holds no audio samples")
    return resample(to_mono(data.T), file_rate, sample_rate)


class TorchLogMel(torch.nn.Module):
    """The same log-mel with torch.stft, for batches on a GPU: (N,) -> (T, n_mels), (B, N) -> (B, T, n_mels).

    Taught in notebook 02, section 8.
    """

    def __init__(self, params: FeatureParams | None = None):
        super().__init__()
        self.params = params or FeatureParams()
        p = self.params
        # librosa's window: a periodic Hann of win_length, zero-padded on both sides to n_fft.
        window = torch.hann_window(p.win_length, periodic=True, dtype=torch.float64)
        left = (p.n_fft - p.win_length) // 2
        window = torch.nn.functional.pad(window, (left, p.n_fft - p.win_length - left))
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filter_bank(p)), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        p = self.params
        batch = waveform if waveform.dim() == 2 else waveform.unsqueeze(0)
        spectrum = torch.stft(
            batch.float(), n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.n_fft, window=self.window,
            center=True, pad_mode="constant", return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()  # (B, n_fft // 2 + 1, T)
        mel = torch.matmul(self.mel_basis, power)  # (B, n_mels, T)
        log_mels = torch.log(mel + p.log_offset).transpose(1, 2)
        return log_mels if waveform.dim() == 2 else log_mels[0]


# --- HDF5 storage ----------------------------------------------------------------------------


def features_path(cfg: Config, split: str) -> Path:
    return cfg.prepared_dir / f"{split}_audio_logmels.hdf5"


def skipped_path(cfg: Config, split: str) -> Path:
    return cfg.prepared_dir / f"{split}_skipped.json"


def load_log_mel(h5_path: str | Path, fid: str) -> np.ndarray:
    """One clip's (T, n_mels) log-mel from a split's HDF5 file, refused when its values cannot be a log-mel.

    Taught in notebook 02, section 7.
    """
    with h5py.File(h5_path, "r") as h5:
        if fid not in h5:
            raise KeyError(f"No log-mel for fid {fid!r} in {h5_path}. {REBUILD_FEATURES}")
        return check_log_mel(h5[fid][()], fid, h5_path)


def check_log_mel(values: np.ndarray, fid: str, h5_path: str | Path) -> np.ndarray:
    """Refuse NaN, infinite or absurd values (damaged bytes in the file), naming the clip and the file."""
    # log(mel + eps) lies between log(eps), about -36, and a few tens even for full-scale noise.
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > LOG_MEL_LIMIT:
        raise FeatureExtractionError(
            f"The log-mel of clip {fid!r} in {h5_path} holds NaN, infinite or impossible values "
            f"(beyond +-{LOG_MEL_LIMIT:g}): the file is damaged. Delete it; {REBUILD_FEATURES}"
        )
    return values


def clip_files(cfg: Config, split: str) -> dict[str, Path]:
    """{fid: wav path} for a split, from its caption table (one row per caption, so fids repeat)."""
    pairs = load_caption_table(cfg, split)[["fid", "fname"]].drop_duplicates()
    clashes = pairs[pairs["fid"].duplicated()]["fid"].tolist()
    if clashes:
        raise ValueError(f"{split}_text.csv maps fids {clashes[:5]} to several files. Rebuild the caption tables.")
    if pairs["fid"].str.contains("/").any():
        raise ValueError(f"{split}_text.csv has fids with '/', which HDF5 would read as groups. Rebuild the caption tables.")
    return {str(fid): cfg.dataset_dir / split / fname for fid, fname in zip(pairs["fid"], pairs["fname"], strict=True)}


def invalid_reason(h5_path: Path, files: dict[str, Path], params: FeatureParams, skipped: Iterable[str] = ()) -> str | None:
    """Why an existing HDF5 file cannot be reused for these {fid: wav} files, or None when it can."""
    if not h5_path.is_file():
        return "missing"
    try:
        with h5py.File(h5_path, "r") as h5:
            if dict(h5.attrs) != params.attrs():
                return "built with other feature parameters"
            stored, expected = set(h5.keys()), set(files) - set(skipped)
            if stored != expected:
                return f"{len(expected - stored)} clips missing, {len(stored - expected)} clips not in the caption table"
            for fid in stored:
                data = h5[fid]
                if data.ndim != 2 or data.shape[1] != params.n_mels or data.shape[0] < 1 or data.dtype != np.float32:
                    return f"clip {fid!r} has shape {data.shape} {data.dtype}, not (T, {params.n_mels}) float32"
                if data.attrs.get("source") != source_fingerprint(files[fid]):
                    return f"the wav of clip {fid!r} ({files[fid].name!r}) changed since it was built"
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def source_fingerprint(path: Path, block: int = 4096, blocks: int = 8) -> str:
    """Size plus a hash of the header and a few blocks spread over the file: changes when the audio does, whatever its dates.

    Modification times are not enough: a copy (``cp -p``, a synced folder) can bring another clip with an older date.
    """
    try:
        size = path.stat().st_size
        digest = hashlib.blake2b(digest_size=12)
        with open(path, "rb") as handle:
            for offset in sorted({0, *(size * k // blocks for k in range(1, blocks)), max(size - block, 0)}):
                handle.seek(offset)
                digest.update(handle.read(block))
    except OSError:
        return "unreadable"
    return f"{size}:{digest.hexdigest()}"


def extract_clip(job: tuple[str, str, FeatureParams]) -> tuple[str, np.ndarray | None, str | None]:
    """Worker: (fid, wav path, params) -> (fid, log-mel, None) or (fid, None, error message)."""
    fid, path, params = job
    try:
        return fid, log_mel(load_audio(path, params.sample_rate), params.sample_rate, params), None
    except Exception as exc:  # every failure is reported by name below, none is swallowed
        return fid, None, f"{type(exc).__name__}: {exc}"


def extract_all(jobs: list[tuple[str, str, FeatureParams]], workers: int | None, desc: str) -> Iterator[tuple]:
    """Run extract_clip over the jobs, in order, on `workers` processes (None: one below PARALLEL_FROM_CLIPS clips)."""
    workers = workers or default_workers(len(jobs), at_least=PARALLEL_FROM_CLIPS)
    # Workers import librosa's feature code before their first clip (about a second), not once a clip.
    results = map_in_processes(extract_clip, jobs, workers, preload=["course_lib.features", "librosa.feature.spectral"])
    yield from tqdm(results, total=len(jobs), desc=desc, unit="clip")


def build_split(
    cfg: Config, split: str, files: dict[str, Path], params: FeatureParams, workers: int | None, skip_bad: bool
) -> Path:
    """Extract every clip of a split into a temporary HDF5 file, then move it into place."""
    target = features_path(cfg, split)
    for leftover in remove_stale(target.parent, target.name):  # a run killed before it could clean up
        print(f"{split}: removed {leftover.name}, left by an interrupted run")
    jobs = [(fid, str(path), params) for fid, path in files.items()]
    bad: list[dict[str, str]] = []
    # float32 log-mels take about 15 % of 16-bit 44.1 kHz wav bytes (50 frames x 64 x 4 B a second against 88.2 kB).
    needed = int(0.15 * sum(path.stat().st_size for path in files.values() if path.is_file()))
    with atomic_path(target, needed_bytes=needed) as temporary:  # removed again if anything below fails
        with h5py.File(temporary, "w") as h5:
            h5.attrs.update(params.attrs())
            for fid, features, error in extract_all(jobs, workers, desc=f"log-mels {split}"):
                if error is None:
                    h5.create_dataset(fid, data=features).attrs["source"] = source_fingerprint(files[fid])
                else:
                    bad.append({"fid": fid, "fname": files[fid].name, "error": error})
        if bad and (not skip_bad or len(bad) == len(jobs)):
            raise FeatureExtractionError(bad_files_message(split, bad, len(jobs), skip_bad))
    if bad:
        write_json_atomically(skipped_path(cfg, split), bad)
        print(f"{split}: skipped {len(bad)} unreadable files (listed in {skipped_path(cfg, split)}):")
        for item in bad:
            print(f"  {item['fname']!r}: {item['error']}")
    else:
        skipped_path(cfg, split).unlink(missing_ok=True)
    return target


def bad_files_message(split: str, bad: list[dict[str, str]], total: int, skip_bad: bool) -> str:
    lines = [f"{len(bad)} of {total} {split} wav files could not be read; no HDF5 file was written:"]
    lines += [f"  {item['fname']!r} (fid {item['fid']}): {item['error']}" for item in bad]
    if skip_bad:
        lines.append("Every file failed: check cfg.dataset_dir and rebuild it with course_lib.pipeline.prepare(cfg).")
    else:
        lines.append("Replace or re-download these files, or call ensure_features(cfg, skip_bad=True) to leave them out "
                     f"(the skipped files are then listed in {split}_skipped.json).")
    return "\n".join(lines)


def read_skipped(cfg: Config, split: str) -> list[str]:
    """fids a previous skip_bad=True build left out of a split."""
    try:
        return [item["fid"] for item in json.loads(skipped_path(cfg, split).read_text(encoding="utf-8"))]
    except (OSError, ValueError, KeyError, TypeError):  # no list (or a damaged one): nothing counts as skipped
        return []


def ensure_features(cfg: Config, workers: int | None = None, skip_bad: bool = False, verbose: bool = True) -> dict[str, Path]:
    """Build (or reuse when valid) {split}_audio_logmels.hdf5 for every split; returns {split: path}.

    Taught in notebook 02, section 7. Reads the caption tables (``prepare(cfg, until="captions")`` writes them).
    workers: processes extracting features (None: one for a split under PARALLEL_FROM_CLIPS clips, else every core).
    """
    cfg.prepared_dir.mkdir(parents=True, exist_ok=True)
    params = FeatureParams.from_config(cfg)
    paths = {}
    for split in cfg.splits:
        files = clip_files(cfg, split)
        target = features_path(cfg, split)
        with building(target):  # another run building the same file: wait for it, then reuse its work
            reason = invalid_reason(target, files, params, skipped=read_skipped(cfg, split))
            if reason is None:
                skipped = len(read_skipped(cfg, split))
                note = f", {skipped} skipped: delete {skipped_path(cfg, split).name} to retry them" if skipped else ""
                say(verbose, f"{split}: reusing {target} ({len(files) - skipped} clips{note})")
            else:
                say(verbose, f"{split}: building {target} ({reason})")
                start = time.perf_counter()
                build_split(cfg, split, files, params, workers, skip_bad)
                written = len(files) - len(read_skipped(cfg, split))
                say(verbose, f"{split}: wrote {written} clips in {time.perf_counter() - start:.1f} s")
        paths[split] = target
    return paths
