"""The one atomic-write helper (config.json, component files, trained modules and their sidecars)."""

import hashlib
import os
import stat

import pytest

from diffstyle360_core.files import TEMP_SUFFIX, sha256_file, temp_prefix, write_atomic, write_text_atomic


def test_write_replaces_the_file_whole_with_mode_0644(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    assert write_text_atomic(target, "new ü") == target
    assert target.read_text(encoding="utf-8") == "new ü"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    target = tmp_path / "unet.safetensors"
    target.write_bytes(b"complete old file")

    def half_write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, half_write)
    assert target.read_bytes() == b"complete old file"
    assert [p.name for p in tmp_path.iterdir()] == ["unet.safetensors"]


def test_fsync_flushes_the_data_before_the_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    """The crash-consistent mode of the run journals: data on disk, then the name, then the folder entry."""
    target, steps = tmp_path / ".ds360-journal.json", []
    real_fsync = os.fsync

    def fsync(fd):
        steps.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        steps.append(("rename", os.path.basename(src), dst))
        os.replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text_atomic(target, '{"a": 1}\n', fsync=True, rename=rename)
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n'
    (_, synced_tmp), (_, tmp_name, dst), (_, synced_dir) = steps
    assert os.path.basename(synced_tmp) == tmp_name and dst == target and synced_dir == str(tmp_path)
    assert tmp_name.startswith(".ds360-journal.json.") and tmp_name.endswith(TEMP_SUFFIX)  # a hidden name keeps its start


def test_without_fsync_nothing_is_flushed(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync without fsync=True"))
    write_text_atomic(tmp_path / "summary.csv", "job\n")
    assert (tmp_path / "summary.csv").read_text(encoding="utf-8") == "job\n"


def test_a_failed_rename_removes_the_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def rename(src, dst):
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        write_text_atomic(target, "new", fsync=True, rename=rename)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"] and target.read_text() == "old"


def test_temporary_names_are_hidden_beside_the_target():
    assert temp_prefix("config.json") == ".config.json."
    assert temp_prefix(".ds360-manifest-stylize.json") == ".ds360-manifest-stylize.json."


def test_sha256_file_hashes_in_blocks_reports_them_and_goes_on_from_a_given_hasher(tmp_path):
    data = os.urandom(8 * 2**20 + 3)  # one full block and a short one
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    seen = []
    assert sha256_file(path, on_bytes=seen.append).hexdigest() == hashlib.sha256(data).hexdigest()
    assert seen == [8 * 2**20, 3]
    head = hashlib.sha256(b"already downloaded")
    assert sha256_file(path, head) is head
    assert head.hexdigest() == hashlib.sha256(b"already downloaded" + data).hexdigest()
