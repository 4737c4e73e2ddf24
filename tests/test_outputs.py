"""Run outputs (issues 10, 14): a folder holds complete runs; a run replaces only its kind's manifest set.

Interrupted saves, concurrent runs, fewer views over an older run, unwritable
folders and a full disk, all on small tensors (no model)."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffstyle360_core.cli import outputs
from diffstyle360_core.cli.saving import save_views
from diffstyle360_core.cli.outputs import OutputError, RunOutput, check_writable

ROOT = Path(__file__).resolve().parents[1]


def _views(n, level):
    """n distinct 16x16 frames; every pixel of frame i encodes (level, i)."""
    v = torch.full((n, 3, 16, 16), level)
    v[:, 1] = torch.linspace(-1, 1, n)[:, None, None]
    return v


def _run(folder, views, **kw):
    """What the CLI does: views + turntable + back view into one RunOutput."""
    with RunOutput(folder, **kw) as run:
        save_views(views, run)
        save_views(views[:1], run, prefix="back_views/content_back", formats=("png",))
        run.commit()


def _snapshot(folder):
    """{relative path: bytes} of every file, hidden ones included."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean(folder):
    names = [p.name for p in Path(folder).iterdir()]
    hidden = [n for n in names if n.startswith(".ds360") and not re.fullmatch(r"\.ds360-manifest-[\w-]+\.json", n)]
    assert not hidden, names  # only manifests: no temp folder, journal, probe or lock left
    assert all(p.stat().st_size > 0 for p in Path(folder).rglob("*") if p.is_file())  # no 0-byte file


def _frames(folder):
    with Image.open(Path(folder) / "turntable.gif") as gif:
        return gif.n_frames


# --------------------------------------------------------------------------- #
# interrupted save
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("earlier_run", [True, False])
def test_ctrl_c_between_files_leaves_the_old_set_or_nothing(tmp_path, monkeypatch, earlier_run):
    out = tmp_path / "out"
    if earlier_run:
        _run(out, _views(8, 0.5))
    before = _snapshot(out) if out.exists() else {}
    real_write, calls = RunOutput.write, []

    def write_then_interrupt(self, name, writer):
        if len(calls) == 2:  # the signal arrives after the 2nd file was written
            raise KeyboardInterrupt
        calls.append(name)
        return real_write(self, name, writer)

    monkeypatch.setattr(RunOutput, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(out, _views(6, -0.5))
    assert calls == ["view_000.png", "view_001.png"]
    if earlier_run:
        assert _snapshot(out) == before  # the earlier complete set, byte for byte
        _assert_clean(out)
    else:
        assert not out.exists()  # nothing at all: the folder made for the run is gone again


def test_ctrl_c_during_the_commit_is_held_until_the_new_set_is_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(out, _views(8, 0.5))
    real_replace, moves = os.replace, []

    def replace_with_signal(src, dst):
        moves.append(Path(dst).name)
        if len(moves) == 3:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C in the middle of the renames
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace_with_signal)
    with pytest.raises(KeyboardInterrupt):
        _run(out, _views(6, -0.5))
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert len(moves) > 3  # the renames went on after the signal
    assert sorted(p.name for p in out.glob("view_*.png")) == [f"view_{i:03d}.png" for i in range(6)]
    assert _frames(out) == 6 and (out / "back_views" / "content_back_000.png").is_file()
    _assert_clean(out)


def test_a_failed_rename_puts_the_earlier_run_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(out, _views(8, 0.5))
    before = _snapshot(out)
    real_replace, moves = os.replace, []

    def replace_fails_once_new_files_move(src, dst):
        moves.append(src)
        if ".ds360-partial-" in str(src) and len([m for m in moves if ".ds360-partial-" in str(m)]) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace_fails_once_new_files_move)
    with pytest.raises(OutputError, match=r"could not move the results into .*out.*left as it was") as err:
        _run(out, _views(6, -0.5))
    assert err.value.errno == errno.EIO
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert _snapshot(out) == before
    _assert_clean(out)


# --------------------------------------------------------------------------- #
# concurrent runs, stale views
# --------------------------------------------------------------------------- #
def test_a_second_run_on_the_same_folder_is_refused_not_interleaved(tmp_path):
    out = tmp_path / "out"
    started, release, results = threading.Event(), threading.Event(), {}

    def first():
        with RunOutput(out) as run:
            save_views(_views(8, 0.5), run)
            started.set()
            release.wait(10)  # still "sampling" while the second run starts
            run.commit()
        results["first"] = "done"

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(10)
    try:
        with pytest.raises(OutputError, match=rf"output folder {out} is in use by another DiffStyle360 run "
                                              rf"\(process {os.getpid()}"):
            _run(out, _views(6, -0.5))
    finally:
        release.set()
        thread.join(10)
    assert results == {"first": "done"}
    assert len(list(out.glob("view_*.png"))) == 8 and _frames(out) == 8  # only the first run's files
    _assert_clean(out)
    _run(out, _views(6, -0.5))  # the lock is gone with the first run
    assert len(list(out.glob("view_*.png"))) == 6


def test_the_lock_holds_across_processes_and_dies_with_its_process(tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from diffstyle360_core.cli.outputs import RunOutput
        with RunOutput({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"{out} is in use .*process {holder.pid}"):
            RunOutput(out).open()
        holder.kill()  # a crashed run: the OS releases its lock
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    _run(out, _views(2, 0.0))
    assert len(list(out.glob("view_*.png"))) == 2
    _assert_clean(out)  # the dead run's temp folder was cleaned up too


def test_fewer_views_over_an_older_run_leave_no_stale_views(tmp_path):
    out = tmp_path / "out"
    _run(out, _views(8, 0.5))
    (out / "notes.txt").write_text("mine")  # not ours: kept
    with RunOutput(out) as run:  # a run of the same kind with fewer views replaces exactly the earlier set
        save_views(_views(6, -0.5), run)
        run.commit()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"view_{i:03d}.png" for i in range(6)] + ["turntable.gif", "turntable.webp", "notes.txt"])
    assert _frames(out) == 6
    assert np.asarray(Image.open(out / "view_005.png"))[0, 0, 0] == 64  # the new run's frame (level -0.5)
    assert outputs.current_files(out) == sorted([f"view_{i:03d}.png" for i in range(6)]
                                                + ["turntable.gif", "turntable.webp"])
    _assert_clean(out)


def test_save_views_on_a_folder_replaces_only_its_own_earlier_set(tmp_path):
    out = tmp_path / "out"
    save_views(_views(4, 0.5), out, formats=("png",))
    (out / "view_007.png").write_bytes(b"the user's own file")
    save_views(_views(3, 0.0), out, formats=("png",))  # its own earlier set: replaced, view_003 goes
    assert sorted(p.name for p in out.glob("view_*.png")) == ["view_000.png", "view_001.png", "view_002.png",
                                                              "view_007.png"]
    with pytest.raises(OutputError, match=r"view_007.png already exists and was not written by an earlier "
                                          r"save_views-view run in .*; move that file away or choose another"):
        save_views(_views(8, 0.0), out, formats=("png",))  # would overwrite the user's file: refused
    assert (out / "view_007.png").read_bytes() == b"the user's own file"
    assert len(list(out.glob("view_*.png"))) == 4
    with pytest.raises(OutputError, match=r"view_000.png already exists and was not written by an earlier run"):
        _run(out, _views(2, 0.0))  # another kind of run does not own save_views' files
    _assert_clean(out)


def test_save_views_prefixes_that_clean_to_one_name_keep_their_own_sets(tmp_path):
    out = tmp_path / "out"
    save_views(_views(2, 0.5), out, prefix="a/b", formats=("png",))
    save_views(_views(2, 0.0), out, prefix="a_b", formats=("png",))  # 'a/b' cleans to 'a_b': not the same set
    assert sorted(p.name for p in (out / "a").glob("b_*.png")) == ["b_000.png", "b_001.png"]
    assert sorted(p.name for p in out.glob("a_b_*.png")) == ["a_b_000.png", "a_b_001.png"]
    long_a, long_b = "x" * 40 + "_one", "x" * 40 + "_two"  # the same first 40 characters
    save_views(_views(1, 0.5), out, prefix=long_a, formats=("png",))
    save_views(_views(1, 0.0), out, prefix=long_b, formats=("png",))
    assert (out / f"{long_a}_000.png").is_file() and (out / f"{long_b}_000.png").is_file()
    assert outputs.manifest_path(out, "save_views-a_b").is_file()  # a prefix that is a valid kind keeps its name
    _assert_clean(out)


def test_a_file_changed_after_the_run_is_the_users_and_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    _run(out, _views(4, 0.5))
    (out / "view_003.png").write_bytes(b"retouched by hand")  # same name, other content: no longer ours
    with pytest.raises(OutputError, match=r"view_003.png was changed after an earlier run wrote it; move that file"):
        _run(out, _views(4, 0.0))
    _run(out, _views(2, 0.0))  # does not write view_003: runs, deletes the unchanged view_002, keeps view_003
    assert sorted(p.name for p in out.glob("view_*.png")) == ["view_000.png", "view_001.png", "view_003.png"]
    assert (out / "view_003.png").read_bytes() == b"retouched by hand"
    assert "view_003.png" not in outputs.current_files(out)


def test_runs_of_different_kinds_keep_their_own_files(tmp_path):
    out = tmp_path / "out"
    with RunOutput(out, kind="stylize") as run:
        save_views(_views(3, 0.5), run)
        run.commit()
    with RunOutput(out, kind="back-view") as run:
        run.write("back_000.png", lambda p: Path(p).write_bytes(b"back 1"))
        run.commit()
    with RunOutput(out, kind="stylize") as run:  # fewer views: only stylize's own files change
        save_views(_views(2, 0.0), run)
        run.commit()
    with RunOutput(out, kind="back-view") as run:
        run.write("back_000.png", lambda p: Path(p).write_bytes(b"back 2"))
        run.commit()
    assert (out / "back_000.png").read_bytes() == b"back 2"
    assert outputs.current_files(out, "stylize") == ["turntable.gif", "turntable.webp", "view_000.png",
                                                     "view_001.png"]
    assert outputs.current_files(out, "back-view") == ["back_000.png"]
    with pytest.raises(OutputError, match=r"back_000.png already exists and was not written by an earlier stylize"):
        with RunOutput(out, kind="stylize", planned=["back_000.png"]):
            pass  # refused at open: before any compute
    _assert_clean(out)


def test_a_damaged_manifest_is_refused_in_one_sentence_and_nothing_is_deleted(tmp_path):
    out = tmp_path / "out"
    _run(out, _views(2, 0.5))
    before = _snapshot(out)
    manifest = outputs.manifest_path(out, "run")
    for text in ("{not json", '{"format": "diffstyle360-run", "kind": "run", "files": {"../outside.txt": '
                              '{"size": 1, "sha256": "00"}}}'):
        manifest.write_text(text)
        with pytest.raises(OutputError, match=rf"{manifest} is damaged .*; move the earlier results out of"):
            _run(out, _views(3, 0.0))
        assert {k: v for k, v in _snapshot(out).items() if "manifest" not in k} == \
            {k: v for k, v in before.items() if "manifest" not in k}


def test_a_damaged_or_hostile_journal_is_refused_and_nothing_is_moved(tmp_path):
    out = tmp_path / "out"
    _run(out, _views(2, 0.5))
    (tmp_path / "outside.txt").write_text("not yours")
    before = _snapshot(out)
    journal = out / outputs.JOURNAL_NAME
    hostile = {"format": "diffstyle360-run", "kind": "run", "partial": ".ds360-partial-x", "aside": "../x",
               "old": ["view_000.png"], "new": [], "drop_dirs": [], "made_dirs": [],
               "manifest": {"files": {}, "dirs": []}}
    for text in ("{truncated", json.dumps(hostile),
                 json.dumps({**hostile, "aside": ".ds360-old-x", "old": ["../outside.txt"]})):
        journal.write_text(text)
        with pytest.raises(OutputError, match=rf"an interrupted commit in {out} cannot be finished: {journal} is "
                                              rf"damaged .*; move your files out of {out} and delete"):
            _run(out, _views(3, 0.0))
        assert {k: v for k, v in _snapshot(out).items() if k != journal.name} == before
        assert (tmp_path / "outside.txt").read_text() == "not yours"


def test_a_forged_journal_cannot_delete_or_overwrite_a_file_that_is_not_ours(tmp_path):
    out = tmp_path / "out"
    _run(out, _views(2, 0.5))
    (out / "notes.txt").write_text("mine")
    (out / ".ds360-partial-forged").mkdir()
    (out / ".ds360-partial-forged" / "view_000.png").write_bytes(b"forged")
    forged = {"format": "diffstyle360-run", "kind": "run", "partial": ".ds360-partial-forged",
              "aside": ".ds360-old-forged", "old": ["notes.txt"], "new": ["view_000.png"], "drop_dirs": [],
              "made_dirs": [], "manifest": {"files": {}, "dirs": []}}
    (out / outputs.JOURNAL_NAME).write_text(json.dumps(forged))
    before = _snapshot(out)
    with pytest.raises(OutputError, match=r"could not finish the interrupted commit in .*view_000.png appeared "
                                          r"during the run; move it away and run again"):
        RunOutput(out).open()  # notes.txt is in no manifest: it stays; view_000.png is there: never replaced
    assert (out / "notes.txt").read_text() == "mine"
    assert _snapshot(out)["view_000.png"] == before["view_000.png"]


def test_a_subfolder_that_is_a_link_is_never_written_through(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "back_views").symlink_to(elsewhere)
    with pytest.raises(OutputError, match=r"back_views is not a folder \(a file or a symbolic link\)"):
        _run(out, _views(2, 0.5))
    assert list(elsewhere.iterdir()) == []


def test_names_and_kinds_are_checked(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        RunOutput(tmp_path / "o", kind="../x")
    with pytest.raises(OutputError, match=r"the output folder is empty"):
        RunOutput("")
    with RunOutput(tmp_path / "o") as run:
        for bad in ("../x.png", "/abs.png", ".ds360-manifest-run.json"):
            with pytest.raises(ValueError, match="output name"):
                run.path(bad)


# --------------------------------------------------------------------------- #
# unwritable folder, full disk
# --------------------------------------------------------------------------- #
def test_unwritable_folder_is_found_by_a_real_test_write(tmp_path, monkeypatch):
    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def full(path):
        Path(path).write_bytes(b"d")  # created, then the write fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_probe", denied)
    with pytest.raises(OutputError, match=rf"output folder {tmp_path / 'plain'} is not writable \(PermissionError"):
        check_writable(tmp_path / "plain")
    with pytest.raises(OutputError, match="is not writable"):
        RunOutput(tmp_path / "ro").open()
    monkeypatch.setattr(outputs, "_probe", full)
    with pytest.raises(OutputError, match=rf"output folder {tmp_path / 'ro'} is not writable \(OSError: No space"):
        RunOutput(tmp_path / "ro").open()
    assert not (tmp_path / "ro").exists()  # made for the run, removed again: no probe, lock or temp folder left
    (tmp_path / "ro").mkdir()
    with pytest.raises(OutputError, match="is not writable"):
        RunOutput(tmp_path / "ro").open()
    assert list((tmp_path / "ro").iterdir()) == []  # an existing folder stays, empty
    monkeypatch.undo()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=rf"cannot create output folder {blocker / 'sub'}"):
        check_writable(blocker / "sub")
    with pytest.raises(OutputError, match=rf"output folder {blocker} is a file"):
        check_writable(blocker)


@pytest.mark.parametrize("earlier_run", [True, False])
def test_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch, earlier_run):
    out = tmp_path / "out"
    if earlier_run:
        _run(out, _views(8, 0.5))
    before = _snapshot(out) if out.exists() else {}
    real_save, saved = Image.Image.save, []

    def save_until_disk_full(self, fp, *args, **kwargs):
        if len(saved) == 3:
            Path(fp).write_bytes(b"\x89PNG")  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_disk_full)
    with pytest.raises(OutputError) as err:
        _run(out, _views(6, -0.5))
    assert err.value.errno == errno.ENOSPC
    assert f"could not write {out / 'view_003.png'} (OSError: No space left on device)" in str(err.value)
    if earlier_run:
        assert _snapshot(out) == before
        _assert_clean(out)
    else:
        assert not out.exists()
