"""course_lib.synth: the synthetic dataset has Clotho's layout, formats and quirks, true captions, and is reproducible."""

from __future__ import annotations

import csv
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from course_lib import synth
from course_lib.config import BASELINE_YAML, ConfigError, load_config
from course_lib.files import DiskFullError
from course_lib.synth import (
    MARKER,
    SHARED_NAME,
    NotOurFolderError,
    ensure_synthetic_dataset,
    event_catalogue,
    generate_dataset,
)
from course_lib.synth_captions import describe_scene
from course_lib.synth_scenes import EVENT_TYPES, SAMPLE_RATE, Event, render_event, sample_scene

TINY = {"clips": {"development": 4, "validation": 3, "evaluation": 2}, "min_seconds": 1.0, "max_seconds": 1.5}
CAPTION_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
METADATA_HEADER = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "Clotho", seed=3, workers=1, progress=False, **TINY)


def read_rows(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.reader(f))


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_matches_clotho(tiny):
    for split, n_clips in TINY["clips"].items():
        captions = read_rows(tiny / f"clotho_captions_{split}.csv")
        metadata = read_rows(tiny / f"clotho_metadata_{split}.csv", encoding="iso-8859-1")
        assert captions[0] == CAPTION_HEADER
        assert metadata[0] == METADATA_HEADER
        names = [row[0] for row in captions[1:]]
        assert len(names) == n_clips == len(set(n.casefold() for n in names))
        assert [row[0] for row in metadata[1:]] == names
        assert sorted(p.name for p in (tiny / split).glob("*.wav")) == sorted(names)
    assert (tiny / MARKER).is_file()


def test_audio_is_44k1_mono_pcm16_within_durations(tiny):
    wavs = list(tiny.rglob("*.wav"))
    assert len(wavs) == sum(TINY["clips"].values())
    for wav in wavs:
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
        assert TINY["min_seconds"] - 0.01 <= info.duration <= TINY["max_seconds"] + 0.01
        samples, _ = sf.read(wav)
        assert np.abs(samples).max() > 0.01, f"{wav.name} is silent"


def test_five_distinct_captions_of_8_to_20_words(tiny):
    for split in TINY["clips"]:
        for row in read_rows(tiny / f"clotho_captions_{split}.csv")[1:]:
            captions = row[1:]
            assert len(captions) == 5 and all(captions)
            assert len({c.rstrip(".").lower() for c in captions}) == 5
            for caption in captions:
                assert 8 <= len(caption.split()) <= 20, caption
                assert caption[0].isupper() and "'" not in caption


def test_metadata_looks_like_freesound(tiny):
    for row in read_rows(tiny / "clotho_metadata_development.csv", encoding="iso-8859-1")[1:]:
        file_name, keywords, sound_id, link, start_end, user, license_url = row
        assert ";" in keywords and sound_id.isdigit()
        assert link == f"https://freesound.org/people/{user}/sounds/{sound_id}/"
        start, end = (int(v) for v in start_end.strip("[]").split(","))
        assert end - start == sf.info(tiny / "development" / file_name).frames
        assert license_url.startswith("http://creativecommons.org/")


def test_clotho_quirks_are_present(tiny):
    development = [r[0] for r in read_rows(tiny / "clotho_captions_development.csv")[1:]]
    validation = [r[0] for r in read_rows(tiny / "clotho_captions_validation.csv")[1:]]
    assert any(name.startswith(" ") for name in development)
    assert any(name.startswith(" ") for name in validation)
    non_ascii = [name for name in development if not name.isascii()]
    assert non_ascii and all(name.encode("latin-1") for name in non_ascii)
    assert SHARED_NAME in development and SHARED_NAME in validation
    shared_audio = [(tiny / split / SHARED_NAME).read_bytes() for split in ("development", "validation")]
    assert shared_audio[0] != shared_audio[1]
    raw = (tiny / "clotho_metadata_development.csv").read_bytes()
    assert non_ascii[0].encode("latin-1") in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert (tiny / "clotho_captions_development.csv").read_bytes().decode("utf-8")


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    again = generate_dataset(tmp_path / "again", seed=3, workers=2, progress=False, **TINY)
    assert all_files(again) == all_files(tiny)
    other = generate_dataset(tmp_path / "other", seed=4, workers=1, progress=False, **TINY)
    assert all_files(other)["clotho_captions_development.csv"] != all_files(tiny)["clotho_captions_development.csv"]


def test_progress_moves_clip_by_clip_in_one_process(tmp_path, monkeypatch):
    updates = []

    class RecordingBar:
        def __init__(self, total: int, **options):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int = 1):
            updates.append(n)

    monkeypatch.setattr(synth, "tqdm", RecordingBar)
    generate_dataset(tmp_path / "bar", seed=3, workers=1, **TINY)
    assert updates == [1] * sum(TINY["clips"].values())


def small_config(tmp_path: Path, seed: int = 0):
    """A config whose synthetic profile makes a tiny dataset (a copy of baseline.yaml with other sizes)."""
    settings = yaml.safe_load(BASELINE_YAML.read_text(encoding="utf-8"))
    settings["profiles"]["synthetic"]["synth"] = {"seed": seed, **TINY}
    path = tmp_path / f"tiny_{seed}.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return load_config("synthetic", data_root=tmp_path / "data", yaml_path=path)


def test_ensure_reuses_a_complete_dataset_and_rebuilds_a_damaged_one(tmp_path, capsys):
    cfg = small_config(tmp_path)
    stale = cfg.dataset_dir.with_name(f".{cfg.dataset_dir.name}.partial-999999999")  # left by a dead process
    stale.mkdir(parents=True)
    assert ensure_synthetic_dataset(cfg) == cfg.dataset_dir
    assert "does not exist" in capsys.readouterr().out and not stale.exists()
    original = all_files(cfg.dataset_dir)

    ensure_synthetic_dataset(cfg)
    assert "Reusing synthetic dataset at" in capsys.readouterr().out

    damages = [
        lambda d: next((d / "validation").glob("*.wav")).unlink(),
        lambda d: (d / "clotho_captions_evaluation.csv").write_text("file_name\n", encoding="utf-8"),
        lambda d: (d / "evaluation" / "extra.wav").write_bytes(b""),
    ]
    for damage in damages:
        damage(cfg.dataset_dir)
        ensure_synthetic_dataset(cfg)
        assert "needs generating" in capsys.readouterr().out
        assert all_files(cfg.dataset_dir) == original

    ensure_synthetic_dataset(small_config(tmp_path, seed=1))
    assert "other parameters" in capsys.readouterr().out
    assert not list(cfg.dataset_dir.parent.glob(".Clotho.*[!k]")), "temporary folders were left behind"  # .lock stays

    (cfg.dataset_dir / MARKER).unlink()  # without its marker the folder is no longer provably ours: left alone
    before = all_files(cfg.dataset_dir)
    with pytest.raises(NotOurFolderError, match="marker file was lost, delete the folder yourself"):
        ensure_synthetic_dataset(cfg)
    assert all_files(cfg.dataset_dir) == before


def test_clotho_profile_has_no_synthetic_dataset(tmp_path):
    with pytest.raises(ConfigError, match="download_clotho"):
        ensure_synthetic_dataset(load_config("clotho", data_root=tmp_path))


def test_bad_parameters_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="min_seconds"):
        generate_dataset(tmp_path / "x", clips=1, min_seconds=3, max_seconds=2)
    with pytest.raises(ValueError, match="splits"):
        generate_dataset(tmp_path / "x", clips=1, splits=["training"])
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "course_lib.synth", "--out", str(out), "--clips-per-split", "2",
               "--min-seconds", "1", "--max-seconds", "1.2", "--splits", "development", "validation", "--seed", "5"]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Wrote 4 clips" in first.stdout
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["development", "validation"]
    assert len(list(out.rglob("*.wav"))) == 4
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Reusing synthetic dataset" in second.stdout
    bad = subprocess.run([*command, "--min-seconds", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--min-seconds 3 is above --max-seconds 1.2" in bad.stderr


ROOT = Path(__file__).resolve().parents[1]
SMALL_CLI = ["--clips-per-split", "1", "--min-seconds", "1", "--max-seconds", "1.2", "--splits", "development"]


def synth_cli(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "course_lib.synth", *arguments], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_a_folder_the_generator_did_not_make_is_never_replaced(tmp_path):
    home = tmp_path / "my_project"
    home.mkdir()
    (home / "thesis.tex").write_text("two years of work")
    (home / "notes").mkdir()
    (home / "notes" / "ideas.md").write_text("keep me")
    before = all_files(home)
    for out in (".", str(home)):  # `--out .` from inside the folder, and the folder by name
        result = synth_cli("--out", out, *SMALL_CLI, cwd=home)
        assert result.returncode == 2
        assert f"{home} already exists and was not made by the synthetic generator" in result.stderr
        assert "Choose another folder" in result.stderr and "--out" in result.stderr
        assert all_files(home) == before
    a_file = tmp_path / "data.csv"
    a_file.write_text("mine")
    with pytest.raises(NotOurFolderError, match=f"{a_file} is a file or a link"):
        generate_dataset(a_file, clips=1, workers=1, progress=False, **{k: TINY[k] for k in ("min_seconds", "max_seconds")})
    assert a_file.read_text() == "mine"


def test_an_empty_folder_or_our_own_may_be_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, clips=1, splits=["evaluation"], workers=1, progress=False, min_seconds=1, max_seconds=1)
    generate_dataset(empty, clips=1, splits=["evaluation"], seed=2, workers=1, progress=False, min_seconds=1, max_seconds=1)
    assert (empty / MARKER).is_file() and len(list(empty.rglob("*.wav"))) == 1


@pytest.mark.parametrize(("arguments", "message"), [
    (["--clips-per-split", "0"], "--clips-per-split 0: every split needs at least 1 clip"),
    (["--clips-per-split", "-3"], "--clips-per-split -3: every split needs at least 1 clip"),
    (["--min-seconds", "9", "--max-seconds", "3"], "--min-seconds 9 is above --max-seconds 3"),
    (["--min-seconds", "12"], "--min-seconds 12 is above the default scale's max seconds 8"),
    (["--min-seconds", "0"], "--min-seconds 0: durations must be above 0 seconds"),
    (["--workers", "0"], "--workers 0: use at least 1 process"),
])
def test_command_line_names_the_value_typed(tmp_path, arguments, message, capsys):
    with pytest.raises(SystemExit) as stopped:  # in this process: test_command_line checks the exit code of a real one
        synth.main(["--out", str(tmp_path / "out"), *arguments])
    said = capsys.readouterr().err
    assert stopped.value.code == 2 and message in said, said
    assert not (tmp_path / "out").exists()


def test_a_full_disk_during_generation_says_where_and_how_much(tmp_path, monkeypatch):
    written = []
    real_write_bytes = Path.write_bytes

    def fill_the_disk_on_the_third_clip(self, data):
        written.append(self)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_the_disk_on_the_third_clip)
    out = tmp_path / "data" / "Clotho"
    with pytest.raises(DiskFullError) as err:
        generate_dataset(out, clips=2, workers=1, progress=False, min_seconds=1, max_seconds=1)
    message = str(err.value)
    assert "The disk is full" in message and str(out.parent) in message and "it needs about" in message
    assert "are free" in message and "--out" in message
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == [".Clotho.lock"]  # partial dataset removed


def test_too_little_free_space_is_said_before_generating(tmp_path, monkeypatch):
    import shutil

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    with pytest.raises(DiskFullError, match=r"Not enough disk space for 6 synthetic clips in .* needs about .* 1.0 kB are free"):
        generate_dataset(tmp_path / "Clotho", clips=2, workers=1, progress=False, min_seconds=1, max_seconds=1)
    assert not (tmp_path / "Clotho").exists()


def test_two_processes_generating_one_folder_do_not_break_each_other(tmp_path):
    out = tmp_path / "shared" / "Clotho"
    arguments = ["--out", str(out), "--clips-per-split", "3", "--min-seconds", "2", "--max-seconds", "3", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "course_lib.synth", *arguments]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    outs = [out_text for out_text, _ in results]
    assert sum("Wrote 9 clips" in text for text in outs) == 1  # one generated it ...
    assert sum("Reusing synthetic dataset" in text for text in outs) == 1  # ... the other waited, then reused it
    assert len(list(out.rglob("*.wav"))) == 9 and not list(out.parent.glob(".Clotho.*.partial"))


# --- the sounds: attributes really change the audio -------------------------------------------------


def render(name: str, seconds: float = 3.0, **attributes) -> np.ndarray:
    kind = EVENT_TYPES[name]
    defaults = {"position": "middle", "loudness": "loud", "pitch": "high" if kind.pitches_hz else None,
                "rate": "fast" if kind.kind == "hits" or name == "siren" else None, "dynamics": "steady"}
    return render_event(Event(name, **{**defaults, **attributes}), int(seconds * SAMPLE_RATE), np.random.default_rng(7))


def centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    return float((np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE) * power).sum() / power.sum())


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def count_hits(x: np.ndarray) -> int:
    frames = np.abs(x[: len(x) // 220 * 220]).reshape(-1, 220).max(1)  # 5 ms frames
    loud = frames > 0.3 * frames.max()
    return int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])


def test_catalogue_has_at_least_12_event_types():
    catalogue = event_catalogue()
    assert len(catalogue) >= 12 and {row["event"] for row in catalogue} == set(EVENT_TYPES)
    assert all(row["attributes"] and row["named as"] for row in catalogue)


@pytest.mark.parametrize("name", [n for n, k in EVENT_TYPES.items() if k.pitches_hz])
def test_high_pitch_has_higher_spectral_centroid(name):
    assert centroid(render(name, pitch="high")) > centroid(render(name, pitch="low"))


@pytest.mark.parametrize("name", ["siren", "rain", "engine", "dog", "bell"])
def test_fading_and_getting_louder(name):
    thirds = lambda x: (rms(x[int(0.36 * len(x)):int(0.45 * len(x))]), rms(x[int(0.55 * len(x)):int(0.64 * len(x))]))  # noqa: E731
    fading_start, fading_end = thirds(render(name, dynamics="fading", position="middle"))
    louder_start, louder_end = thirds(render(name, dynamics="louder", position="middle"))
    assert fading_end < 0.5 * fading_start and louder_end > 2 * louder_start


@pytest.mark.parametrize("name", ["bell", "wind", "clicking", "whistle"])
def test_position_places_the_event(name):
    at_end, at_start = render(name, position="end"), render(name, position="start")
    third = len(at_end) // 3
    assert rms(at_end[-third:]) > 10 * rms(at_end[:third])
    assert rms(at_start[:third]) > 10 * rms(at_start[-third:])


def test_loud_is_louder_than_quiet_and_fast_repeats_more_than_slow():
    assert rms(render("rain", loudness="loud")) > 3 * rms(render("rain", loudness="quiet"))
    fast, slow, once = (count_hits(render("clicking", rate=rate)) for rate in ("fast", "slow", "once"))
    assert once == 1 and 3 <= slow < fast


def test_captions_say_only_what_is_in_the_scene():
    word_checks = {  # caption words -> what must then be true of some event
        r"\bgetting louder|growing louder|louder and louder|building in volume": lambda e: e.dynamics == "louder",
        r"fading|getting quieter|dying away": lambda e: e.dynamics == "fading",
        r"\bonce\b|a single time|one time": lambda e: e.rate == "once",
        r"high-pitched|\bhigh\b|high tone|high pitch": lambda e: e.pitch == "high",
        r"low-pitched|\blow\b|deep": lambda e: e.pitch == "low",
        r"at the end|near the end|towards the end|finally": lambda e: e.position == "end",
        r"at the start|at the beginning|early on": lambda e: e.position == "start",
        r"the whole time|throughout|all along|continuously|from start to finish": lambda e: e.position == "throughout",
        r"\bloud\b|loudly": lambda e: e.loudness == "loud",
        r"\bsoft|faint|quietly|\bquiet (?!room)": lambda e: e.loudness == "quiet",
    }
    one_after_another = r"\bthen\b|after which|afterwards|\bbefore\b"
    rng = np.random.default_rng(11)
    for _ in range(150):
        scene = sample_scene(rng, 6.0)
        for caption in describe_scene(scene, rng):
            text = caption.lower()
            for name, kind in EVENT_TYPES.items():
                named = any(re.search(rf"\b{noun}\b", text) for _, noun in kind.subjects)
                assert named == (name in {e.name for e in scene.events}), (caption, scene)
            for pattern, holds in word_checks.items():
                if re.search(pattern, text):
                    assert any(holds(e) for e in scene.events), (pattern, caption, scene)
            if re.search(one_after_another, text):
                positions = {e.position for e in scene.events} - {"throughout"}
                assert len(positions) > 1, (caption, scene)  # two events, one after the other
