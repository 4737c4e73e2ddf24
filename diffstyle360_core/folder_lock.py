"""One user of a folder at a time: an exclusive, non-blocking lock file in the folder.

Output folders (``cli/outputs.py``), a weight set being downloaded (``download.py``) and a
training run folder (``training/run_folder.py``) all need the same thing: a second run on the
folder is refused at once (never waits), and a run that dies never leaves the folder locked.
:class:`FolderLock` gives that:

* **across processes**: ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows; the OS
  releases it when the process dies (SIGKILL, a crash), so no stale lock needs deleting;
* **across threads of one process** (two ComfyUI prompts): a thread lock per lock path, taken
  first; ``flock`` alone does not promise this where it is emulated by record locks (NFS);
* **never through a file that is not ours**: a lock path that is a folder, a symbolic link, a
  special file or a file with other hard links is refused, never opened for writing;
* **the holder says who it is**: its PID is written in the file, for the refused run's message;
* **a replaced file is retried**: a holder deletes the file on release while still holding it,
  so a run that opened the old file retries on the new one instead of holding a deleted lock.

Errors are :class:`LockError` subclasses (``OSError``): :class:`LockBusy`, :class:`NotALockFile`,
:class:`LockUnavailable`; callers turn them into their own messages.
"""

from __future__ import annotations

import errno as _errno
import os
import stat
import threading
from pathlib import Path
from typing import Dict, Optional, Union

from .files import unlink_quietly

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

__all__ = ["LOCK_NAME", "FolderLock", "LockBusy", "LockError", "LockUnavailable", "NotALockFile", "holder_pid"]

#: The lock file's name in a folder (output and training run folders share it: one run per folder, of any kind).
LOCK_NAME = ".ds360.lock"

_OPEN_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_BINARY", 0))
_WINDOWS_BYTE = 4096  # the byte msvcrt locks: past the PID text, so a refused run can still read who holds it
_RETRIES = 100  # a holder that keeps replacing the file this often is a holder: report it busy

_thread_locks: Dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()

PathLike = Union[str, "os.PathLike[str]"]


class LockError(OSError):
    """The folder cannot be locked; ``path`` is the lock file. The message is one sentence."""

    def __init__(self, message: str, path: Path, errno: Optional[int] = None):
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        return self.args[0]


class LockBusy(LockError):
    """Another process (``pid``, None if unknown) or another thread of this one (``this_process``) holds it."""

    def __init__(self, path: Path, pid: Optional[int], this_process: bool):
        self.path, self.pid, self.this_process = path, pid, this_process
        super().__init__(f"{path.parent} is in use by another run ({self.holder}); wait for it to finish or "
                         "choose another folder", path, _errno.EBUSY)

    @property
    def holder(self) -> str:
        """``process 123, lock file F`` (or ``lock file F`` when the PID cannot be read)."""
        return f"process {self.pid}, lock file {self.path}" if self.pid is not None else f"lock file {self.path}"


class NotALockFile(LockError):
    """The lock path is ``what`` ("a folder", "a symbolic link", "a special file", "a file with other hard links")."""

    def __init__(self, path: Path, what: str):
        self.what = what
        super().__init__(f"{path} is {what}, not a DiffStyle360 lock file; move it away or choose another folder",
                         path, _errno.EEXIST)


class LockUnavailable(LockError):
    """The lock file cannot be created, written or locked; ``cause`` is the ``OSError``."""

    def __init__(self, path: Path, cause: OSError):
        self.cause = cause
        text = cause.strerror or str(cause)
        super().__init__(f"cannot create or lock {path} ({type(cause).__name__}: {text}); choose another folder",
                         path, cause.errno)


def holder_pid(path: PathLike) -> Optional[int]:
    """The PID written in a lock file, None when it cannot be read (gone, empty, not ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


class FolderLock:
    """Exclusive, non-blocking lock on ``folder/name`` (see the module docstring); a context manager.

    ``acquire()`` raises :class:`LockBusy` at once when another process or thread holds it;
    ``release()`` deletes the file and releases the lock (both are safe to call again).
    The folder must exist.
    """

    def __init__(self, folder: PathLike, name: str = LOCK_NAME):
        self.folder = Path(os.fspath(folder))
        self.path = self.folder / name
        self._fd: Optional[int] = None
        self._thread_lock: Optional[threading.Lock] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        key = os.path.join(os.path.realpath(self.folder), self.path.name)  # the folder resolved, not the lock file
        with _thread_locks_guard:
            thread_lock = _thread_locks.setdefault(key, threading.Lock())
        if not thread_lock.acquire(blocking=False):
            raise LockBusy(self.path, os.getpid(), this_process=True)
        try:
            self._fd = _lock_file(self.path)
        except BaseException:
            thread_lock.release()
            raise
        self._thread_lock = thread_lock
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        thread_lock, self._thread_lock = self._thread_lock, None
        if fd is None:
            return
        try:
            if fcntl is not None:
                unlink_quietly(self.path)  # while still holding it: a run that opened it sees it replaced
                os.close(fd)
            else:  # pragma: no cover - Windows: an open file cannot be deleted
                _unlock_windows(fd)
                os.close(fd)
                unlink_quietly(self.path)  # fails harmlessly if another run opened it meanwhile
        finally:
            if thread_lock is not None:
                thread_lock.release()


def _refuse_what_is_not_ours(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise LockUnavailable(path, err) from None
    if stat.S_ISDIR(st.st_mode):
        raise NotALockFile(path, "a folder")
    if stat.S_ISLNK(st.st_mode):
        raise NotALockFile(path, "a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise NotALockFile(path, "a special file")


def _lock_file(path: Path) -> int:
    """Open, check and lock the lock file; write our PID. Returns the open descriptor that holds the lock."""
    _refuse_what_is_not_ours(path)
    for _ in range(_RETRIES):
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        except OSError as err:
            if err.errno == _errno.ELOOP:
                raise NotALockFile(path, "a symbolic link") from None
            if err.errno == _errno.EISDIR or os.path.isdir(path):
                raise NotALockFile(path, "a folder") from None
            raise LockUnavailable(path, err) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotALockFile(path, "a special file")
            if st.st_nlink > 1:
                raise NotALockFile(path, "a file with other hard links")
            if not _try_lock(fd, path):
                raise LockBusy(path, holder_pid(path), this_process=False)
            if _still_at(fd, path):
                try:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as err:
                    unlink_quietly(path)
                    raise LockUnavailable(path, err) from None
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before us deleted it after we opened it: retry on the new file
    raise LockBusy(path, holder_pid(path), this_process=False)  # pragma: no cover - a file replaced 100 times


def _still_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _try_lock(fd: int, path: Path) -> bool:
    """Lock without waiting: True if locked, False if someone holds it; other failures are :class:`LockUnavailable`."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (_errno.EWOULDBLOCK, _errno.EAGAIN, _errno.EACCES):
                return False
            raise LockUnavailable(path, err) from None
        return True
    os.lseek(fd, _WINDOWS_BYTE, os.SEEK_SET)  # pragma: no cover - Windows
    try:  # pragma: no cover - Windows
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover - Windows
        return False
    return True  # pragma: no cover - Windows


def _unlock_windows(fd: int) -> None:  # pragma: no cover - Windows
    try:
        os.lseek(fd, _WINDOWS_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass  # closing the file releases it too
