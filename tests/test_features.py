"""course_lib.features: the baseline's log-mels, the torch twin, and the HDF5 files per split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from course_lib import clotho, features, files
from course_lib._pool import default_workers
from course_lib.clotho import load_caption_table
from course_lib.config import load_config
from course_lib.features import (
    PARALLEL_FROM_CLIPS,
    FeatureExtractionError,
    FeatureParams,
    TorchLogMel,
    ensure_features,
    frame_count,
    load_audio,
    load_log_mel,
    log_mel,
)

SR = 44_100
LOG_EPS = float(np.log(np.spacing(1)))  # about -36.04


def test_log_eps_value():
    assert LOG_EPS == pytest.approx(-36.0437, abs=1e-4)


def real_ish_clip(seconds: float, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    """Noise bursts, a tone that stops, a chirp and a stretch of digital silence."""
    rng = np.random.default_rng(seed)
    times = np.arange(round(seconds * sample_rate)) / sample_rate
    noise = 0.1 * rng.standard_normal(times.size) * np.exp(-(((times % 1.5) - 0.4) ** 2) / 0.02)
    tone = 0.3 * np.sin(2 * np.pi * 440 * times) * (times < seconds / 2)
    chirp = 0.05 * np.sin(2 * np.pi * (200 + 1500 * times) * times)
    clip = (noise + tone + chirp).astype(np.float32)
    clip[int(0.7 * clip.size) : int(0.8 * clip.size)] = 0.0
    return clip


def direct_librosa_log_mel(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """The baseline's recipe written out with numbers, independently of course_lib."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=sample_rate, n_fft=2048, hop_length=882, win_length=1764, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=64, fmin=0.0, fmax=22050.0, htk=False, norm="slaney",
    )
    return np.log(mel + np.spacing(1)).T


# --- parameters and single clips -----------------------------------------------------------


def test_frame_parameters_at_44_1_and_48_khz():
    at_44 = FeatureParams()
    assert (at_44.win_length, at_44.hop_length, at_44.n_fft, at_44.fmax) == (1764, 882, 2048, 22050.0)
    at_48 = FeatureParams(sample_rate=48_000)  # what the baseline would use for its 48 kHz example.wav
    assert (at_48.win_length, at_48.hop_length, at_48.n_fft, at_48.fmax) == (1920, 960, 2048, 24000.0)
    assert FeatureParams(sample_rate=16_000).n_fft == 1024  # 640 samples -> next power of two


def test_params_come_from_the_config(tmp_path):
    cfg = load_config(data_root=tmp_path)
    assert FeatureParams.from_config(cfg) == FeatureParams()
    assert FeatureParams.from_config(cfg).log_offset == np.spacing(1)


def test_fifteen_seconds_give_751_frames_of_64_float32():
    features = log_mel(real_ish_clip(15.0), SR)
    assert features.shape == (751, 64)
    assert features.dtype == np.float32
    assert frame_count(30 * SR, 882) == 1501


def test_values_equal_a_direct_librosa_computation():
    clip = real_ish_clip(3.0)
    ours, direct = log_mel(clip, SR), direct_librosa_log_mel(clip, SR)
    assert direct.dtype == np.float64  # NumPy 2 upcasts: the reason log_mel casts explicitly
    # ours adds the offset and takes the log in float32 (as NumPy 1.23 did); the direct one in float64.
    np.testing.assert_allclose(ours, direct, rtol=1e-6, atol=1e-5)


def test_silence_gives_log_of_machine_epsilon():
    features = log_mel(np.zeros(SR, dtype=np.float32), SR)
    assert features.shape == (51, 64)
    np.testing.assert_allclose(features, LOG_EPS, atol=1e-5)


def test_other_sample_rates_are_resampled_to_44_1_khz_first():
    seconds = 2.0
    times_48 = np.arange(round(seconds * 48_000)) / 48_000
    tone_48 = (0.3 * np.sin(2 * np.pi * 10_000 * times_48)).astype(np.float32)
    times_44 = np.arange(round(seconds * SR)) / SR
    tone_44 = (0.3 * np.sin(2 * np.pi * 10_000 * times_44)).astype(np.float32)

    ours = log_mel(tone_48, 48_000)
    resampled = librosa.resample(tone_48, orig_sr=48_000, target_sr=SR, res_type="soxr_hq")
    np.testing.assert_array_equal(ours, log_mel(resampled, SR))
    assert ours.shape == log_mel(tone_44, SR).shape == (101, 64)
    # Same filter bank as a native 44.1 kHz clip: the 10 kHz tone lands in the same mel band.
    middle = slice(10, 90)
    assert np.argmax(ours[middle].mean(0)) == np.argmax(log_mel(tone_44, SR)[middle].mean(0))
    # The baseline's native-rate features (fmax 24 kHz) put it in a lower band: what resampling avoids.
    native = log_mel(tone_48, 48_000, FeatureParams(sample_rate=48_000))
    assert np.argmax(native[middle].mean(0)) < np.argmax(ours[middle].mean(0))


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path):
    left, right = real_ish_clip(1.0, seed=1), real_ish_clip(1.0, seed=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    mono = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(log_mel(np.stack([left, right]), SR), log_mel((left + right) / 2, SR))
    with pytest.raises(ValueError, match="channels"):
        log_mel(np.stack([left, right], axis=1), SR)  # soundfile's (N, channels) layout is refused, not misread


def test_load_audio_resamples_a_48_khz_file(tmp_path):
    path = tmp_path / "at48k.wav"
    sf.write(path, real_ish_clip(1.0, sample_rate=48_000), 48_000, subtype="PCM_16")
    assert load_audio(path).shape == (SR,)


# --- the torch twin ------------------------------------------------------------------------


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_torch_log_mel_matches_librosa(device):
    clip = real_ish_clip(5.0)
    reference = log_mel(clip, SR)
    ours = TorchLogMel().to(device)(torch.from_numpy(clip).to(device)).cpu().numpy()
    assert ours.shape == reference.shape and ours.dtype == np.float32
    # Both compute in float32 with different FFTs, whose rounding errors are about 1e-7 of a frame's
    # loudest bins. After the log that is tiny for loud bands but large for bands near the epsilon
    # floor (up to about 4 here, at the edges of the silent stretch). So the log values are compared
    # where a band holds at least 1e-8 of the clip's peak energy (measured: at most 1.2e-4 apart, so
    # atol 1e-3 leaves a margin), and the energies everywhere, relative to that peak (measured 5e-7).
    energy, energy_torch = np.exp(reference.astype(np.float64)), np.exp(ours.astype(np.float64))
    audible = energy > 1e-8 * energy.max()
    assert audible.mean() > 0.4
    np.testing.assert_allclose(ours[audible], reference[audible], atol=1e-3)
    assert np.abs(energy_torch - energy).max() <= 1e-5 * energy.max()
    silent = slice(178, 198)  # frames inside the zeroed stretch (70-80 % of 5 s)
    np.testing.assert_allclose(ours[silent], LOG_EPS, atol=1e-4)


def test_torch_log_mel_shapes_for_batches_and_single_clips():
    module = TorchLogMel()
    batch = torch.from_numpy(np.stack([real_ish_clip(1.0, seed=s) for s in range(3)]))
    out = module(batch)
    assert out.shape == (3, 51, 64)
    torch.testing.assert_close(module(batch[1]), out[1])


# --- HDF5 files per split ------------------------------------------------------------------

# Clotho-like names: a leading space, non-ASCII letters; one stereo 48 kHz clip among 44.1 kHz mono ones.
CLIPS = {
    "development": [(" Ambience Birds.wav", 1.0), ("café terrasse à Paris.wav", 0.6), ("dog barking.wav", 0.8)],
    "validation": [(" e ieio ieai.wav", 0.7), ("rain.wav", 0.5)],
    "evaluation": [("wind ümlaut.wav", 0.5), ("stereo 48k.wav", 0.9)],
}


def write_tiny_clotho(dataset_dir: Path) -> None:
    """A Clotho-format folder: captions CSV per split and its wav files."""
    for split, clips in CLIPS.items():
        (dataset_dir / split).mkdir(parents=True, exist_ok=True)
        with open(dataset_dir / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", *(f"caption_{n}" for n in range(1, 6))])
            for number, (fname, seconds) in enumerate(clips):
                writer.writerow([fname, *(f"caption {n} of a sound" for n in range(1, 6))])
                clip = real_ish_clip(seconds, seed=number)
                if "48k" in fname:
                    clip = np.stack([real_ish_clip(seconds, 48_000, 1), real_ish_clip(seconds, 48_000, 2)], axis=1)
                sf.write(dataset_dir / split / fname, clip, 48_000 if "48k" in fname else SR, subtype="PCM_16")


@pytest.fixture
def cfg(tmp_path):
    """A synthetic-profile config over the tiny folder above, with its caption tables."""
    cfg = load_config("synthetic", data_root=tmp_path)
    write_tiny_clotho(cfg.dataset_dir)
    clotho.ensure_caption_tables(cfg, progress=False, verbose=False)
    return cfg


def fid_of(cfg, split: str, fname: str) -> str:
    table = load_caption_table(cfg, split)
    return table.loc[table["fname"] == fname, "fid"].iloc[0]


def test_one_flat_file_per_split_with_a_dataset_per_fid(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    assert "development: building" in capsys.readouterr().out
    assert paths == {split: cfg.prepared_dir / f"{split}_audio_logmels.hdf5" for split in cfg.splits}
    for split, clips in CLIPS.items():
        table = load_caption_table(cfg, split)
        with h5py.File(paths[split], "r") as h5:
            assert sorted(h5.keys()) == sorted(table["fid"].unique())
            assert all(isinstance(h5[fid], h5py.Dataset) for fid in h5)  # flat: no groups
            assert h5.attrs["n_fft"] == 2048 and h5.attrs["sample_rate"] == SR
        for fname, seconds in clips:
            fid = fid_of(cfg, split, fname)
            stored = load_log_mel(paths[split], fid)
            assert stored.shape == (frame_count(round(seconds * SR), 882), 64) and stored.dtype == np.float32
            np.testing.assert_array_equal(stored, log_mel(load_audio(cfg.dataset_dir / split / fname), SR))
    with pytest.raises(KeyError, match="no-such-fid"):
        load_log_mel(paths["development"], "no-such-fid")


def test_a_valid_file_is_reused_untouched(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    before = {split: path.stat().st_mtime_ns for split, path in paths.items()}
    capsys.readouterr()
    assert ensure_features(cfg, workers=1) == paths
    assert {split: path.stat().st_mtime_ns for split, path in paths.items()} == before
    assert capsys.readouterr().out.count("reusing") == len(cfg.splits)


def test_a_file_missing_a_fid_with_other_parameters_or_extra_fids_is_rebuilt(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    fid = fid_of(cfg, "development", "dog barking.wav")
    expected = load_log_mel(paths["development"], fid)
    with h5py.File(paths["development"], "a") as h5:
        del h5[fid]
    with h5py.File(paths["validation"], "a") as h5:
        h5.attrs["hop_seconds"] = 0.01
    with h5py.File(paths["evaluation"], "a") as h5:
        h5.create_dataset("stale-fid", data=np.zeros((5, 64), dtype=np.float32))
    capsys.readouterr()
    ensure_features(cfg, workers=1)
    out = capsys.readouterr().out
    assert "development: building" in out and "1 clips missing" in out
    assert "validation: building" in out and "other feature parameters" in out
    assert "evaluation: building" in out and "1 clips not in the caption table" in out
    np.testing.assert_array_equal(load_log_mel(paths["development"], fid), expected)
    with h5py.File(paths["validation"], "r") as h5:
        assert h5.attrs["hop_seconds"] == 0.02
    with h5py.File(paths["evaluation"], "r") as h5:
        assert "stale-fid" not in h5


def test_a_wav_replaced_by_another_with_an_older_date_is_rebuilt(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    untouched = paths["evaluation"].stat().st_mtime_ns
    wav = cfg.dataset_dir / "validation" / "rain.wav"
    old_date = wav.stat().st_mtime - 3600
    samples, rate = sf.read(wav, dtype="float32")
    sf.write(wav, samples[::-1] * 0.5, rate, subtype="PCM_16")  # another clip of the same length
    os.utime(wav, (old_date, old_date))  # as `cp -p` from an older copy would leave it
    capsys.readouterr()
    ensure_features(cfg, workers=1)
    out = capsys.readouterr().out
    assert "validation: building" in out and "'rain.wav') changed" in out
    assert "evaluation: reusing" in out and paths["evaluation"].stat().st_mtime_ns == untouched


def test_touching_a_wav_without_changing_it_keeps_the_features(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    before = paths["validation"].stat().st_mtime_ns
    later = paths["validation"].stat().st_mtime + 10
    os.utime(cfg.dataset_dir / "validation" / "rain.wav", (later, later))
    ensure_features(cfg, workers=1)
    assert paths["validation"].stat().st_mtime_ns == before


def test_damaged_values_in_the_file_are_refused_naming_the_clip(cfg):
    paths = ensure_features(cfg, workers=1)
    fid = load_caption_table(cfg, "evaluation")["fid"].iloc[0]
    with h5py.File(paths["evaluation"], "r+") as h5:
        values = h5[fid][()]
        values[3, 5] = 3e38  # what flipped bytes in a float32 can look like
        h5[fid][...] = values
    with pytest.raises(features.FeatureExtractionError, match=rf"clip {fid!r} in .*evaluation_audio_logmels.hdf5.*damaged"):
        features.load_log_mel(paths["evaluation"], fid)
    with h5py.File(paths["evaluation"], "r+") as h5:
        values[3, 5] = np.nan
        h5[fid][...] = values
    with pytest.raises(features.FeatureExtractionError, match="NaN"):
        features.load_log_mel(paths["evaluation"], fid)


def test_a_changed_captions_csv_rebuilds_the_caption_table_and_the_features(cfg, capsys):
    paths = ensure_features(cfg, workers=1)
    csv_path = cfg.dataset_dir / "clotho_captions_validation.csv"
    header, kept, _dropped = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)  # _dropped: rain.wav
    csv_path.write_text(header + kept, encoding="utf-8")
    later = paths["validation"].stat().st_mtime + 10  # newer than the tables, whatever the clock's resolution
    os.utime(csv_path, (later, later))
    capsys.readouterr()
    clotho.ensure_caption_tables(cfg, progress=False)  # the stages in the pipeline's order
    ensure_features(cfg, workers=1)
    out = capsys.readouterr().out
    assert "built ['validation']" in out
    assert "validation: building" in out and "1 clips not in the caption table" in out
    assert list(load_caption_table(cfg, "validation")["fname"].unique()) == [" e ieio ieai.wav"]
    with h5py.File(paths["validation"], "r") as h5:
        assert list(h5.keys()) == [fid_of(cfg, "validation", " e ieio ieai.wav")]


def temporaries(cfg) -> list[str]:
    """Files in the prepared folder that are not finished artifacts (atomic_path's temporary names; lock files stay)."""
    return sorted(path.name for path in cfg.prepared_dir.iterdir() if path.name.startswith(".") and path.suffix != ".lock")


def test_a_temporary_left_by_a_killed_run_is_removed(cfg, capsys):
    leftover = cfg.prepared_dir / ".development_audio_logmels.hdf5.999999.partial"  # what a hard kill leaves behind
    leftover.write_bytes(b"half an HDF5 file")
    ensure_features(cfg, workers=1)
    assert "removed .development_audio_logmels.hdf5.999999.partial" in capsys.readouterr().out
    assert temporaries(cfg) == []


def test_a_build_that_fails_midway_leaves_no_temporary_and_no_file(cfg, monkeypatch):
    extract_clip, calls = features.extract_clip, []

    def fail_on_the_second_clip(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a split
        return extract_clip(job)

    monkeypatch.setattr(features, "extract_clip", fail_on_the_second_clip)
    with pytest.raises(KeyboardInterrupt):
        ensure_features(cfg, workers=1)
    assert len(calls) == 2
    assert temporaries(cfg) == []
    assert not (cfg.prepared_dir / "development_audio_logmels.hdf5").exists()


def test_small_splits_use_one_process_by_default():
    assert default_workers(PARALLEL_FROM_CLIPS - 1, at_least=PARALLEL_FROM_CLIPS) == 1
    assert default_workers(PARALLEL_FROM_CLIPS, at_least=PARALLEL_FROM_CLIPS) == min(len(os.sched_getaffinity(0)), 8)


def test_a_corrupt_file_is_rebuilt(cfg):
    paths = ensure_features(cfg, workers=1)
    paths["evaluation"].write_bytes(b"not an HDF5 file")
    ensure_features(cfg, workers=1)
    with h5py.File(paths["evaluation"], "r") as h5:
        assert len(h5.keys()) == len(CLIPS["evaluation"])


def corrupt_two_wavs(cfg) -> list[str]:
    """Build the caption tables, then break two development wavs (garbage, and a truncated header)."""
    clotho.ensure_caption_tables(cfg, progress=False)
    names = ["café terrasse à Paris.wav", " Ambience Birds.wav"]
    (cfg.dataset_dir / "development" / names[0]).write_bytes(b"RIFF this is not audio at all" * 10)
    wav = cfg.dataset_dir / "development" / names[1]
    wav.write_bytes(wav.read_bytes()[:20])
    return names


def test_unreadable_wavs_fail_naming_every_one_and_leave_nothing(cfg):
    names = corrupt_two_wavs(cfg)
    with pytest.raises(FeatureExtractionError) as error:
        ensure_features(cfg, workers=1)
    message = str(error.value)
    assert all(repr(name) in message for name in names)
    assert "2 of 3 development" in message and "skip_bad=True" in message
    assert not list(cfg.prepared_dir.glob("*logmels.hdf5")) and temporaries(cfg) == []


def test_skip_bad_saves_the_skipped_list_and_is_reused(cfg, capsys):
    names = corrupt_two_wavs(cfg)
    paths = ensure_features(cfg, workers=1, skip_bad=True)
    skipped = json.loads((cfg.prepared_dir / "development_skipped.json").read_text(encoding="utf-8"))
    assert sorted(item["fname"] for item in skipped) == sorted(names)
    assert all(item["error"] for item in skipped)
    with h5py.File(paths["development"], "r") as h5:
        assert list(h5.keys()) == [fid_of(cfg, "development", "dog barking.wav")]
    assert "skipped 2 unreadable files" in capsys.readouterr().out
    before = paths["development"].stat().st_mtime_ns
    ensure_features(cfg, workers=1)  # a later plain call accepts the learner's earlier choice
    assert paths["development"].stat().st_mtime_ns == before
    assert "2 skipped" in capsys.readouterr().out
    assert not (cfg.prepared_dir / "validation_skipped.json").exists()


def test_several_workers_give_the_same_features_as_one(cfg, tmp_path):
    one = ensure_features(cfg, workers=1)
    copies = {split: tmp_path / f"one_{split}.hdf5" for split in one}
    for split, path in one.items():
        os.replace(path, copies[split])
    many = ensure_features(cfg, workers=2)
    for split in one:
        with h5py.File(copies[split], "r") as first, h5py.File(many[split], "r") as second:
            assert sorted(first.keys()) == sorted(second.keys())
            for fid in first:
                np.testing.assert_array_equal(first[fid][()], second[fid][()])


def test_two_runs_on_one_data_root_wait_for_each_other_and_keep_each_others_files(cfg):
    """A second process (another notebook, make course) waits for the lock and never sweeps a live run's temporary."""
    target = features.features_path(cfg, "development")
    live_temporary = files.temporary_path(target)  # what this (running) process is writing
    script = (
        "from course_lib.config import load_config\nfrom course_lib.features import ensure_features\n"
        f"ensure_features(load_config('synthetic', data_root={str(cfg.data_root)!r}), workers=1)\n"
    )
    with files.building(target):
        live_temporary.write_bytes(b"being written by a live process")
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first_line = other.stdout.readline()
        assert "Another run is building" in first_line and target.name in first_line
        assert other.poll() is None, "the other run waits while this one holds the lock"
    out = first_line + other.stdout.read()
    assert other.wait(timeout=120) == 0, out
    assert "development: building" in out and live_temporary.read_bytes() == b"being written by a live process"
    assert features.invalid_reason(target, features.clip_files(cfg, "development"), FeatureParams()) is None
