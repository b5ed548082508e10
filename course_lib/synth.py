"""A synthetic dataset in Clotho v2.1's exact layout, generated in seconds (also a command line tool).

Taught in notebook 00. ``generate_dataset`` writes

    <out>/development/*.wav, validation/*.wav, evaluation/*.wav   44.1 kHz mono 16-bit PCM
    <out>/clotho_captions_{split}.csv    file_name,caption_1..caption_5 (UTF-8)
    <out>/clotho_metadata_{split}.csv    file_name,keywords,sound_id,sound_link,start_end_samples,
                                         manufacturer,license (ISO-8859-1, like Clotho's)
    <out>/.synth.json                    the parameters and every file's size (written last)

with Clotho's quirks on purpose: file names with a leading space, a non-ASCII (Latin-1) file name,
and one file name present in both development and validation. Each clip draws from its own
random generator seeded by (seed, split, clip index), so the same seed gives the same bytes.

    python -m course_lib.synth --help
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from course_lib._pool import default_workers, map_in_processes
from course_lib._report import say
from course_lib.config import BASELINE_YAML, SPLITS, Config, ConfigError, load_config, read_yaml
from course_lib.files import (
    DiskFullError,
    building,
    check_free_space,
    describe_bytes,
    free_bytes,
    is_disk_full,
    owner_is_gone,
    remove_stale,
    replace_folder,
    temporary_path,
)
from course_lib.synth_captions import Content, describe_scene_with_contents, pick
from course_lib.synth_scenes import EVENT_TYPES, SAMPLE_RATE, Scene, event_catalogue, render_scene, sample_scene

__all__ = ["generate_dataset", "ensure_synthetic_dataset", "event_catalogue", "CLOTHO_SCALE", "MARKER"]

MARKER = ".synth.json"
FORMAT_VERSION = 1  # bump when the generator's output changes, so old folders are regenerated
CLOTHO_SCALE = {"clips": {"development": 3839, "validation": 1045, "evaluation": 1045}, "min_seconds": 15.0, "max_seconds": 30.0}
SHARED_NAME = "Field recording w_ Zoom H4n_1-2.wav"  # in development and validation, like Clotho's "City Ambience w_ ..."
QUIRKS = {"development": {0: "leading space", 1: "non-ASCII", 2: "shared"}, "validation": {0: "leading space", 1: "shared"}}
BACKGROUND_TITLES = {"room": ("Room tone", "indoor", "Interior"), "street": ("Street", "city ambience", "Traffic"),
                     "outdoors": ("Outdoor", "field", "Park ambience")}
USERS = ("fieldrec_anna", "klangwerk", "tapeloop77", "soundwalker", "m_okafor_audio", "Lumen_Sounds", "dripdrop", "OrfeoRec")
LICENSES = ("http://creativecommons.org/publicdomain/zero/1.0/", "http://creativecommons.org/licenses/by/3.0/",
            "http://creativecommons.org/licenses/by/4.0/", "http://creativecommons.org/licenses/by-nc/3.0/")
METADATA_COLUMNS = ("file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license")


@dataclass(frozen=True)
class Clip:
    """Everything about one clip except its audio: name, scene, five captions, metadata row, what each caption says."""

    file_name: str
    scene: Scene
    captions: list[str]
    metadata: dict[str, str]
    contents: tuple[Content, ...] = ()  # one a caption (course_lib.synth_captions.paraphrase rewords them)


def default_settings() -> dict:
    """The synthetic profile's ``synth`` settings in course_lib/baseline.yaml (seed, clips, seconds)."""
    return dict(read_yaml(BASELINE_YAML)["profiles"]["synthetic"]["synth"])


def _title(scene: Scene, rng: np.random.Generator) -> str:
    """A Freesound-like title: words from the main event (and background), underscores, a number."""
    word = pick(rng, EVENT_TYPES[scene.events[0].name].titles)
    style = int(rng.integers(4))
    if style == 1:
        word = f"{pick(rng, BACKGROUND_TITLES[scene.background])} {word.lower()}"
    elif style == 2 and len(scene.events) > 1:
        word = f"{word} and {pick(rng, EVENT_TYPES[scene.events[1].name].titles).lower()}"
    elif style == 3:
        word = f"{word} {scene.events[0].pitch or scene.events[0].loudness}"
    if rng.random() < 0.4:
        word = word.replace(" ", "_")
    number = int(rng.integers(1, 40))
    return word + pick(rng, ("", f" {number}", f"_{number:02d}", f"_{number}-{number + 1}", f" {number:03d}"))


def _metadata(file_name: str, scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    """Plausible made-up Freesound metadata in Clotho's columns."""
    keywords = [k for e in scene.events for k in EVENT_TYPES[e.name].keywords[:3]] + [scene.background, "field-recording"]
    sound_id, user = int(rng.integers(10_000, 700_000)), pick(rng, USERS)
    start = int(rng.integers(0, 20 * SAMPLE_RATE))
    return {"file_name": file_name, "keywords": ";".join(dict.fromkeys(keywords)), "sound_id": str(sound_id),
            "sound_link": f"https://freesound.org/people/{user}/sounds/{sound_id}/",
            "start_end_samples": f"[{start}, {start + int(round(scene.seconds * SAMPLE_RATE))}]",
            "manufacturer": user, "license": pick(rng, LICENSES)}


def plan_split(split: str, n_clips: int, seed: int, min_seconds: float, max_seconds: float) -> list[Clip]:
    """Scenes, captions, unique file names and metadata of one split (no audio yet)."""
    clips, used = [], set()
    for index in range(n_clips):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        scene = sample_scene(rng, rng.uniform(min_seconds, max_seconds))
        described = describe_scene_with_contents(scene, rng)
        quirk = QUIRKS.get(split, {}).get(index)
        title = {"leading space": " " + _title(scene, rng), "non-ASCII": "Café terrace " + _title(scene, rng),
                 "shared": SHARED_NAME[:-4]}.get(quirk) or _title(scene, rng)
        name, suffix = title, 2
        while name.casefold() in used:  # case-insensitive: macOS and Windows file systems are
            name, suffix = f"{title}_{suffix}", suffix + 1
        used.add(name.casefold())
        clips.append(Clip(name + ".wav", scene, [caption for caption, _ in described], _metadata(name + ".wav", scene, rng),
                          tuple(content for _, content in described)))
    return clips


def _write_clip(task: tuple[str, Scene, int, int, int]) -> int:
    """Render one clip's audio with its own generator and write it as 16-bit PCM; return its size."""
    path, scene, seed, split_index, index = task
    audio = render_scene(scene, np.random.default_rng([seed, split_index, index, 1]))
    wav = io.BytesIO()  # encoded in memory, so that a full disk is reported by Python as ENOSPC (libsndfile hides it)
    sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    Path(path).write_bytes(wav.getvalue())
    return len(wav.getvalue())


def _wav_bytes(clips: list[Clip]) -> int:
    """What the clips' 16-bit mono wavs take on disk (samples plus a 44-byte header each)."""
    return sum(2 * int(round(clip.scene.seconds * SAMPLE_RATE)) + 44 for clip in clips)


def _write_csvs(folder: Path, split: str, clips: list[Clip]) -> None:
    with open(folder / f"clotho_captions_{split}.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        writer.writerows([clip.file_name, *clip.captions] for clip in clips)
    with open(folder / f"clotho_metadata_{split}.csv", "w", encoding="iso-8859-1", newline="") as f:
        writer = csv.DictWriter(f, METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(clip.metadata for clip in clips)


def _parameters(seed: int, clips: int | dict[str, int] | None, min_seconds: float, max_seconds: float,
                splits: tuple[str, ...] | list[str]) -> dict:
    """Checked, JSON-ready generation parameters (the marker compares these)."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"Unknown or no splits {list(splits)}; choose from {', '.join(SPLITS)}.")
    if clips is None:
        clips = default_settings()["clips"]
    counts = {s: int(clips if isinstance(clips, int) else clips.get(s, 0)) for s in splits}
    if any(n < 1 for n in counts.values()):
        raise ValueError(f"Every split needs at least one clip, got {counts}.")
    if not 0 < float(min_seconds) <= float(max_seconds):
        raise ValueError(f"Need 0 < min_seconds <= max_seconds, got {min_seconds} and {max_seconds}.")
    return {"version": FORMAT_VERSION, "seed": int(seed), "clips": counts,
            "min_seconds": float(min_seconds), "max_seconds": float(max_seconds), "splits": list(splits)}


def generate_dataset(out_dir: str | Path, seed: int = 0, clips: int | dict[str, int] | None = None,
                     min_seconds: float = 5.0, max_seconds: float = 8.0, splits: tuple[str, ...] | list[str] = SPLITS,
                     workers: int | None = None, progress: bool = True, verbose: bool = True) -> Path:
    """Write a Clotho-format dataset to ``out_dir`` (replacing one it made before), atomically; return the folder.

    A folder the generator did not make (no ``.synth.json`` in it) is never replaced: NotOurFolderError.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    params = _parameters(seed, clips, min_seconds, max_seconds, splits)
    refuse_foreign_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with building(out_dir):  # another run generating the same folder: wait for it, then replace its result
        refuse_foreign_folder(out_dir)
        return _generate(out_dir, params, workers, progress, verbose)


def _generate(out_dir: Path, params: dict, workers: int | None, progress: bool, verbose: bool) -> Path:
    started, total = time.perf_counter(), sum(params["clips"].values())
    say(verbose, f"Generating {total} synthetic clips of {params['min_seconds']:g}-{params['max_seconds']:g} s "
              f"(seed {params['seed']}) into {out_dir} ...")
    plans = {split: plan_split(split, n, params["seed"], params["min_seconds"], params["max_seconds"])
             for split, n in params["clips"].items()}
    needed = sum(_wav_bytes(clips_of_split) for clips_of_split in plans.values()) + 100_000 * len(plans)  # + CSVs
    _remove_leftovers(out_dir)
    check_free_space(out_dir.parent, needed, f"{total} synthetic clips")
    partial = temporary_path(out_dir)
    try:
        tasks = []
        for split, clips_of_split in plans.items():
            (partial / split).mkdir(parents=True)
            tasks += [(str(partial / split / c.file_name), c.scene, params["seed"], SPLITS.index(split), i)
                      for i, c in enumerate(clips_of_split)]
            _write_csvs(partial, split, clips_of_split)
        workers = workers or default_workers(total)
        with tqdm(total=total, desc="synthesising clips", unit="clip", disable=not progress) as bar:
            for _ in map_in_processes(_write_clip, tasks, workers):  # one process per core, clip by clip
                bar.update()
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        (partial / MARKER).write_text(json.dumps({"parameters": params, "files": files}, indent=1), encoding="utf-8")
        replace_folder(partial, out_dir)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            free = free_bytes(out_dir.parent)
            raise DiskFullError(
                f"The disk is full (no space left on device) while generating the synthetic dataset in {out_dir.parent}: "
                f"it needs about {describe_bytes(needed)}, {describe_bytes(free or 0)} are free now that the partial "
                "dataset was removed. Free disk space there, or generate into a folder on a disk with more room "
                "(--out, or COURSE_DATA_DIR for the course's data)."
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    megabytes = sum(files.values()) / 1e6
    say(verbose, f"Wrote {total} clips ({megabytes:.1f} MB) to {out_dir} in {time.perf_counter() - started:.1f} s.")
    return out_dir


class NotOurFolderError(ValueError):
    """The output folder holds files the generator did not make; it is left untouched."""


def refuse_foreign_folder(out_dir: Path) -> None:
    """Raise NotOurFolderError unless ``out_dir`` is absent, empty, or marked with ``.synth.json`` (made by us)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and not out_dir.is_symlink():
        if (out_dir / MARKER).is_file() or not any(out_dir.iterdir()):
            return
        what = f"already exists and was not made by the synthetic generator (it has no {MARKER} marker file)"
    else:
        what = "is a file or a link, not a folder the synthetic generator made"
    raise NotOurFolderError(
        f"{out_dir} {what}, so it was left untouched: generating there would replace everything in it. Choose "
        f"another folder, one that does not exist yet or is empty (for example --out {out_dir / 'synthetic_clotho'} "
        "on the command line), or move your files out of it first. If it is a synthetic dataset whose marker file "
        "was lost, delete the folder yourself and run again."
    )


def _remove_leftovers(out_dir: Path) -> None:
    """Delete temporary folders that an interrupted run (a process no longer alive) left beside ``out_dir``."""
    remove_stale(out_dir.parent, out_dir.name)
    for leftover in out_dir.parent.glob(f".{out_dir.name}.*-*"):  # names written by earlier versions
        kind, _, pid = leftover.name.rpartition("-")
        if kind.endswith((".partial", ".old")) and pid.isdigit() and owner_is_gone(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def check_dataset(out_dir: str | Path, params: dict) -> str | None:
    """Why ``out_dir`` is not a complete dataset made with ``params``, or None when it is."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return "it does not exist"
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"it has no readable {MARKER} (a partial or foreign folder)"
    if marker.get("parameters") != params:
        return f"it was made with other parameters ({marker.get('parameters')})"
    files = marker.get("files", {})
    bad = [name for name, size in files.items() if not (out_dir / name).is_file() or (out_dir / name).stat().st_size != size]
    wavs = sum(1 for split in params["splits"] for _ in (out_dir / split).glob("*.wav"))
    if bad or wavs != sum(params["clips"].values()):
        return f"{len(bad)} files are missing or changed and it holds {wavs} wavs for {sum(params['clips'].values())} clips"
    return None


def ensure_generated(
    out_dir: str | Path, force: bool = False, workers: int | None = None, verbose: bool = True, **parameters
) -> Path:
    """Reuse ``out_dir`` when it is complete with these parameters, else generate it."""
    out_dir, params = Path(out_dir).expanduser().resolve(), _parameters(**parameters)
    if not force and check_dataset(out_dir, params) is None:  # the usual case, without a lock (read-only folders work)
        say(verbose, f"Reusing synthetic dataset at {out_dir} ({sum(params['clips'].values())} clips).")
        return out_dir
    refuse_foreign_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with building(out_dir):  # checked again under the lock: a run that held it may have just generated it
        problem = "it was asked for (--force)" if force else check_dataset(out_dir, params)
        if problem is None:
            say(verbose, f"Reusing synthetic dataset at {out_dir} ({sum(params['clips'].values())} clips).")
            return out_dir
        say(verbose, f"The synthetic dataset at {out_dir} needs generating: {problem}.")
        return generate_dataset(out_dir, workers=workers, verbose=verbose, **parameters)


def ensure_synthetic_dataset(cfg: Config, verbose: bool = True) -> Path:
    """Generate ``cfg.dataset_dir`` from ``cfg.settings['synth']`` unless it is already complete.

    Taught in notebook 00, section 4; ``course_lib.pipeline`` calls it for the synthetic profile's dataset stage.
    """
    settings = cfg.settings.get("synth")
    if settings is None:
        raise ConfigError(f"Profile {cfg.profile!r} has no 'synth' settings: it uses real data. "
                          "Call course_lib.clotho.download_clotho(cfg) to download it.")
    return ensure_generated(cfg.dataset_dir, seed=settings.get("seed", 0), clips=settings.get("clips"),
                            min_seconds=settings.get("min_seconds", 5.0), max_seconds=settings.get("max_seconds", 8.0),
                            splits=cfg.splits, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m course_lib.synth [--scale clotho] [--out DIR] ..."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (default: the synthetic profile's Clotho folder)")
    parser.add_argument("--scale", choices=("default", "clotho"), default="default",
                        help="default: course_lib/baseline.yaml sizes; clotho: 3839/1045/1045 clips of 15-30 s")
    parser.add_argument("--clips-per-split", type=int, help="the same number of clips in every split")
    parser.add_argument("--min-seconds", type=float)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--workers", type=int, help="processes rendering audio (default: CPU cores)")
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching dataset exists")
    args = parser.parse_args(argv)
    scale = CLOTHO_SCALE if args.scale == "clotho" else default_settings()
    seconds = {"min_seconds": scale["min_seconds"] if args.min_seconds is None else args.min_seconds,
               "max_seconds": scale["max_seconds"] if args.max_seconds is None else args.max_seconds}
    if (problem := _check_arguments(args, seconds)) is not None:
        parser.error(problem)
    out = args.out or load_config("synthetic").dataset_dir
    try:
        ensure_generated(out, force=args.force, workers=args.workers, seed=args.seed, splits=args.splits,
                         clips=scale["clips"] if args.clips_per_split is None else args.clips_per_split, **seconds)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # a full disk, a folder that cannot be written
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_arguments(args: argparse.Namespace, seconds: dict[str, float]) -> str | None:
    """What is wrong with the numbers typed on the command line, in the user's own words, or None."""
    if args.clips_per_split is not None and args.clips_per_split < 1:
        return f"--clips-per-split {args.clips_per_split}: every split needs at least 1 clip."
    if args.workers is not None and args.workers < 1:
        return f"--workers {args.workers}: use at least 1 process."
    for name in ("min_seconds", "max_seconds"):
        value = getattr(args, name)
        if value is not None and not 0 < value < float("inf"):
            return f"--{name.replace('_', '-')} {value:g}: durations must be above 0 seconds."
    if seconds["min_seconds"] > seconds["max_seconds"]:
        typed = {name: f"--{name.replace('_', '-')} {seconds[name]:g}" if getattr(args, name) is not None
                 else f"the {args.scale} scale's {name.replace('_', ' ')} {seconds[name]:g}" for name in seconds}
        return (f"{typed['min_seconds']} is above {typed['max_seconds']}: the shortest clip cannot be longer than the "
                "longest. Swap the two values, or pass both --min-seconds and --max-seconds.")
    return None


if __name__ == "__main__":
    raise SystemExit(main())
