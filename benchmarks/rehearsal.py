"""`make rehearsal`: the clotho profile's own code path, offline, at Clotho's real shapes and a small count.

Usage: python benchmarks/rehearsal.py [--clips 24 8 8] [--batch-size 32] [--text-layers 12] [--device cpu|cuda]
                                      [--work DIR] [--out benchmarks/results/rehearsal.json]

Stand-ins (course_lib._stand_ins) replace what these machines cannot reach, with the real shapes:
Clotho v2.1's nine files (synthetic 15-30 s clips at 44.1 kHz, five captions each, packed as Clotho's
.7z archives) and a PANNs-layout Cnn14_mAP=0.431.pth (full width, random weights) are served over
HTTP on 127.0.0.1 with their md5s; a sentence-transformers model with all-mpnet-base-v2's
architecture (random weights) sits in a local folder. Then the clotho profile's code runs, changing
only addresses and sizes (listed in the JSON's "changed"): download with checksums, extraction,
caption tables, log-mels, caption embeddings, the PANNs transfer, one epoch of training with the
profile's recipe (batch 32 when it fits in memory here, else the largest that does), evaluation with
intervals, a submission CSV scored back, a search index and one query, the released-checkpoint layout.
Connections to anything but 127.0.0.1 are refused and counted.

Printed and saved (benchmarks/results/rehearsal.json): each stage's wall time and peak memory (RSS;
on a GPU also peak allocated GPU memory), the shapes seen, every training step's time and shape, the
FLOPs of one training step at batch 32 x 30 s (torch.utils.flop_counter on the meta device), the
memory model against the measured peak, and the extrapolation to Clotho's real sizes on this machine
and on a T4 for the baseline recipe's epochs and the profile's recipe's. With --device cuda
(benchmarks/rehearsal_gpu.sh) it adds step times in fp32 and mixed precision, peak GPU memory at
batch 32 x 30 s and the torch log-mel throughput; it refuses to start without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from _common import RESULTS, machine_info
from bench_training import PEAK_TFLOPS, T4_EFFICIENCY, train_step
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from course_lib import clotho, features, metrics, panns, released, synth, train
from course_lib._gpu_memory import CUDA_CONTEXT_BYTES, GIB, HEADROOM, step_memory
from course_lib._stand_ins import FileServer, pack_clotho_files, remote_files, write_random_panns, write_random_sentence_model
from course_lib.cnn14 import CNN14Encoder, count_parameters
from course_lib.config import HOP_SECONDS, SAMPLE_RATE, SPLITS, load_config
from course_lib.data import load_split
from course_lib.files import write_json_atomically
from course_lib.loss import infonce_loss
from course_lib.model import DualEncoder, embed_captions, embed_clips, load_trained_model, run_dir_for
from course_lib.pipeline import prepare
from course_lib.search import SearchEngine

FULL_FRAMES = 1 + round(30.0 / HOP_SECONDS)  # a 30 s clip: 1501 log-mel frames
# Clotho v2.1 (reference/baseline.md, section 11): clips per split, mean duration (the evaluation split's audit:
# 22.41 s, taken for every split), archive bytes (evaluation's is not published: validation's, same clip count).
CLOTHO_CLIPS = {"development": 3839, "validation": 1045, "evaluation": 1045}
CLOTHO_MEAN_SECONDS = 22.41
CLOTHO_ARCHIVE_BYTES = {"development": 4_541_582_263, "validation": 1_260_701_425, "evaluation": 1_260_701_425}
CAPTIONS_PER_CLIP = 5
T4_BANDWIDTH = 320e9  # bytes/s, the T4's GDDR6 (spec sheet)
T4_MEMORY_BYTES = int(14.75 * 1024**3)  # what PyTorch reports for Colab's 16 GB T4 ("total capacity of 14.75 GiB")
COMPUTE_OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm"}  # the tensor-core work; the rest is memory-bound
QUERY = "rain falls on a roof while a dog barks in the distance"


@dataclasses.dataclass
class Settings:
    """What a rehearsal run changes: sizes, where it works, the device."""

    clips: dict[str, int] = dataclasses.field(default_factory=lambda: {"development": 24, "validation": 8, "evaluation": 8})
    seconds: tuple[float, float] = (15.0, 30.0)
    batch_size: int | None = None  # None: the recipe's (32), lowered to what fits in memory here
    text_layers: int | None = None  # None: all-mpnet-base-v2's 12
    device: str = "cpu"
    work: Path | None = None  # None: a temporary folder, deleted afterwards
    out: Path | None = None
    gpu_steps: int = 5


# --- measuring: stages, steps, connections --------------------------------------------------------------------------


class Stages:
    """Wall time and peak memory of each stage: RSS (the kernel's high-water mark, reset per stage) and GPU memory."""

    def __init__(self, device: str) -> None:
        self.device, self.rows = device, []
        self.process = psutil.Process()

    @contextmanager
    def stage(self, name: str, course_path: bool = True) -> Iterator[dict[str, Any]]:
        details: dict[str, Any] = {}
        exact = _reset_peak_rss()
        before = self.process.memory_info().rss
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started, cpu = time.perf_counter(), self._cpu_seconds()
        print(f"\n--- {name}", flush=True)
        yield details
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = _peak_rss() if exact else max(_peak_rss(), self.process.memory_info().rss)
        row = {"stage": name, "course_path": course_path, "seconds": round(seconds, 2),
               "cpu_seconds": round(self._cpu_seconds() - cpu, 1), "peak_rss_gb": round(peak / 1e9, 2),
               "added_rss_gb": round(max(0, peak - before) / 1e9, 2), "peak_rss_exact": exact, **details}
        if self.device == "cuda":
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        self.rows.append(row)
        print(f"--- {name}: {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB", flush=True)

    def _cpu_seconds(self) -> float:
        """CPU time of this process's threads and its finished worker processes: what other work on the machine cannot inflate."""
        times = self.process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where it cannot be (then the peak is lifelong)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def step_clock(device: str) -> Iterator[list[tuple]]:
    """(time, training?, input shape, CPU time) at every CNN14Encoder forward: in training mode, one a step of the loop."""
    events: list[tuple] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, CNN14Encoder):
            if device == "cuda":
                torch.cuda.synchronize()
            events.append((time.perf_counter(), module.training, tuple(args[0].shape), time.process_time()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield events
    finally:
        handle.remove()


def step_times(events: list[tuple], ended: tuple[float, float]) -> list[dict[str, Any]]:
    """Each training step's shape, wall time and CPU time: from its forward to the next forward (a step's or validation's)."""
    steps = []
    for i, (start, training, shape, cpu) in enumerate(events):
        if training:
            end, cpu_end = events[i + 1][0::3] if i + 1 < len(events) else ended
            steps.append({"batch": shape[0], "frames": shape[1], "seconds": end - start, "cpu_seconds": cpu_end - cpu})
    return steps


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and list) every name lookup and connection that is not for this machine: as if offline, but at once."""
    refused: list[str] = []
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True  # Unix sockets (the process pool's fork server)
        host = str(address[0])
        if host in ("127.0.0.1", "::1", "localhost"):
            return True
        refused.append(f"{host}:{address[1]}")
        return False

    def connect(sock, address):
        if not allowed(sock, address):
            raise OSError(101, f"Network is unreachable (the rehearsal allows 127.0.0.1 only): {address}")
        return original_connect(sock, address)

    def connect_ex(sock, address):
        return original_connect_ex(sock, address) if allowed(sock, address) else 101

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and str(host) not in ("127.0.0.1", "::1", "localhost"):
            refused.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"Name resolution refused (the rehearsal allows 127.0.0.1 only): {host}")
        return original_getaddrinfo(host, *args, **kwargs)

    original_getaddrinfo = socket.getaddrinfo
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield refused
    finally:
        socket.socket.connect, socket.socket.connect_ex = original_connect, original_connect_ex
        socket.getaddrinfo = original_getaddrinfo


@contextmanager
def timed_calls(module: Any, name: str) -> Iterator[list[float]]:
    """Seconds of every call of ``module.name`` while the block runs (to time extraction inside the download stage)."""
    original, seconds = getattr(module, name), []

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(module, name, timed)
    try:
        yield seconds
    finally:
        setattr(module, name, original)


@contextmanager
def served_from(server: FileServer, clotho_table: dict, panns_md5: str) -> Iterator[None]:
    """The addresses the profile downloads from, pointed at the local server: the only change to the course's path."""
    saved = (os.environ.get("COURSE_CLOTHO_URL"), os.environ.get("HF_HUB_OFFLINE"), clotho.CLOTHO_FILES, panns.PANNS_MD5)
    os.environ["COURSE_CLOTHO_URL"], os.environ["HF_HUB_OFFLINE"] = server.url, "1"
    clotho.CLOTHO_FILES, panns.PANNS_MD5 = clotho_table, panns_md5
    try:
        yield
    finally:
        for key, value in (("COURSE_CLOTHO_URL", saved[0]), ("HF_HUB_OFFLINE", saved[1])):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clotho.CLOTHO_FILES, panns.PANNS_MD5 = saved[2], saved[3]


# --- counting FLOPs and bytes on the meta device ----------------------------------------------------------------------


class _Traffic(TorchDispatchMode):
    """Bytes each operator reads and writes (inputs + outputs; views move nothing), split into compute and the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.compute, self.other = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            moved = sum(x.numel() * x.element_size() for x in torch.utils._pytree.tree_leaves((args, kwargs, out))
                        if isinstance(x, torch.Tensor))
            if func.overloadpacket.__name__ in COMPUTE_OPS:
                self.compute += moved
            else:
                self.other += moved
        return out


@functools.lru_cache(maxsize=64)
def count_step(batch: int, frames: int, text_dim: int = 768, half: bool = False, training: bool = True,
               width: float = 1.0) -> dict[str, float]:
    """FLOPs and bytes moved by one training step (or one validation forward) of the clotho model, on the meta device."""
    dtype = torch.float16 if half else torch.float32
    with torch.device("meta"):
        model = DualEncoder(CNN14Encoder(300, width), text_dim).to(dtype).train(training)
    audio = torch.zeros(batch, frames, 64, device="meta", dtype=dtype)
    text = torch.zeros(batch, text_dim, device="meta", dtype=dtype)
    flops, traffic = FlopCounterMode(display=False), _Traffic()
    with flops, traffic, torch.set_grad_enabled(training):
        audio_emb, text_emb = model(audio, text)
        loss = infonce_loss(audio_emb, text_emb, torch.arange(batch, device="meta"))
        if training:
            loss.backward()
    return {"flops": float(flops.get_total_flops()), "compute_bytes": float(traffic.compute), "other_bytes": float(traffic.other)}


# --- the rehearsal ------------------------------------------------------------------------------------------------------


def rehearse(settings: Settings) -> dict[str, Any]:
    """Build the stand-ins, run the clotho profile's path through them, measure; return (and save) the report."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible here. Run it on a GPU machine (benchmarks/rehearsal_gpu.sh); "
                         "on this machine run `make rehearsal` (the CPU rehearsal).")
    work = Path(settings.work) if settings.work else Path(tempfile.mkdtemp(prefix="rehearsal-"))
    try:
        with loopback_only() as refused:
            report = _rehearse(settings, work)
        report["checks"]["connections_refused"] = refused
    finally:
        if not settings.work:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(settings.out or RESULTS / ("rehearsal_gpu.json" if settings.device == "cuda" else "rehearsal.json"))
    report = _jsonable(report)
    write_json_atomically(out, report)
    print_report(report)
    print(f"\nSaved {out}")
    return report


def _rehearse(settings: Settings, work: Path) -> dict[str, Any]:
    stages = Stages(settings.device)
    served = work / "served"

    with stages.stage("stand-ins (not the course's path)", course_path=False) as info:
        clock = time.perf_counter()
        source = synth.generate_dataset(work / "source" / "Clotho", seed=0, clips=settings.clips, min_seconds=settings.seconds[0],
                                        max_seconds=settings.seconds[1], progress=False, verbose=False)
        info["clips_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        clotho_paths = pack_clotho_files(source, served)
        info["archives_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        panns_path = write_random_panns(served / panns.PANNS_FILENAME)
        info["panns_file_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        captions = [text for split in SPLITS for row in clotho.read_captions(source, split).itertuples(index=False)
                    for text in row[1:]]
        text_folder = write_random_sentence_model(work / "hub" / "all-mpnet-base-v2", captions + [QUERY], settings.text_layers)
        info["text_model_s"] = round(time.perf_counter() - clock, 1)
        info["served_mb"] = round(sum(p.stat().st_size for p in [*clotho_paths.values(), panns_path]) / 1e6, 1)

    cfg = load_config("clotho", data_root=work / "data")
    cfg = dataclasses.replace(cfg, settings={**cfg.settings, "text_model": str(text_folder), "device": settings.device})
    recipe_name, recipe = train.recipe_settings(cfg)
    baseline = train.recipe_settings(cfg, "baseline")[1]
    changed = [
        "Zenodo -> http://127.0.0.1 (COURSE_CLOTHO_URL); Clotho's md5 table and PANNs' md5 -> the stand-ins' md5s",
        f"text_model sentence-transformers/all-mpnet-base-v2 -> the local folder {text_folder.name}/ (HF_HUB_OFFLINE=1)",
        f"clips {CLOTHO_CLIPS} -> {settings.clips}; training: 1 epoch of the recipe {recipe_name!r} instead of the "
        f"profile's {epoch_budgets(cfg)['profile']}",
        f"device {cfg.settings['device']}",
    ]
    report: dict[str, Any] = {"machine": machine_info(settings.device), "settings": _jsonable(dataclasses.asdict(settings)),
                              "changed": changed, "checks": {}}
    files = remote_files(clotho_paths)
    server = FileServer({**clotho_paths, panns.PANNS_FILENAME: panns_path})
    try:
        with served_from(server, files, remote_files({panns.PANNS_FILENAME: panns_path})[panns.PANNS_FILENAME].md5):
            _course_path(cfg, settings, stages, server, recipe_name, recipe, baseline, report)
    finally:
        server.close()
    report["stages"] = stages.rows
    report["flops"], report["t4"] = _flops_and_t4()
    report["memory"] = _memory(report)
    report["extrapolation"] = _extrapolate(cfg, report)
    if settings.device == "cuda":
        report["gpu"] = device_measurements("cuda", settings.gpu_steps)
        report["extrapolation"]["this_gpu"] = _gpu_run(report)
    report["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # other work on the machine skews every time
    return report


def _course_path(cfg, settings: Settings, stages: Stages, server: FileServer, recipe_name: str, recipe: dict, baseline: dict,
                 report: dict[str, Any]) -> None:
    """The clotho profile's stages, each as a notebook (or the pipeline) runs it."""
    checks = report["checks"]
    with stages.stage("download (md5-checked) + extraction") as info, timed_calls(clotho, "extract_split") as extracting:
        prepare(cfg, until="dataset")
        archives = [cfg.downloads_dir / "clotho" / clotho.split_file_names(split)[0] for split in cfg.splits]
        info["requests"] = len(server.requests)
        info["archive_mb"] = round(sum(p.stat().st_size for p in archives) / 1e6, 1)
        info["extraction_s"] = round(sum(extracting), 2)
        info["extraction_mb_per_s"] = round(info["archive_mb"] / max(sum(extracting), 1e-9), 1)

    with stages.stage("caption tables") as info:
        tables = prepare(cfg, until="captions").tables
        info["captions"] = {split: len(table) for split, table in tables.items()}

    with stages.stage("log-mel features (librosa)") as info:
        paths = prepare(cfg, until="features").features
        frames = {split: [len(features.load_log_mel(path, fid)) for fid in tables[split]["fid"].unique()]
                  for split, path in paths.items()}
        audio_seconds = sum(n - 1 for lengths in frames.values() for n in lengths) * HOP_SECONDS
        info["audio_seconds"] = round(audio_seconds, 1)
        info["feature_mb"] = round(sum(p.stat().st_size for p in paths.values()) / 1e6, 1)
    stages.rows[-1]["audio_seconds_per_s"] = round(audio_seconds / stages.rows[-1]["seconds"], 1)

    with stages.stage("caption embeddings (768-d, all-mpnet-base-v2 architecture)") as info:
        embeddings = prepare(cfg, until="embeddings").embeddings
        from course_lib.text import load_caption_embeddings

        tids, vectors = load_caption_embeddings(cfg)
        info["captions"], info["dimension"] = len(tids), int(vectors.shape[1])
        info["embeddings_mb"] = round(embeddings.stat().st_size / 1e6, 2)
    stages.rows[-1]["captions_per_s"] = round(len(tids) / stages.rows[-1]["seconds"], 1)

    with stages.stage("PANNs transfer (CNN14 from Cnn14_mAP=0.431.pth)") as info:
        encoder, status = panns.ensure_pretrained_encoder(cfg, url=server.url_of(panns.PANNS_FILENAME))
        served = torch.load(server.contents[panns.PANNS_FILENAME], map_location="cpu", weights_only=True)["model"]
        checks["panns_weights_transferred"] = bool(torch.equal(encoder.cnn[0].weight, served["conv_block1.conv1.weight"]))
        info["status"] = status.splitlines()[0]
        info["encoder_parameters"] = count_parameters(encoder)
        weights = [cfg.downloads_dir / panns.PANNS_FILENAME, *cfg.models_dir.glob("CNN14_*.pth")]
        info["weights_mb"] = round(sum(p.stat().st_size for p in weights) / 1e6, 1)
        del served

    batch, reason = _batch_size(recipe["batch_size"], settings, max(max(v) for v in frames.values()))
    cfg.training[recipe_name]["batch_size"] = batch
    with stages.stage(f"training: 1 epoch of {recipe_name!r} at batch {batch}") as info, step_clock(settings.device) as events:
        checkpoint = train.train(cfg, recipe_name, max_epochs=1)
        ended = time.perf_counter(), time.process_time()
        history = train.read_history(run_dir_for(cfg, recipe_name))
        info["batch_size"], info["batch_reason"] = batch, reason
        info["train_loss"] = round(float(history["train_loss"].iloc[-1]), 4)
        info["checkpoint_mb"] = round(sum(p.stat().st_size for p in checkpoint.parent.glob("*.pt")) / 1e6, 1)
    steps = step_times(events, ended)
    report["training"] = {
        "recipe": recipe_name, "same_step_as_baseline": {k: v for k, v in recipe.items() if k != "max_epochs"}
        == {k: v for k, v in baseline.items() if k != "max_epochs"}, "batch_size": batch, "batch_reason": reason,
        "mixed_precision": settings.device == "cuda" and bool(recipe.get("mixed_precision", True)),
        "steps": [{**step, "seconds": round(step["seconds"], 2), "cpu_seconds": round(step["cpu_seconds"], 1)} for step in steps],
        "validation_captions": len(tables["validation"]),
        "history": history.to_dict(orient="records"),
    }
    report["training"]["validation_s_per_caption"] = validation_s_per_caption(report["training"])
    checks["training_loss_finite"] = bool(np.isfinite(history["train_loss"].iloc[-1]))

    with stages.stage("evaluation with intervals + submission scored back") as info:
        report["evaluation"] = _evaluate(cfg, checkpoint, settings.device, tables)
        checks["submission_scores_as_in_memory"] = report["evaluation"].pop("file_matches_memory")

    with stages.stage("search index + one query") as info:
        engine = SearchEngine.from_config(cfg, checkpoint=checkpoint, device=settings.device)
        engine.index("evaluation")
        started = time.perf_counter()
        results = engine.search(QUERY, "evaluation", k=5)
        info["query_ms"] = round(1000 * (time.perf_counter() - started), 1)
        info["top_5"] = [hit.fname for hit in results.clips]
        checks["search_found"] = len(results.clips) == min(5, len(tables["evaluation"]["fid"].unique()))

    with stages.stage("released-checkpoint layout (Zenodo 7752975), loaded and evaluated") as info:
        report["released"] = _released(cfg, settings.device, sum(len(t) for t in tables.values()))
        info.update(report["released"])

    report["shapes"] = {
        "shortest_clip_s": round((min(min(v) for v in frames.values()) - 1) * HOP_SECONDS, 2),
        "longest_clip_s": round((max(max(v) for v in frames.values()) - 1) * HOP_SECONDS, 2),
        "frames": [min(min(v) for v in frames.values()), max(max(v) for v in frames.values())],
        "sample_rate": SAMPLE_RATE, "text_dimension": int(vectors.shape[1]),
        "audio_encoder_parameters": count_parameters(encoder),
        "trainable_parameters": count_parameters(DualEncoder(encoder, int(vectors.shape[1]))),
        "clips": {split: len(v) for split, v in frames.items()}, "captions": {s: len(t) for s, t in tables.items()},
    }


def validation_s_per_caption(training: dict[str, Any]) -> float:
    """A validation pass per caption: epoch 0 (which only validates) or epoch 1 less its steps, whichever ran faster
    (other work on a shared machine only slows a pass down)."""
    history = training["history"]
    passes = [history[0]["epoch_s"]]
    if len(history) > 1:
        passes.append(history[-1]["epoch_s"] - sum(step["seconds"] for step in training["steps"]))
    return round(min(p for p in passes if p > 0) / training["validation_captions"], 4)


def _batch_size(wanted: int, settings: Settings, frames: int) -> tuple[int, str]:
    """The recipe's batch size if a step of it fits in the memory available now (memory model), else the largest that does."""
    if settings.batch_size:
        return settings.batch_size, "set with --batch-size"
    memory = step_memory(frames, half=settings.device == "cuda")  # the recipes' mixed precision acts on CUDA only
    if settings.device == "cuda":
        budget = HEADROOM * (torch.cuda.get_device_properties(0).total_memory - CUDA_CONTEXT_BYTES)
        where = "this GPU's memory"
    else:
        budget = 0.85 * psutil.virtual_memory().available
        where = "the memory available now"
    fits = memory.batch_that_fits(budget)
    need = memory.total(wanted) / GIB
    if fits >= wanted:
        return wanted, f"the recipe's {wanted}: a step needs about {need:.1f} GiB, {budget / GIB:.1f} GiB usable in {where}"
    return max(1, fits), (f"the recipe's {wanted} would need about {need:.1f} GiB, {budget / GIB:.1f} GiB usable in {where}: "
                          f"{max(1, fits)} is the largest that fits")


def _evaluate(cfg, checkpoint: Path, device: str, tables: dict) -> dict[str, Any]:
    """Notebook 06's evaluation: embed, score, both directions with 95 % intervals, a submission file scored back."""
    model = load_trained_model(checkpoint, device=device)
    split = load_split(cfg, "evaluation")
    clip_fids = list(split.clip_fids)
    scores = metrics.score_matrix(embed_captions(model, split.vectors, device=device),
                                  embed_clips(model, split.h5_path, clip_fids, device=device))
    t2a = metrics.text_to_audio(scores, list(split.fids), clip_fids)
    a2t = metrics.audio_to_text(scores, list(split.fids), clip_fids)
    csv_names = clotho.read_captions(cfg.dataset_dir, "evaluation")["file_name"].tolist()
    submission = metrics.write_submission(cfg.models_dir / "evaluation_submission.csv", list(tables["evaluation"]["raw_text"]),
                                          scores, csv_names)
    scored = metrics.score_submission(submission, cfg.dataset_dir / "clotho_captions_evaluation.csv")
    unique = tables["evaluation"]["raw_text"].is_unique  # a caption written twice is scored once from the file
    return {"text_to_audio": _intervals(t2a), "audio_to_text": _intervals(a2t), "submission_rows": len(scored.ranks),
            "file_matches_memory": (not unique) or all(math.isclose(scored.means[k], t2a.means[k]) for k in metrics.METRICS)}


def _intervals(retrieval: metrics.Retrieval) -> dict[str, list[float]]:
    return {name: [round(float(x), 4) for x in row] for name, row in retrieval.intervals().iterrows()}


def _released(cfg, device: str, captions: int) -> dict[str, Any]:
    """Notebook 06, section 6: the baseline's two released layouts, written from random tensors and loaded back."""
    paths = released.released_paths(cfg)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    state, optimizer = released.random_released_checkpoint(width=1.0, text_dim=768, captions=captions)
    torch.save((state, optimizer), paths["checkpoint"])
    torch.save({k.removeprefix("audio_enc."): v for k, v in state.items() if k.startswith("audio_enc.")}, paths["audio_encoder"])
    encoder = released.load_released_audio_encoder(paths["audio_encoder"])
    baseline = released.load_released_checkpoint(paths["checkpoint"])
    result = {"audio_encoder_width": encoder.width, "projection": list(baseline.model.text_enc.fc.weight.shape),
              "caption_table": list(baseline.caption_table.shape),
              "checkpoint_mb": round(paths["checkpoint"].stat().st_size / 1e6)}
    for source in ("course", "table"):
        t2a = released.evaluate_released(cfg, baseline, text_source=source, device=device)["text_to_audio"]
        result[f"t2a_mAP@10_{source}"] = round(t2a.means["mAP@10"], 4)
    return result


# --- what it means for Clotho --------------------------------------------------------------------------------------------


def _flops_and_t4() -> tuple[dict[str, Any], dict[str, Any]]:
    """FLOPs and bytes of a training step and a validation forward at batch 32 x 30 s; the T4 efficiency and its basis."""
    step, forward = count_step(32, FULL_FRAMES), count_step(32, FULL_FRAMES, training=False)
    step16 = count_step(32, FULL_FRAMES, half=True)
    flops = {"train_step_tflop": round(step["flops"] / 1e12, 3), "validation_forward_tflop": round(forward["flops"] / 1e12, 3),
             "shape": [32, FULL_FRAMES, 64], "counted_with": "torch.utils.flop_counter.FlopCounterMode, meta device",
             "memory_bound_gb_fp32": round(step["other_bytes"] / 1e9, 1),
             "memory_bound_gb_16bit": round(step16["other_bytes"] / 1e9, 1)}
    peak = PEAK_TFLOPS["T4"]["fp16"] * 1e12
    at_peak, memory_bound = step["flops"] / peak, step16["other_bytes"] / T4_BANDWIDTH
    ceiling = at_peak / (at_peak + memory_bound)
    at_efficiency = step["flops"] / (T4_EFFICIENCY * peak)
    implied = at_peak / max(at_efficiency - memory_bound, 1e-9)
    t4 = {
        "peak_tflops_fp16": PEAK_TFLOPS["T4"]["fp16"], "efficiency": T4_EFFICIENCY, "ceiling": round(ceiling, 3),
        "implied_convolution_efficiency": round(implied, 3),
        "basis": (f"Efficiency {T4_EFFICIENCY:.0%} of the fp16 peak (benchmarks/bench_training.py's T4_EFFICIENCY). A step's "
                  f"normalisation, ReLU, pooling and dropout layers move {step16['other_bytes'] / 1e9:.0f} GB in 16 bits: "
                  f"{memory_bound:.3f} s at the T4's 320 GB/s, against {at_peak:.3f} s for all {step['flops'] / 1e12:.2f} TFLOP "
                  f"at the peak, so no schedule beats {ceiling:.0%}. {T4_EFFICIENCY:.0%} leaves the convolutions "
                  f"{implied:.0%} of the tensor-core peak, plausible for large 3x3 convolutions on a 70 W card "
                  "whose clock stays under the boost clock that peak assumes."),
        "step_s": round(at_efficiency, 4), "step_s_at_ceiling": round(at_peak + memory_bound, 4),
    }
    return flops, t4


def _stage(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(row for row in report["stages"] if row["stage"].startswith(prefix))


def _memory(report: dict[str, Any]) -> dict[str, Any]:
    """The memory model (course_lib._gpu_memory) against the training stage's measured peak; the model at batch 32 x 30 s."""
    training = report["training"]
    frames = max(step["frames"] for step in training["steps"])
    used = step_memory(frames, half=training["mixed_precision"]).total(training["batch_size"])
    stage = _stage(report, "training")
    measured = stage.get("peak_gpu_gb", stage["added_rss_gb"])
    full, half = step_memory(FULL_FRAMES), step_memory(FULL_FRAMES, half=True)
    return {
        "model_gb_at_training_shape": round(used / 1e9, 2), "measured_gb": measured,
        "measured_as": "peak allocated GPU memory" if "peak_gpu_gb" in stage else "RSS added during the training stage",
        "model_gb_batch32_30s_fp32": round(full.total(32) / 1e9, 2), "model_gb_batch32_30s_16bit": round(half.total(32) / 1e9, 2),
        "per_clip_mb_30s_fp32": round((full.per_clip_bytes + full.transient_per_clip_bytes) / 1e6),
        "fixed_gb_fp32": round(full.fixed_bytes / 1e9, 2),
        "t4_batch_that_fits": {"fp32": full.batch_that_fits(HEADROOM * (T4_MEMORY_BYTES - CUDA_CONTEXT_BYTES)),
                               "mixed_precision": half.batch_that_fits(HEADROOM * (T4_MEMORY_BYTES - CUDA_CONTEXT_BYTES))},
    }


def epoch_budgets(cfg) -> dict[str, int]:
    """Epochs of a full run: the baseline recipe's (80), and the profile's shorter budget, both read from baseline.yaml."""
    budget = train.epoch_budget(cfg, train.recipe_settings(cfg)[1])  # the profile's epoch_budget, capped by its recipe
    return {"baseline": train.recipe_settings(cfg, "baseline")[1]["max_epochs"], "profile": int(budget)}


def _extrapolate(cfg, report: dict[str, Any]) -> dict[str, Any]:
    """Clotho's real sizes at the rates measured here, and on a T4 from the FLOP count, for both epoch budgets."""
    training, flops = report["training"], report["flops"]
    cfg = load_config(cfg.profile, data_root=cfg.data_root)  # baseline.yaml as written (the rehearsal may lower its batch)
    batch = train.recipe_settings(cfg, "baseline")[1]["batch_size"]
    steps_per_epoch = math.ceil(CLOTHO_CLIPS["development"] * CAPTIONS_PER_CLIP / batch)
    val_captions = CLOTHO_CLIPS["validation"] * CAPTIONS_PER_CLIP
    val_batches = math.ceil(val_captions / batch)
    # The fastest full-batch step: other work on a shared machine only slows steps down (each one is in the report).
    timed = [s for s in training["steps"] if s["batch"] == training["batch_size"]] or training["steps"]
    rate = max(count_step(s["batch"], s["frames"])["flops"] / s["seconds"] for s in timed)
    step_s = flops["train_step_tflop"] * 1e12 / rate
    # Validation as measured by the course's loop, per caption; elsewhere it is scaled like the training steps.
    val_s = val_captions * training["validation_s_per_caption"]
    epoch_s = steps_per_epoch * step_s + val_s
    t4 = report["t4"]
    t4_val_s, t4_val_ceiling_s = val_s * t4["step_s"] / step_s, val_s * t4["step_s_at_ceiling"] / step_s
    t4_epoch_s = steps_per_epoch * t4["step_s"] + t4_val_s
    epochs = epoch_budgets(cfg)
    audio_seconds = sum(CLOTHO_CLIPS.values()) * CLOTHO_MEAN_SECONDS
    captions = sum(CLOTHO_CLIPS.values()) * CAPTIONS_PER_CLIP
    extraction_rate = _stage(report, "download")["extraction_mb_per_s"] * 1e6
    features_stage, text_stage = _stage(report, "log-mel"), _stage(report, "caption embeddings")
    disk = {"archives": sum(CLOTHO_ARCHIVE_BYTES.values()) / 1e9, "wavs": audio_seconds * 2 * SAMPLE_RATE / 1e9,
            "log_mels": features_stage["feature_mb"] / features_stage["audio_seconds"] * audio_seconds / 1e3,
            "caption_embeddings": text_stage["embeddings_mb"] / text_stage["captions"] * captions / 1e3,
            "weights_and_checkpoints": (_stage(report, "PANNs")["weights_mb"]
                                        + _stage(report, "training")["checkpoint_mb"]) / 1e3}
    disk = {name: round(gb, 2) for name, gb in disk.items()}
    disk["total_while_archives_kept"] = round(sum(disk.values()), 1)
    disk["total_archives_deleted"] = round(disk["total_while_archives_kept"] - disk["archives"], 1)
    return {
        "clotho": {"clips": CLOTHO_CLIPS, "audio_hours": round(audio_seconds / 3600, 1), "captions": captions,
                   "steps_per_epoch": steps_per_epoch, "validation_batches": val_batches, "epochs": epochs},
        "this_machine": {
            "step_s_batch32_30s": round(step_s, 2), "achieved_tflops": round(rate / 1e12, 3),
            "extraction_min": round(sum(CLOTHO_ARCHIVE_BYTES.values()) / extraction_rate / 60, 1),
            "features_min_one_process": round(audio_seconds / _stage(report, "log-mel")["audio_seconds_per_s"] / 60, 1),
            "caption_embeddings_min": round(captions / _stage(report, "caption embeddings")["captions_per_s"] / 60, 1),
            "validation_s_per_epoch": round(val_s, 1), "epoch_h": round(epoch_s / 3600, 2),
            **{f"run_{name}_{n}_epochs_days": round(((n + 1) * epoch_s - steps_per_epoch * step_s) / 86400, 1)
               for name, n in epochs.items()},
        },
        "t4": {
            "efficiency": t4["efficiency"], "step_s": t4["step_s"], "validation_s_per_epoch": round(t4_val_s, 3),
            "epoch_min": round(t4_epoch_s / 60, 1),
            "epoch_min_at_ceiling": round((steps_per_epoch * t4["step_s_at_ceiling"] + t4_val_ceiling_s) / 60, 1),
            **{f"run_{name}_{n}_epochs_h": round(((n + 1) * t4_epoch_s - steps_per_epoch * t4["step_s"]) / 3600, 2)
               for name, n in epochs.items()},
            "memory_batch32_gb": {"fp32": report["memory"]["model_gb_batch32_30s_fp32"],
                                  "mixed_precision": report["memory"]["model_gb_batch32_30s_16bit"]},
        },
        "disk_gb": disk,
    }


# --- on a GPU --------------------------------------------------------------------------------------------------------------


def device_measurements(device: str, steps: int = 5, batch: int = 32, frames: int = FULL_FRAMES, clips: int = 16,
                        clip_seconds: float = 30.0, width: float = 1.0) -> dict[str, Any]:
    """Step time and peak memory of a training step (default batch 32 x 30 s) in fp32 and mixed precision, and the torch
    log-mel throughput, on ``device``.

    Made for CUDA (benchmarks/rehearsal_gpu.sh). On a CPU, as the tests run it at small sizes, "mixed" is fp32 too (the
    course's autocast acts on CUDA only) and the peak memory is the process's RSS; ``width`` < 1 makes it quick there.
    """
    dev = torch.device(device)
    rows = {}
    for variant in ("fp32", "mixed"):
        rows[variant] = _step_row(dev, variant, steps, batch, frames, width)
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the next precision starts from an empty cache
    transform = features.TorchLogMel().to(dev)
    host = torch.randn(clips, int(clip_seconds * SAMPLE_RATE)).mul_(0.1)
    host = host.pin_memory() if dev.type == "cuda" else host
    times = _timed(dev, steps + 1, lambda: transform(host.to(dev, non_blocking=True)))
    cuda = dev.type == "cuda"
    return {"name": torch.cuda.get_device_name(dev) if cuda else "CPU", "peak_memory_is": "allocated GPU memory" if cuda
            else "process RSS", "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "total_memory_gb": round((torch.cuda.get_device_properties(dev).total_memory if cuda
                                      else psutil.virtual_memory().total) / 1e9, 1),
            "steps": rows, "torch_log_mel_audio_seconds_per_s": round(clips * clip_seconds / float(np.median(times[1:])), 1),
            "torch_log_mel_note": f"{clips} clips of {clip_seconds:g} s a call, host-to-device copy included, wav decoding not"}


def _step_row(device: torch.device, variant: str, steps: int, batch: int, frames: int, width: float) -> dict[str, Any]:
    """One precision's median step time (after two warm-ups), validation forward time and peak memory."""
    torch.manual_seed(0)
    model = DualEncoder(CNN14Encoder(300, width), 768).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = train.autocast_dtype(device) if variant == "mixed" else None
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    audio = torch.randn(batch, frames, 64, device=device) - 10
    text = torch.nn.functional.normalize(torch.randn(batch, 768, device=device), dim=1)
    ids = torch.arange(batch, device=device)
    exact = _reset_peak(device)
    times = _timed(device, steps + 2, lambda: train_step(model, optimizer, audio, text, ids, autocast))
    peak = _peak(device)
    model.eval()
    with torch.no_grad(), autocast:
        forward = _timed(device, steps + 1, lambda: model(audio, text))
    step_s = float(np.median(times[2:]))
    row = {"dtype": str(dtype or torch.float32).removeprefix("torch."), "shape": [batch, frames], "step_s": round(step_s, 4),
           "validation_forward_s": round(float(np.median(forward[1:])), 4), "peak_memory_gb": round(peak / 1e9, 2),
           "peak_exact": exact,
           "memory_model_gb": round(step_memory(frames, width=width, half=dtype is not None).total(batch) / 1e9, 2),
           "achieved_tflops": round(count_step(batch, frames, width=width)["flops"] / step_s / 1e12, 3)}
    return row  # the model and its optimiser go with this function's frame


def _timed(device: torch.device, repeats: int, work) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``work``, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return _reset_peak_rss()


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()


def _gpu_run(report: dict[str, Any]) -> dict[str, Any]:
    """The whole Clotho run on this GPU: training at the mixed-precision step time, plus the one-off stages."""
    clotho_sizes, mixed = report["extrapolation"]["clotho"], report["gpu"]["steps"]["mixed"]
    val_s = CLOTHO_CLIPS["validation"] * CAPTIONS_PER_CLIP * report["training"]["validation_s_per_caption"]  # the course's loop
    train_s = clotho_sizes["steps_per_epoch"] * mixed["step_s"]
    audio_seconds = sum(CLOTHO_CLIPS.values()) * CLOTHO_MEAN_SECONDS
    return {"validation_s_per_epoch": round(val_s, 1), "epoch_min": round((train_s + val_s) / 60, 2),
            "torch_log_mels_min": round(audio_seconds / report["gpu"]["torch_log_mel_audio_seconds_per_s"] / 60, 2),
            **{f"run_{name}_{n}_epochs_h": round((n * train_s + (n + 1) * val_s) / 3600, 2)
               for name, n in clotho_sizes["epochs"].items()}}


# --- output ------------------------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    """The stage table, the shapes, the training steps and the extrapolation, as plain text."""
    print("\n" + "=" * 100)
    gpu_column = "  GPU GB" if "gpu" in report else ""
    print(f"{'stage':<62} {'wall s':>8} {'CPU s':>7} {'peak RSS GB':>12} {'added GB':>9}{gpu_column}")
    for row in report["stages"]:
        gpu = f"  {row['peak_gpu_gb']:>6.2f}" if "peak_gpu_gb" in row else ""
        print(f"{row['stage'][:62]:<62} {row['seconds']:>8.1f} {row['cpu_seconds']:>7.1f} {row['peak_rss_gb']:>12.2f} "
              f"{row['added_rss_gb']:>9.2f}{gpu}")
    course = [row for row in report["stages"] if row["course_path"]]
    print(f"{'total (course path)':<62} {sum(r['seconds'] for r in course):>8.1f} {sum(r['cpu_seconds'] for r in course):>7.1f}")
    print(f"{'total':<62} {sum(r['seconds'] for r in report['stages']):>8.1f}   (load average before "
          f"{report['machine']['load_average_1min_before']}, after {report['machine']['load_average_1min_after']})")
    shapes, training = report["shapes"], report["training"]
    print(f"\nclips {shapes['clips']}, {shapes['shortest_clip_s']}-{shapes['longest_clip_s']} s ({shapes['frames'][0]}-"
          f"{shapes['frames'][1]} frames); text {shapes['text_dimension']}-d; audio encoder "
          f"{shapes['audio_encoder_parameters']:,} parameters ({shapes['trainable_parameters']:,} trained)")
    print(f"training: recipe {training['recipe']!r} (a step identical to the baseline's: {training['same_step_as_baseline']}), "
          f"batch {training['batch_size']} ({training['batch_reason']})")
    for step in training["steps"]:
        print(f"  step at {step['batch']} x {step['frames']} frames: {step['seconds']:.2f} s ({step['cpu_seconds']:.1f} CPU s)")
    flops, memory, t4 = report["flops"], report["memory"], report["t4"]
    print(f"one training step at batch 32 x 30 s: {flops['train_step_tflop']} TFLOP (validation forward "
          f"{flops['validation_forward_tflop']} TFLOP)")
    print(f"memory model: {memory['model_gb_at_training_shape']} GB at the training shape, measured {memory['measured_gb']} GB "
          f"({memory['measured_as']}); batch 32 x 30 s: {memory['model_gb_batch32_30s_fp32']} GB fp32, "
          f"{memory['model_gb_batch32_30s_16bit']} GB 16-bit")
    print(f"T4: {t4['basis']}")
    ex = report["extrapolation"]
    print(f"\nClotho ({ex['clotho']['audio_hours']} h of audio, {ex['clotho']['steps_per_epoch']} steps an epoch), this machine: "
          + ", ".join(f"{k} {v}" for k, v in ex["this_machine"].items()))
    print("Clotho on a T4 (estimate): " + ", ".join(f"{k} {v}" for k, v in ex["t4"].items()))
    print("Clotho's disk, GB: " + ", ".join(f"{k} {v}" for k, v in ex["disk_gb"].items()))
    if "gpu" in report:
        print(f"\nGPU {report['gpu']['name']}: " + "; ".join(f"{k}: {v}" for k, v in report["gpu"]["steps"].items()))
        print(f"torch log-mels: {report['gpu']['torch_log_mel_audio_seconds_per_s']} audio-s/s; Clotho on this GPU: "
              + ", ".join(f"{k} {v}" for k, v in ex["this_gpu"].items()))
    print("checks: " + ", ".join(f"{k}={v}" for k, v in report["checks"].items()))


def _jsonable(value: Any) -> Any:
    """Plain JSON: paths as text, NumPy scalars as Python numbers, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


def recompute(path: Path) -> dict[str, Any]:
    """Derive the FLOP count, memory model and extrapolation again from a saved run's measurements (nothing is rerun)."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    cfg = load_config("clotho", data_root=tempfile.mkdtemp(prefix="rehearsal-config-"))  # only recipes and budgets are read
    report["training"].setdefault("validation_captions", report["shapes"]["captions"]["validation"])
    report["training"]["validation_s_per_caption"] = validation_s_per_caption(report["training"])
    report["flops"], report["t4"] = _flops_and_t4()
    report["memory"] = _memory(report)
    report["extrapolation"] = _extrapolate(cfg, report)
    if "gpu" in report:
        report["extrapolation"]["this_gpu"] = _gpu_run(report)
    report = _jsonable(report)
    write_json_atomically(Path(path), report)
    print_report(report)
    print(f"\nRecomputed {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs=3, default=[24, 8, 8], metavar=("DEV", "VAL", "EVAL"))
    parser.add_argument("--seconds", type=float, nargs=2, default=[15.0, 30.0], metavar=("MIN", "MAX"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's, lowered to what fits in memory")
    parser.add_argument("--text-layers", type=int, default=None, help="default: all-mpnet-base-v2's 12")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="keep the rehearsal's files here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--recompute", type=Path, default=None, metavar="JSON",
                        help="re-derive FLOPs, memory model and extrapolation from a saved report's measurements, and exit")
    args = parser.parse_args(argv)
    if args.recompute:
        recompute(args.recompute)
        return 0
    settings = Settings(clips=dict(zip(SPLITS, args.clips, strict=True)), seconds=tuple(args.seconds), batch_size=args.batch_size,
                        text_layers=args.text_layers, device=args.device, work=args.work, out=args.out)
    try:
        rehearse(settings)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
