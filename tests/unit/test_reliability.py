"""Faults provoked for real without training: bad archives, interrupted extractions, bad caches, bad flags."""
import os
import shutil
import tarfile

import pytest
import tiny_hub
from helpers import QUICK, fails_with

import train
from tfhub_classifier.data import imdb
from tfhub_classifier.model import hub_models


def test_truncated_archive_is_deleted_not_extracted(tmp_path, capsys):
    archive = tiny_hub.write_archive(str(tmp_path / "src.tar.gz"))
    with open(archive, "rb") as f:
        half = f.read()[:-2000]
    truncated = tmp_path / "aclImdb_v1.tar.gz"
    truncated.write_bytes(half)
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match="corrupt.*deleted"):
        imdb.prepare(str(data_dir), "file://" + str(truncated))
    assert os.listdir(data_dir) == []


def test_wrong_md5_is_refused(tmp_path):
    url = "file://" + tiny_hub.write_archive(str(tmp_path / "aclImdb_v1.tar.gz"))
    with pytest.raises(ValueError, match="MD5"):
        imdb.prepare(str(tmp_path / "data"), url, md5="0" * 32)
    assert os.listdir(tmp_path / "data") == []
    assert imdb.prepare(str(tmp_path / "data"), url, md5=imdb.md5_of(url[7:])).endswith("aclImdb")


def test_official_url_is_checked_against_the_official_md5(tmp_path, monkeypatch):
    from tfhub_classifier import runtime
    source = tiny_hub.write_archive(str(tmp_path / "src.tar.gz"))

    def fake_download(name, origin, cache_dir, cache_subdir):
        assert origin == imdb.config.OFFICIAL_DATASET_URL
        return shutil.copy(source, os.path.join(cache_dir, name))
    monkeypatch.setattr(runtime.keras.utils, "get_file", fake_download)
    with pytest.raises(ValueError, match=imdb.config.OFFICIAL_DATASET_MD5):
        imdb.prepare(str(tmp_path / "data"))


def test_interrupted_extraction_leaves_no_dataset(tmp_path, monkeypatch):
    url = "file://" + tiny_hub.write_archive(str(tmp_path / "aclImdb_v1.tar.gz"))
    data_dir = tmp_path / "data"
    real_extractall = tarfile.TarFile.extractall

    def killed_halfway(self, path, members, **kwargs):
        real_extractall(self, path, members=members[:len(members) // 2], **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(tarfile.TarFile, "extractall", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        imdb.prepare(str(data_dir), url)
    assert not os.path.exists(data_dir / "aclImdb")
    monkeypatch.undo()
    root = imdb.prepare(str(data_dir), url)
    readme_and_vocab, train_reviews, test_reviews = 2, 2 * 48, 2 * 24  # write_archive's defaults; no unsup
    assert sum(len(files) for _, _, files in os.walk(root)) == readme_and_vocab + train_reviews + test_reviews


def test_incomplete_hub_cache_entry_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    handle = "http://127.0.0.1:9/models/bert/2"
    entry = hub_models._hub_cache_entry(handle)
    os.makedirs(os.path.join(entry, "variables"))
    messages = []
    with pytest.raises(ValueError, match="offline"):
        hub_models.load_hub_model(handle, "--encoder", log=messages.append)
    assert not os.path.exists(entry)
    assert "incomplete" in messages[0] and "downloading again" in messages[0]


def test_unwritable_model_dir_fails_before_training(flags, capsys):
    flags[flags.index("--model-dir") + 1] = "/proc/imdb_bert"  # read-only even for root
    fails_with(train.main, flags + QUICK, capsys, "/proc/imdb_bert")


@pytest.mark.parametrize("argv, needle", [
    (["--validation-split", "1.5"], "between 0 and 1"),
    (["--seq-length", "2"], "at least 8"),
    (["--max-examples", "-1"], "0 or more"),
    (["--learning-rate", "0"], "positive"),
])
def test_flags_out_of_range(argv, needle, capsys):
    fails_with(train.main, argv, capsys, needle)


def test_seq_length_beyond_the_encoder(flags, capsys):
    fails_with(train.main, flags + QUICK + ["--seq-length", "1024"], capsys,
               "only trained up to sequence length 512")
