"""files.py: everything written atomically is staged beside its final name and renamed into place."""
import json
import os

import pytest

from tfhub_classifier import files


def test_a_staging_folder_sits_beside_its_target_and_clears_a_killed_attempts_leftovers(tmp_path):
    leftover = tmp_path / ".model.saving-0123456789ab"
    leftover.mkdir()
    (leftover / "half_written").write_text("x")
    with files.staging_folder(tmp_path / "model", "saving") as staging:
        assert os.path.dirname(staging) == str(tmp_path) and os.path.basename(staging).startswith(".model.saving-")
        assert not leftover.exists()
        (tmp_path / "model").mkdir()
        os.rename(staging, tmp_path / "model")  # the caller's rename into place
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_failed_write_leaves_neither_its_staging_folder_nor_a_target(tmp_path):
    with pytest.raises(OSError), files.staging_folder(tmp_path / "out", "export") as staging:
        (tmp_path / "kept").write_text("the user's")
        open(os.path.join(staging, "saved_model.pb"), "w").close()
        raise OSError(28, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["kept"]


def test_write_json_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = str(tmp_path / "config.json")
    files.write_json(path, {"epochs": 4})

    class DiskFull:
        def __init__(self, name, mode):
            self.f = open(name, mode)

        def __enter__(self):
            return self

        def __exit__(self, *error):
            self.f.close()

        def write(self, content):
            self.f.write(content[:5])
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(files, "open", DiskFull, raising=False)  # the module's open, before the builtin
    with pytest.raises(OSError):
        files.write_json(path, {"epochs": 5})
    with open(path) as f:
        assert json.load(f) == {"epochs": 4}
    assert os.listdir(tmp_path) == ["config.json"]  # no half-written file left beside it


def test_write_json_leaves_the_old_file_and_nothing_else_when_the_rename_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.json")
    files.write_json(path, {"accuracy": 0.9})

    def read_only(source, target):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(PermissionError):
        files.write_json(path, {"accuracy": 0.8})
    assert os.listdir(tmp_path) == ["metrics.json"]
    with open(path) as f:
        assert json.load(f) == {"accuracy": 0.9}


def test_a_private_staging_folder_is_its_owners_alone_and_leftovers_can_be_left_be(tmp_path):
    """A saved model stays its owner's (0700); an export leaves another export's staging folder alone."""
    other = tmp_path / ".out.export-0123456789ab"
    other.mkdir()
    with files.staging_folder(tmp_path / "model", "saving", private=True) as staging:
        assert os.stat(staging).st_mode & 0o777 == 0o700
    with files.staging_folder(tmp_path / "out", "export", clear_leftovers=False):
        assert other.exists()
