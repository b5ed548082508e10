"""course_lib.cnn14 (the baseline's CNN14 encoder) and course_lib.panns (PANNs transfer, loading saved
weights, the download and its offline fallback).

Full-width forward passes are slow on 2 cores, so shapes are checked at width 0.125; parameter
counts and key names at full width are checked on the meta device (no memory, no init cost).
The PANNs layout below is written from the published facts, independently of course_lib.
"""

from __future__ import annotations

import argparse
import math
import socket
import subprocess
import sys
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import panns
from course_lib.cnn14 import SILENCE_LOG_MEL, CNN14Encoder, count_parameters, describe_blocks, encoder_from_config
from course_lib.config import load_config
from course_lib.download import DownloadError, file_md5
from course_lib.panns import (
    PANNS_FILENAME,
    ensure_pretrained_encoder,
    fetch_panns_checkpoint,
    load_encoder_weights,
    random_panns_checkpoint,
    save_transferred_encoder,
    transfer_panns,
)

SMALL = 0.125
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
DROPPED = {
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
    "fc_audioset.weight",
    "fc_audioset.bias",
}


def baseline_keys() -> list[str]:
    """The baseline CNN14Encoder's state_dict keys: bn0, cnn.0..47 (conv at 0/3, BN at 1/4 per block), fc.1, fc2."""
    keys = [f"bn0.{name}" for name in BN]
    for block in range(6):
        base = 8 * block
        keys += [f"cnn.{base}.weight", *(f"cnn.{base + 1}.{n}" for n in BN)]
        keys += [f"cnn.{base + 3}.weight", *(f"cnn.{base + 4}.{n}" for n in BN)]
    return keys + ["fc.1.weight", "fc.1.bias", "fc2.weight", "fc2.bias"]


def panns_layout(width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the 84 tensors under 'model' in PANNs' Cnn14_mAP=0.431.pth (at a given width)."""
    channels = [round(c * width) for c in (64, 128, 256, 512, 1024, 2048)]
    layout = {
        "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        "logmel_extractor.melW": (513, 64),
    }
    layout |= {f"bn0.{n}": () if n == "num_batches_tracked" else (64,) for n in BN}
    for k, (cin, cout) in enumerate(zip([1, *channels[:-1]], channels, strict=True), start=1):
        layout[f"conv_block{k}.conv1.weight"] = (cout, cin, 3, 3)
        layout[f"conv_block{k}.conv2.weight"] = (cout, cout, 3, 3)
        for bn in ("bn1", "bn2"):
            layout |= {f"conv_block{k}.{bn}.{n}": () if n == "num_batches_tracked" else (cout,) for n in BN}
    c = channels[-1]
    return layout | {"fc1.weight": (c, c), "fc1.bias": (c,), "fc_audioset.weight": (527, c), "fc_audioset.bias": (527,)}


def build_panns(width: float = 1.0) -> dict[str, dict[str, torch.Tensor]]:
    """A checkpoint in PANNs' layout from random tensors (integer counters for num_batches_tracked)."""
    torch.manual_seed(1)
    model = {
        name: torch.tensor(1234) if name.endswith("num_batches_tracked") else torch.rand(shape) + 0.1
        for name, shape in panns_layout(width).items()
    }
    return {"model": model}


def expected_key_map() -> dict[str, str]:
    """Our key -> PANNs key, written out from the baseline's transfer script."""
    pairs = {f"bn0.{n}": f"bn0.{n}" for n in BN}
    for k in range(1, 7):
        base = 8 * (k - 1)
        pairs[f"cnn.{base}.weight"] = f"conv_block{k}.conv1.weight"
        pairs[f"cnn.{base + 3}.weight"] = f"conv_block{k}.conv2.weight"
        pairs |= {f"cnn.{base + 1}.{n}": f"conv_block{k}.bn1.{n}" for n in BN}
        pairs |= {f"cnn.{base + 4}.{n}": f"conv_block{k}.bn2.{n}" for n in BN}
    return pairs | {"fc.1.weight": "fc1.weight", "fc.1.bias": "fc1.bias"}


@pytest.fixture(scope="module")
def full_panns():
    return build_panns(1.0)


@pytest.fixture
def small_encoder():
    torch.manual_seed(0)
    return CNN14Encoder(width=SMALL).eval()


# --- the architecture ------------------------------------------------------------------------


def test_full_width_parameter_counts_match_the_reference_table():
    with torch.device("meta"):
        encoder = CNN14Encoder()
    assert count_parameters(encoder) == 80_288_492
    per_block = [count_parameters(block) for block in encoder.blocks]
    assert per_block == [37_696, 221_696, 885_760, 3_540_992, 14_159_872, 56_631_296]
    heads = (count_parameters(encoder.bn0), count_parameters(encoder.fc), count_parameters(encoder.fc2))
    assert heads == (128, 4_196_352, 614_700)
    running = sum(v.numel() for k, v in encoder.state_dict().items() if "running" in k)
    assert running == 16_256


def test_state_dict_keys_and_modules_are_the_baselines():
    with torch.device("meta"):
        encoder = CNN14Encoder()
    assert list(encoder.state_dict()) == baseline_keys()
    assert len(encoder.cnn) == 48
    for base, channels in zip(range(0, 48, 8), (64, 128, 256, 512, 1024, 2048), strict=True):
        conv1, bn1, relu, conv2, bn2, _, pool, dropout = encoder.cnn[base : base + 8]
        assert isinstance(conv1, nn.Conv2d) and conv1.bias is None and conv1.kernel_size == (3, 3) and conv1.padding == (1, 1)
        assert isinstance(conv2, nn.Conv2d) and conv2.out_channels == channels
        assert isinstance(bn1, nn.BatchNorm2d) and isinstance(bn2, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2
        assert isinstance(dropout, nn.Dropout) and dropout.p == 0.2
    assert [type(m) for m in encoder.fc] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout] and encoder.fc[0].p == 0.5
    assert encoder.fc2.out_features == 300


def test_initialisation_is_kaiming_with_zero_bias(small_encoder):
    assert torch.count_nonzero(small_encoder.fc2.bias) == 0 and torch.count_nonzero(small_encoder.fc[1].bias) == 0
    assert torch.all(small_encoder.cnn[1].weight == 1) and torch.all(small_encoder.cnn[1].bias == 0)
    weight = small_encoder.cnn[24].weight  # block 4, conv1: fan_in = 32 * 9
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.1)


@pytest.mark.parametrize("frames, steps", [(751, 11), (1501, 23), (501, 7)])
def test_output_shape_and_time_shrinking_64x(small_encoder, frames, steps):
    with torch.no_grad():
        out = small_encoder(torch.randn(2, frames, 64))
    assert out.shape == (2, 300) and torch.isfinite(out).all()
    rows = describe_blocks(small_encoder, frames)
    assert rows[7]["name"] == "block 6" and rows[7]["output shape"] == (1, 256, steps, 1)
    assert rows[-1]["output shape"] == (1, 300)
    assert sum(row["parameters"] for row in rows) == count_parameters(small_encoder)


def test_forward_is_the_baselines_bn0_cnn_pooling_head(small_encoder):
    x = torch.randn(2, 200, 64)
    # the baseline's forward, written out: bn0 over mel bins, cnn, mean over frequency, max + mean over time, fc, fc2
    h = small_encoder.bn0(x.unsqueeze(1).transpose(1, 3)).transpose(1, 3)
    h = small_encoder.cnn(h).mean(dim=3)
    expected = small_encoder.fc2(small_encoder.fc(h.amax(dim=2) + h.mean(dim=2)))
    with torch.no_grad():
        assert torch.allclose(small_encoder(x), expected, atol=1e-5)
    maps = torch.tensor([[[[1.0, 3.0], [5.0, 7.0], [0.0, 0.0]]]])  # (1, 1, time 3, freq 2): freq means 2, 6, 0
    assert CNN14Encoder.pool_clip(maps).item() == pytest.approx(6.0 + 8.0 / 3)


def test_width_scales_channels_and_config_picks_the_profiles_encoder(tmp_path):
    cfg = load_config("synthetic", data_root=tmp_path)
    encoder = encoder_from_config(cfg)
    assert encoder.channels == (8, 16, 32, 64, 128, 256) and encoder.fc[1].in_features == 256
    assert encoder.fc2.out_features == cfg.baseline["DualEncoderModel"]["audio_enc"]["out_dim"] == 300
    with torch.device("meta"):
        assert encoder_from_config(load_config("clotho", data_root=tmp_path)).channels[-1] == 2048


def test_short_clip_is_padded_with_silence_and_warned_once(small_encoder):
    clip = torch.randn(1, 30, 64)
    with pytest.warns(UserWarning, match="30 frames is shorter than CNN14's minimum of 64"):
        out = small_encoder(clip)
    padded = torch.cat([clip, torch.full((1, 34, 64), SILENCE_LOG_MEL)], dim=1)
    assert torch.allclose(out, small_encoder(padded), atol=1e-6)
    assert SILENCE_LOG_MEL == pytest.approx(np.log(np.spacing(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_encoder(torch.randn(1, 10, 64))  # second short clip: no second warning


@pytest.mark.parametrize(
    "shape, words",
    [((2, 64, 751), "transposed"), ((2, 751, 32), "mel bins"), ((751, 64), "unsqueeze"), ((2, 1, 751, 64), "mel bins")],
)
def test_wrong_input_shape_gets_a_clear_error(small_encoder, shape, words):
    with pytest.raises(ValueError, match="expects") as error:
        small_encoder(torch.randn(*shape))
    assert words in str(error.value) and str(tuple(shape)) in str(error.value)


def test_float64_log_mels_are_accepted(small_encoder):
    with torch.no_grad():
        assert small_encoder(torch.randn(1, 128, 64, dtype=torch.float64)).dtype == torch.float32


# --- PANNs transfer --------------------------------------------------------------------------


def test_full_width_transfer_copies_79_tensors_unchanged(full_panns):
    assert len(full_panns["model"]) == 84
    torch.manual_seed(0)
    encoder, report = transfer_panns(full_panns)
    state, panns = encoder.state_dict(), full_panns["model"]
    assert report.copied == expected_key_map() and len(report.copied) == 79
    for ours, theirs in expected_key_map().items():
        assert torch.equal(state[ours], panns[theirs]), ours
    assert set(report.dropped) == DROPPED and not DROPPED & set(state)
    assert report.random == ["fc2.weight", "fc2.bias"]
    assert torch.count_nonzero(state["fc2.bias"]) == 0  # fc2 keeps its random init
    assert state["fc2.weight"].std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)
    text = str(report)
    assert "Copied 79 tensors" in text and "Dropped 5 tensors" in text and "fc2.weight" in text
    assert all(name in text for name in DROPPED)


def test_stand_in_checkpoint_has_pannss_exact_layout():
    for width in (1.0, SMALL):
        model = random_panns_checkpoint(width)["model"]
        assert {name: tuple(t.shape) for name, t in model.items()} == panns_layout(width)
        assert model["bn0.num_batches_tracked"].dtype == torch.int64 and (model["bn0.running_var"] > 0).all()


def test_transfer_from_a_file_then_save_and_reload(tmp_path, capsys):
    path = tmp_path / "Cnn14_small.pth"
    torch.save({"iteration": 10, **build_panns(SMALL)}, path)
    encoder, report = transfer_panns(path, width=SMALL)
    assert capsys.readouterr().out == ""  # an int beside the tensors loads with weights_only=True, no fallback
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = tmp_path / "models" / f".CNN14_300.pth.{finished.pid}.partial"  # what a killed earlier save would leave
    stale.parent.mkdir()
    stale.write_bytes(b"half a file")
    saved = save_transferred_encoder(encoder, tmp_path / "models" / "CNN14_300.pth")
    assert [p.name for p in saved.parent.iterdir()] == ["CNN14_300.pth"]  # stale and new temporaries gone
    assert set(torch.load(saved, weights_only=True)) == set(baseline_keys())
    reloaded = load_encoder_weights(CNN14Encoder(width=SMALL), saved)
    for key, value in encoder.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_wrong_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no 'model' key"):
        transfer_panns({"weights": torch.zeros(3)})
    with pytest.raises(ValueError, match="CNN14Encoder state_dict"):
        transfer_panns(CNN14Encoder(width=SMALL).state_dict(), width=SMALL)
    with pytest.raises(ValueError, match="pass width=0.125"):
        transfer_panns(build_panns(SMALL), width=0.25)
    missing = build_panns(SMALL)
    del missing["model"]["conv_block3.conv2.weight"]
    with pytest.raises(ValueError, match="1 Cnn14 tensors missing.*conv_block3.conv2.weight"):
        transfer_panns(missing, width=SMALL)
    foreign = build_panns(SMALL)
    foreign["model"]["pre_conv0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="pre_conv0.weight"):
        transfer_panns(foreign, width=SMALL)
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth is not a readable PyTorch checkpoint"):
        transfer_panns(junk)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        transfer_panns(tmp_path / "absent.pth")


def checkpoint_with_python_objects(path):
    """A small PANNs-layout file that also pickles an argparse.Namespace, which weights_only=True refuses."""
    torch.save({"iteration": 10, "sampler": argparse.Namespace(seed=1), **build_panns(SMALL)}, path)
    with pytest.raises(Exception, match="(?i)weights only"):
        torch.load(path, weights_only=True)
    return path


def test_trusted_panns_file_with_python_objects_loads_fully(tmp_path, monkeypatch, capsys):
    path = checkpoint_with_python_objects(tmp_path / PANNS_FILENAME)
    monkeypatch.setattr(panns, "PANNS_MD5", file_md5(path))
    encoder, _ = transfer_panns(path, width=SMALL)
    said = capsys.readouterr().out
    assert "published PANNs checksum" in said and "weights_only=False" in said
    assert torch.equal(encoder.state_dict()["cnn.0.weight"], build_panns(SMALL)["model"]["conv_block1.conv1.weight"])


def test_untrusted_file_with_python_objects_gets_a_clear_error(tmp_path, monkeypatch):
    path = checkpoint_with_python_objects(tmp_path / "someone_elses.pth")
    monkeypatch.setattr(panns, "PANNS_MD5", "0" * 32)
    with pytest.raises(ValueError, match="someone_elses.pth holds .* not the PANNs checksum") as error:
        transfer_panns(path, width=SMALL)
    assert "torch.load(path, weights_only=False)" in str(error.value)
    with pytest.raises(ValueError, match="not the PANNs checksum"):
        load_encoder_weights(CNN14Encoder(width=SMALL), path)


# --- loading released / trained weights ------------------------------------------------------


def test_load_weights_from_dual_encoder_and_ray_checkpoints(tmp_path):
    torch.manual_seed(3)
    source = CNN14Encoder(width=SMALL)
    dual = {f"audio_enc.{k}": v for k, v in source.state_dict().items()}
    dual |= {"text_enc.embedding.weight": torch.zeros(5, 8), "text_enc.fc.weight": torch.zeros(300, 8)}
    optimizer = torch.optim.Adam(source.parameters()).state_dict()
    torch.save((dual, optimizer), tmp_path / "checkpoint")
    for checkpoint in (dual, tmp_path / "checkpoint", source.state_dict()):
        loaded = load_encoder_weights(CNN14Encoder(width=SMALL), checkpoint)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_load_weights_says_what_the_file_is_made_for(tmp_path):
    small = CNN14Encoder(width=SMALL).state_dict()
    with pytest.raises(ValueError, match=r"made for CNN14Encoder\(out_dim=300, width=0.125\)"):
        load_encoder_weights(CNN14Encoder(width=0.25), small)
    with pytest.raises(ValueError, match=r"made for CNN14Encoder\(out_dim=128, width=0.125\)"):
        load_encoder_weights(CNN14Encoder(width=SMALL), CNN14Encoder(out_dim=128, width=SMALL).state_dict())
    with pytest.raises(ValueError, match="PANNs Cnn14 checkpoint.*transfer_panns"):
        load_encoder_weights(CNN14Encoder(width=SMALL), build_panns(SMALL))
    partial = dict(small)
    del partial["fc2.bias"]
    with pytest.raises(ValueError, match=r"1 keys missing \(e.g. \['fc2.bias'\]\)"):
        load_encoder_weights(CNN14Encoder(width=SMALL), partial)


# --- the profile's encoder, pretrained or not ------------------------------------------------


def test_synthetic_profile_uses_a_random_narrow_encoder(tmp_path, capsys):
    encoder, status = ensure_pretrained_encoder(load_config("synthetic", data_root=tmp_path))
    assert encoder.width == SMALL and "pretrained: false" in status and "random" in status
    assert status in capsys.readouterr().out
    assert not (tmp_path / "downloads").exists()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/Cnn14_mAP%3D0.431.pth"


def forbid_download(*args, **kwargs):
    raise AssertionError("course_lib.download.fetch was called")


@pytest.fixture
def panns_server(tmp_path):
    """A local HTTP server (127.0.0.1) serving the files of a folder: (folder, URL of the PANNs file in it)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/Cnn14_mAP%3D0.431.pth"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_fetch_from_a_server_then_transfer(tmp_path, monkeypatch, panns_server, capsys):
    folder, url = panns_server
    torch.save(build_panns(SMALL), folder / PANNS_FILENAME)
    monkeypatch.setattr(panns, "PANNS_MD5", file_md5(folder / PANNS_FILENAME))
    cfg = load_config("clotho", data_root=tmp_path / "root")
    path = fetch_panns_checkpoint(cfg, url=url, retries=1, timeout_seconds=10)
    assert path == cfg.downloads_dir / PANNS_FILENAME
    assert path.read_bytes() == (folder / PANNS_FILENAME).read_bytes()
    assert f"Downloading {PANNS_FILENAME} (327 MB) from 127.0.0.1" in capsys.readouterr().out
    encoder, report = transfer_panns(path, width=SMALL)
    assert len(report.copied) == 79
    assert torch.equal(encoder.state_dict()["cnn.44.running_var"], build_panns(SMALL)["model"]["conv_block6.bn2.running_var"])
    (folder / PANNS_FILENAME).unlink()  # a second fetch must not need the server
    monkeypatch.setattr(panns, "fetch", forbid_download)
    assert fetch_panns_checkpoint(cfg, url=url) == path


@pytest.mark.parametrize("served, kind", [(True, "checksum"), (False, "http")])
def test_checksum_failure_or_refusal_is_raised_not_taken_for_offline(tmp_path, monkeypatch, panns_server, served, kind):
    folder, url = panns_server
    if served:  # a file whose md5 is not the (patched) published one; otherwise the server answers 404
        torch.save(build_panns(SMALL), folder / PANNS_FILENAME)
    monkeypatch.setattr(panns, "PANNS_MD5", "0" * 32)
    cfg = load_config("clotho", data_root=tmp_path / "root")
    with pytest.raises(DownloadError) as error:
        ensure_pretrained_encoder(cfg, url=url, retries=1, timeout_seconds=10)
    assert error.value.kind == kind
    assert not (cfg.downloads_dir / PANNS_FILENAME).exists() and not (cfg.models_dir / "CNN14_300.pth").exists()


def test_offline_falls_back_to_random_init_in_one_line_without_downloading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(panns, "fetch", forbid_download)  # the probe alone must decide: no 3 x 60 s retries
    cfg = load_config("clotho", data_root=tmp_path)
    encoder, status = ensure_pretrained_encoder(cfg, url=closed_port_url())
    assert status.startswith("Offline:") and "could not connect to 127.0.0.1" in status and "random initialisation" in status
    assert "\n" not in status and status in capsys.readouterr().out
    assert encoder.width == 1.0 and torch.count_nonzero(encoder.fc[1].bias) == 0  # nothing was loaded
    assert not (cfg.models_dir / "CNN14_300.pth").exists()


def test_a_download_that_keeps_breaking_off_counts_as_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(panns, "host_reachable", lambda url, seconds: True)  # the probe passes, then the transfer fails
    cfg = load_config("clotho", data_root=tmp_path)
    _, status = ensure_pretrained_encoder(cfg, url=closed_port_url(), retries=1, timeout_seconds=5)
    assert status.startswith("Offline:") and "broke off" in status and "\n" not in status
    assert not (cfg.downloads_dir / PANNS_FILENAME).exists()


def test_pretrained_encoder_is_transferred_once_then_reused(tmp_path, monkeypatch, full_panns, capsys):
    checkpoint = tmp_path / "downloads" / PANNS_FILENAME  # already downloaded: no network needed
    checkpoint.parent.mkdir()
    torch.save(full_panns, checkpoint)
    monkeypatch.setattr(panns, "PANNS_MD5", file_md5(checkpoint))
    monkeypatch.setattr(panns, "fetch", forbid_download)
    monkeypatch.setattr(panns, "host_reachable", lambda url, seconds: False)
    cfg = load_config("clotho", data_root=tmp_path)
    first, status = ensure_pretrained_encoder(cfg)
    assert status.startswith("Transferred") and "Copied 79 tensors" in status
    assert torch.equal(first.state_dict()["cnn.44.running_var"], full_panns["model"]["conv_block6.bn2.running_var"])
    second, status = ensure_pretrained_encoder(cfg)
    assert status.startswith("Loaded")
    assert all(torch.equal(second.state_dict()[k], v) for k, v in first.state_dict().items())
    (cfg.models_dir / "CNN14_300.pth").write_bytes(b"broken")
    _, status = ensure_pretrained_encoder(cfg)
    assert status.startswith("Transferred") and "cannot be used" in capsys.readouterr().out
    for big in (checkpoint, cfg.models_dir / "CNN14_300.pth"):  # 650 MB that pytest would keep in /tmp
        big.unlink()


# --- checkpoints the course refuses, in plain words --------------------------------------------------------


def test_a_folder_is_named_as_a_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(CNN14Encoder(width=SMALL).state_dict(), folder / "best.pth")
    with pytest.raises(IsADirectoryError, match=r"run is a folder, not a file \(it holds best.pth\)"):
        load_encoder_weights(CNN14Encoder(width=SMALL), folder)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        transfer_panns(folder, width=SMALL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_weights_are_refused(tmp_path, bad):
    state = CNN14Encoder(width=SMALL).state_dict()
    state["cnn.3.weight"][0, 0, 0, 0] = bad
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"diverged.pth holds NaN or infinite weights in 1 tensors \(e.g. cnn.3.weight: 1 of"):
        load_encoder_weights(CNN14Encoder(width=SMALL), path)
    stand_in = build_panns(SMALL)
    stand_in["model"]["fc1.weight"][0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite weights .*fc1.weight"):
        transfer_panns(stand_in, width=SMALL)


def test_torchs_own_weights_only_refusal_is_explained_in_plain_words(tmp_path, monkeypatch):
    import pickle

    path = tmp_path / "plain_pickle.pth"  # pickled without torch.save: torch's refusal names no global
    with open(path, "wb") as handle:
        pickle.dump({"config": argparse.Namespace(lr=1), "weights": [1.0]}, handle)
    monkeypatch.setattr(panns, "PANNS_MD5", "0" * 32)
    with pytest.raises(ValueError) as error:
        load_encoder_weights(CNN14Encoder(width=SMALL), path)
    message = str(error.value)
    assert "plain_pickle.pth holds Python objects besides tensors" in message and "Unpickling it can run code" in message
    assert "torch.load(path, weights_only=False)" in message and "WeightsUnpickler" not in message
