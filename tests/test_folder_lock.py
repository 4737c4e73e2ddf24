"""The one folder lock (diffstyle360_core.folder_lock): processes, threads, a killed holder, files that are not ours."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from diffstyle360_core import folder_lock
from diffstyle360_core.folder_lock import LOCK_NAME, FolderLock, LockBusy, NotALockFile, holder_pid

ROOT = Path(__file__).resolve().parents[1]


def hold_in_another_process(folder: Path, name: str = LOCK_NAME) -> subprocess.Popen:
    """A second Python process that holds ``folder``'s lock until killed; returned once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from diffstyle360_core.folder_lock import FolderLock
        FolderLock({str(folder)!r}, {name!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = holder.stdout.readline().strip()
    if line != "locked":
        holder.kill()
        pytest.fail(f"the holder process did not take the lock: {line!r}")
    return holder


def test_another_process_holds_it_until_it_is_killed(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(LockBusy) as busy:
            FolderLock(tmp_path).acquire()
        assert busy.value.pid == holder.pid and not busy.value.this_process
        assert str(busy.value) == (f"{tmp_path} is in use by another run (process {holder.pid}, lock file "
                                   f"{tmp_path / LOCK_NAME}); wait for it to finish or choose another folder")
        assert holder_pid(tmp_path / LOCK_NAME) == holder.pid
        holder.kill()  # SIGKILL: no clean-up runs; the OS releases the lock, the file stays
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (tmp_path / LOCK_NAME).exists()
    with FolderLock(tmp_path) as lock:  # the dead holder's file is taken over
        assert lock.held and holder_pid(tmp_path / LOCK_NAME) == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists() and not lock.held  # released: the file is gone


def test_two_threads_of_one_process_exclude_each_other(tmp_path):
    """Two ComfyUI prompts in one process: exactly one of many threads starting at once gets the folder."""
    start = threading.Barrier(8)
    won, refused, locks = [], [], []

    def contend():
        lock = FolderLock(tmp_path)
        start.wait(10)
        try:
            lock.acquire()
        except LockBusy as busy:
            refused.append(busy)
            return
        won.append(threading.get_ident())
        locks.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1 and len(refused) == 7
    assert all(b.pid == os.getpid() for b in refused)  # another thread of this process: its PID is ours
    locks[0].release()
    with FolderLock(tmp_path):
        pass  # free again once the winner released it


def test_the_lock_is_per_folder_and_reusable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with FolderLock(tmp_path / "a"), FolderLock(tmp_path / "b"), FolderLock(tmp_path / "a", "other.lock"):
        with pytest.raises(LockBusy) as busy:
            FolderLock(tmp_path / "a" / ".." / "a").acquire()  # the same folder by another spelling
        assert busy.value.this_process
    lock = FolderLock(tmp_path / "a")
    for _ in range(2):  # acquire, release, acquire again; release twice is harmless
        lock.acquire()
        lock.release()
        lock.release()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


@pytest.mark.parametrize("what", ["a folder", "a symbolic link", "a file with other hard links", "a special file"])
def test_a_lock_path_that_is_not_our_file_is_refused_and_never_written(tmp_path, what):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's\n")
    folder = tmp_path / "out"
    folder.mkdir()
    lock = folder / LOCK_NAME
    if what == "a folder":
        lock.mkdir()
    elif what == "a symbolic link":
        lock.symlink_to(precious)
    elif what == "a file with other hard links":
        os.link(precious, lock)
    elif hasattr(os, "mkfifo"):
        os.mkfifo(lock)
    else:
        pytest.skip("no named pipes here")
    with pytest.raises(NotALockFile) as refused:
        FolderLock(folder).acquire()
    assert refused.value.what == what and refused.value.path == lock
    assert str(refused.value) == (f"{lock} is {what}, not a DiffStyle360 lock file; move it away or choose another "
                                  "folder")
    assert precious.read_text() == "the user's\n"
    assert os.path.lexists(lock)  # left where it was
    if what == "a folder":  # the user moves it away
        lock.rmdir()
    else:
        lock.unlink()
    with FolderLock(folder):  # and the folder can be locked: the refusal left no thread lock held
        pass


def test_a_symbolic_link_that_appears_after_the_check_is_not_followed(tmp_path, monkeypatch):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's\n")
    lock = tmp_path / LOCK_NAME
    monkeypatch.setattr(folder_lock, "_refuse_what_is_not_ours", lambda path: lock.symlink_to(precious))
    with pytest.raises(NotALockFile, match="is a symbolic link"):
        FolderLock(tmp_path).acquire()
    assert precious.read_text() == "the user's\n"


def test_a_file_replaced_by_the_previous_holder_is_retried(tmp_path, monkeypatch):
    """The holder before us deletes its file on release: whoever opened the old file must lock the new one."""
    lock_path = tmp_path / LOCK_NAME
    real_try_lock = folder_lock._try_lock
    calls = []

    def previous_holder_releases_then_another_creates(fd, path):
        calls.append(fd)
        if len(calls) == 1:  # we opened the old file; it is deleted and a new one made before we lock
            os.unlink(path)
            path.write_text("")
        return real_try_lock(fd, path)

    monkeypatch.setattr(folder_lock, "_try_lock", previous_holder_releases_then_another_creates)
    with FolderLock(tmp_path) as lock:
        assert len(calls) == 2  # the first lock was on a deleted file: retried
        assert os.path.samestat(os.fstat(lock._fd), os.stat(lock_path))
        assert lock_path.read_text() == f"{os.getpid()}\n"


def test_release_deletes_the_file_while_still_holding_it(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")  # POSIX: Windows cannot delete an open file, so it closes first
    seen = []
    real_unlink = folder_lock.unlink_quietly

    def unlink_and_check(path):
        other = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except OSError:
            seen.append("held")
        finally:
            os.close(other)
        real_unlink(path)

    monkeypatch.setattr(folder_lock, "unlink_quietly", unlink_and_check)
    with FolderLock(tmp_path):
        pass
    assert seen == ["held"] and not (tmp_path / LOCK_NAME).exists()
