"""The one atomic-write helper (config.json, component files, trained modules and their sidecars)."""

import stat

import pytest

from diffstyle360_core.files import write_atomic, write_text_atomic


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
