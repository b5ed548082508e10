"""course_lib.clotho download and extraction, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import py7zr
import pytest
from clotho_fixtures import TINY_CLIPS, FileServer, write_clotho_folder, write_split

from course_lib import clotho, download
from course_lib._stand_ins import pack_clotho_files
from course_lib.clotho import CLOTHO_FILES, ClothoError, RemoteFile, download_clotho, split_file_names
from course_lib.config import SPLITS, load_config
from course_lib.download import DownloadError
from course_lib.pipeline import prepare


def build_remote_files(folder: Path) -> dict[str, bytes]:
    """Clotho's nine files in miniature: one .7z of wavs (under '<split>/') and two CSVs per split."""
    source = write_clotho_folder(folder / "Clotho")
    return {name: path.read_bytes() for name, path in pack_clotho_files(source, folder / "served").items()}


@pytest.fixture(scope="module")
def remote_contents(tmp_path_factory) -> dict[str, bytes]:
    return build_remote_files(tmp_path_factory.mktemp("remote"))


@pytest.fixture
def server(remote_contents):
    running = FileServer(remote_contents)
    yield running
    running.close()


@pytest.fixture
def files(remote_contents) -> dict[str, RemoteFile]:
    """The file table with the md5s of the miniature files (what the real table holds for Zenodo's)."""
    return {name: RemoteFile(name, hashlib.md5(body).hexdigest(), len(body)) for name, body in remote_contents.items()}


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # no pause between retries
    return load_config("clotho", data_root=tmp_path)


def wav_names(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("*.wav")}


def assert_nothing_extracted(cfg, split: str) -> None:
    assert not (cfg.dataset_dir / split).exists()
    assert not list(cfg.dataset_dir.glob(".*partial*"))


def test_real_file_table_covers_every_split():
    for split in SPLITS:
        for name in split_file_names(split):
            entry = CLOTHO_FILES[name]
            assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0
    assert CLOTHO_FILES["clotho_captions_evaluation.csv"].md5 == "1b16b9e57cf7bdb7f13a13802aeb57e2"
    assert clotho.file_url("clotho_audio_evaluation.7z", None).startswith("https://zenodo.org/record/4783391/files/")


def test_download_and_extract_every_split(cfg, server, files):
    dataset_dir = download_clotho(cfg, base_url=server.url, files=files, progress=False)
    assert dataset_dir == cfg.dataset_dir
    for split, clips in TINY_CLIPS.items():
        assert wav_names(dataset_dir / split) == {fname for fname, _ in clips}
        assert (dataset_dir / f"clotho_captions_{split}.csv").is_file()
        assert (dataset_dir / f"clotho_metadata_{split}.csv").is_file()
        assert (cfg.downloads_dir / "clotho" / f"clotho_audio_{split}.7z").is_file()
    assert (dataset_dir / "development" / " Ambience Birds.wav").is_file()  # leading space kept
    assert sorted(server.requests) == sorted(files)
    assert not list(dataset_dir.glob(".*partial*"))


def test_rerun_reuses_everything_without_a_request(cfg, server, files, capsys):
    download_clotho(cfg, base_url=server.url, files=files, progress=False)
    made = len(server.requests)
    capsys.readouterr()
    download_clotho(cfg, base_url=server.url, files=files, progress=False)
    assert len(server.requests) == made
    assert capsys.readouterr().out.count("reused") == 3


def test_split_subset_fetches_only_that_split(cfg, server, files):
    download_clotho(cfg, splits=("evaluation",), base_url=server.url, files=files, progress=False)
    assert sorted(server.requests) == sorted(split_file_names("evaluation"))
    assert [path.name for path in cfg.dataset_dir.iterdir() if path.is_dir()] == ["evaluation"]


def test_corrupted_download_fails_on_md5_and_leaves_nothing(cfg, server, files):
    server.corrupt.add("clotho_audio_validation.7z")
    with pytest.raises(DownloadError, match="md5"):
        download_clotho(cfg, splits=("validation",), base_url=server.url, files=files, progress=False)
    assert [path for path in (cfg.downloads_dir / "clotho").iterdir() if path.suffix != ".lock"] == []
    assert_nothing_extracted(cfg, "validation")


def test_interrupted_transfer_restarts_and_succeeds(cfg, server, files):
    server.break_once.add("clotho_audio_development.7z")
    download_clotho(cfg, splits=("development",), base_url=server.url, files=files, progress=False)
    assert server.requests.count("clotho_audio_development.7z") == 2
    assert wav_names(cfg.dataset_dir / "development") == {fname for fname, _ in TINY_CLIPS["development"]}
    archive = cfg.downloads_dir / "clotho" / "clotho_audio_development.7z"
    assert download.file_md5(archive) == files["clotho_audio_development.7z"].md5


def test_corrupt_archive_leaves_no_split_folder(cfg, server, files, remote_contents):
    name = "clotho_audio_evaluation.7z"
    garbled = remote_contents[name][:32] + bytes(200)  # a valid 7z signature, then nothing usable
    server.contents[name] = garbled
    files = {**files, name: RemoteFile(name, hashlib.md5(garbled).hexdigest(), None)}  # md5 matches what is served
    with pytest.raises(ClothoError, match="Extracting .*clotho_audio_evaluation.7z failed: the archive is damaged") as err:
        download_clotho(cfg, splits=("evaluation",), base_url=server.url, files=files, progress=False)
    assert "download it afresh" in str(err.value)
    assert_nothing_extracted(cfg, "evaluation")


def test_interrupted_extraction_leaves_no_split_folder_then_recovers(cfg, server, files, monkeypatch):
    original = py7zr.SevenZipFile.extractall

    def extract_then_fail(self, path=None, **kwargs):
        original(self, path=path, **kwargs)  # the files are written, then the "disk fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", extract_then_fail)
    with pytest.raises(ClothoError, match="No space left") as err:
        download_clotho(cfg, splits=("development",), base_url=server.url, files=files, progress=False)
    message = str(err.value)
    assert "Free disk space (about " in message and "GB for this split" in message and "the archive is kept" in message
    assert "afresh" not in message
    assert (cfg.downloads_dir / "clotho" / "clotho_audio_development.7z").is_file()
    assert_nothing_extracted(cfg, "development")

    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", original)
    made = len(server.requests)
    download_clotho(cfg, splits=("development",), base_url=server.url, files=files, progress=False)
    assert len(server.requests) == made  # the checked archive in downloads/ was reused
    assert len(wav_names(cfg.dataset_dir / "development")) == len(TINY_CLIPS["development"])


def test_too_little_disk_space_is_caught_before_extracting(cfg, server, files, monkeypatch):
    real_usage = clotho.shutil.disk_usage
    monkeypatch.setattr(clotho.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=100))
    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", lambda *args, **kwargs: pytest.fail("extraction started"))
    with pytest.raises(ClothoError, match=r"only 1e-07 GB free .*Free disk space \(about [0-9.e-]+ GB for this split\)"):
        download_clotho(cfg, splits=("validation",), base_url=server.url, files=files, progress=False)
    assert (cfg.downloads_dir / "clotho" / "clotho_audio_validation.7z").is_file()
    assert_nothing_extracted(cfg, "validation")


def test_archive_missing_a_listed_wav_is_rejected(cfg, server, files, tmp_path):
    split = "validation"
    source = tmp_path / "short"
    write_split(source, split, TINY_CLIPS[split])
    with py7zr.SevenZipFile(tmp_path / "short.7z", "w") as archive:
        fname = TINY_CLIPS[split][0][0]
        archive.write(source / split / fname, arcname=f"{split}/{fname}")
    name = split_file_names(split)[0]
    server.contents[name] = (tmp_path / "short.7z").read_bytes()
    files = {**files, name: RemoteFile(name, hashlib.md5(server.contents[name]).hexdigest(), None)}
    with pytest.raises(ClothoError, match="1 of 2 wav files"):
        download_clotho(cfg, splits=(split,), base_url=server.url, files=files, progress=False)
    assert_nothing_extracted(cfg, split)


def test_archives_can_be_deleted_after_extraction(cfg, server, files):
    download_clotho(cfg, splits=("evaluation",), base_url=server.url, files=files, keep_archives=False, progress=False)
    assert not (cfg.downloads_dir / "clotho" / "clotho_audio_evaluation.7z").exists()
    assert len(wav_names(cfg.dataset_dir / "evaluation")) == 2


def test_the_pipeline_downloads_from_the_url_in_the_environment(cfg, server, files, monkeypatch):
    monkeypatch.setenv("COURSE_CLOTHO_URL", server.url)
    monkeypatch.setattr(clotho, "CLOTHO_FILES", files)
    assert prepare(cfg, until="dataset", verbose=False).dataset_dir == cfg.dataset_dir
    assert all(clotho.split_is_complete(cfg.dataset_dir, split) for split in SPLITS)
    assert len(server.requests) == len(files)
