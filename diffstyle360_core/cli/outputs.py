"""Run outputs: a folder holds one complete run, or nothing new.

:class:`RunOutput` is a context manager around one output folder::

    with RunOutput("out/") as run:          # lock + real test write, before any compute
        ...                                 # long sampling
        img.save(run.path("view_000.png"))  # files go to a hidden temporary folder inside out/
        run.commit()                        # all files move into place together

* **Nothing partial.** Every file is written into ``out/.ds360-partial-<pid>-<id>/``
  (inside the target, so always on the same filesystem) and only :meth:`commit`
  moves them into ``out/``, with ``os.replace``. Leaving the ``with`` block
  without a commit (an error, Ctrl-C) deletes the temporary folder and leaves
  ``out/`` exactly as it was (a folder created for the run is removed again).
* **No stale files.** At commit, the files of an earlier run (``replaces``:
  by default every name this pack writes, ``view_*.png``, ``turntable.*``,
  ``back_views/``, ``back_*.png``) are replaced as a whole: they are moved aside
  first, the new set is moved in, then the old set is deleted; if a move fails
  the old set is put back. Ctrl-C during the commit is held until it is done
  (main thread), so an interrupted save leaves the old or the new complete set.
  Only a hard kill (power loss, SIGKILL) inside the few renames of a commit can
  leave a mix; the next run into the folder replaces it as a whole.
* **One run at a time.** Entering takes an exclusive lock on ``out/.ds360.lock``
  (``fcntl.flock``: released by the OS if the process dies). A second run on the
  same folder is *refused* at once with :class:`OutputError` naming the folder
  (it does not wait). Without ``fcntl`` (Windows) the lock file is created with
  ``O_EXCL``; a lock left by a crashed run must then be deleted by hand.
* **Writable before compute.** :func:`check_writable` creates the folder and
  writes, fsyncs and deletes a probe file; entering a ``RunOutput`` calls it.
* **Errors name the file.** Any ``OSError`` while writing (a full disk, ENOSPC)
  becomes :class:`OutputError` naming the file and the folder; the partial
  temporary files are removed and the folder is left as it was.

Messages name folders and files, never command-line flags.
"""

from __future__ import annotations

import errno as _errno
import os
import shutil
import signal
import threading
import uuid
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["OutputError", "RunOutput", "check_writable", "PACK_OUTPUTS"]

#: Names (glob patterns, top level of the folder) of everything this pack writes.
PACK_OUTPUTS = ("view_*.png", "turntable.gif", "turntable.webp", "back_views", "back_*.png")
LOCK_NAME = ".ds360.lock"
_PARTIAL = ".ds360-partial-"
_OLD = ".ds360-old-"

PathLike = Union[str, "os.PathLike[str]"]


class OutputError(OSError):
    """An output folder or file cannot be written; the message names it and says what to do."""

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        return self.args[0]


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return f"{type(err).__name__}: {text}"


def check_writable(folder: PathLike) -> Path:
    """Create ``folder`` (and parents) and prove it writable with a real write + fsync + delete.

    Raises :class:`OutputError` naming the folder. Returns the folder as a ``Path``.
    """
    path = Path(os.fspath(folder)).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"output folder {path} is a file; give a folder", _errno.ENOTDIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {path} ({_reason(err)}); choose another folder",
                          err.errno) from None
    probe = path / f".ds360-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _probe(probe)
    except OSError as err:
        _unlink_quietly(probe)
        raise OutputError(f"output folder {path} is not writable ({_reason(err)}); choose another folder "
                          "or free space / fix its permissions", err.errno) from None
    _unlink_quietly(probe)
    return path


def _probe(path: Path) -> None:
    """Create, write and fsync a small file (the real test write of :func:`check_writable`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"diffstyle360 write test\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink_quietly(path)


@contextmanager
def _hold_sigint() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done; re-raise it afterwards. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # pragma: no cover - no signal support here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


class RunOutput:
    """One run's files for ``folder``: all of them, moved into place by :meth:`commit`, or none.

    ``replaces``: glob patterns of an earlier run's entries (top level of the
    folder) that the commit removes, in addition to every name this run writes.
    """

    def __init__(self, folder: PathLike, *, replaces: Sequence[str] = PACK_OUTPUTS):
        self.folder = Path(os.fspath(folder)).expanduser()
        self.replaces = tuple(replaces)
        self.committed = False
        self._tmp: Optional[Path] = None
        self._lock_fd: Optional[int] = None
        self._written: list[str] = []
        self._created = False

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "RunOutput":
        if self._tmp is None:  # not opened yet (``RunOutput(f).open()`` may come first)
            self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> "RunOutput":
        self._created = not self.folder.exists()
        try:
            check_writable(self.folder)
            self._lock()
        except BaseException:
            self._drop_created_folder()
            raise
        try:
            for leftover in list(self.folder.glob(_PARTIAL + "*")) + list(self.folder.glob(_OLD + "*")):
                _remove(leftover)  # from a run that was killed; we hold the lock, nobody else uses them
            self._tmp = self.folder / f"{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._tmp.mkdir()
        except OSError as err:
            self._unlock()
            self._drop_created_folder()
            raise OutputError(f"cannot write in output folder {self.folder} ({_reason(err)})", err.errno) from None
        return self

    def _drop_created_folder(self) -> None:
        if self._created and not self.committed:
            try:
                self.folder.rmdir()  # we made it for this run and it stayed empty
            except OSError:
                pass
        self._created = False

    def close(self) -> None:
        """Drop whatever was not committed (temporary files) and release the lock."""
        with _hold_sigint():
            if self._tmp is not None:
                _remove(self._tmp)
                self._tmp = None
            self._unlock()
            self._drop_created_folder()

    # ---------------------------------------------------------------- writing
    def path(self, name: str) -> Path:
        """Temporary path to write ``name`` (relative, may contain ``/``) to; it lands at ``folder/name``."""
        if self._tmp is None:
            raise RuntimeError("RunOutput is not open (use it as a context manager)")
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"output name {name!r} must be a relative path inside the output folder")
        target = self._tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if name not in self._written:
            self._written.append(name)
        return target

    def final(self, name: str) -> Path:
        """Where ``name`` will be after :meth:`commit`."""
        return self.folder / name

    def write(self, name: str, writer: Callable[[Path], object]) -> Path:
        """Call ``writer(temp_path)``; an ``OSError`` becomes :class:`OutputError` naming the file.

        On error the partial file is deleted at once (the rest goes when the run is closed).
        Returns the final path.
        """
        tmp = self.path(name)
        try:
            writer(tmp)
        except OSError as err:
            _unlink_quietly(tmp)
            raise OutputError(
                f"could not write {self.final(name)} ({_reason(err)}); nothing in {self.folder} was changed",
                err.errno,
            ) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return self.final(name)

    @property
    def names(self) -> list:
        return list(self._written)

    # ----------------------------------------------------------------- commit
    def commit(self) -> None:
        """Move the run's files into the folder, replacing an earlier run's files as a whole."""
        if self._tmp is None:
            raise RuntimeError("RunOutput is not open (use it as a context manager)")
        tmp = self._tmp
        new = sorted(p.name for p in tmp.iterdir())
        with _hold_sigint():
            try:
                for name in new:
                    _fsync_tree(tmp / name)
                _fsync_dir(tmp)
            except OSError as err:
                raise OutputError(f"could not write the results into {tmp} ({_reason(err)}); nothing in "
                                  f"{self.folder} was changed", err.errno) from None
            old_dir = self.folder / f"{_OLD}{tmp.name[len(_PARTIAL):]}"
            stale = sorted(p.name for p in self.folder.iterdir()
                           if not p.name.startswith(".ds360")
                           and (p.name in new or any(fnmatch(p.name, pat) for pat in self.replaces)))
            moved_old, moved_new, done = [], [], False
            try:
                old_dir.mkdir()
                for name in stale:
                    os.replace(self.folder / name, old_dir / name)
                    moved_old.append(name)
                for name in new:
                    os.replace(tmp / name, self.folder / name)
                    moved_new.append(name)
                _fsync_dir(self.folder)
                done = True
            except OSError as err:
                for name in reversed(moved_new):  # undo: the earlier run's files go back
                    _remove(self.folder / name)
                for name in reversed(moved_old):
                    try:
                        os.replace(old_dir / name, self.folder / name)
                    except OSError:
                        pass
                raise OutputError(f"could not move the results into {self.folder} ({_reason(err)}); the folder "
                                  "was left as it was", err.errno) from None
            finally:
                if done:
                    _remove(old_dir)  # the earlier run's files
                else:
                    try:
                        old_dir.rmdir()  # empty once everything went back
                    except OSError:
                        pass
            self.committed = True

    # ------------------------------------------------------------------- lock
    def _lock(self) -> None:
        lock = self.folder / LOCK_NAME

        def busy(who: str) -> OutputError:
            return OutputError(f"output folder {self.folder} is in use by another DiffStyle360 run ({who}); "
                               "wait for it to finish or choose another folder", _errno.EBUSY)

        if fcntl is None:  # pragma: no cover - Windows
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise busy(f"{_owner(lock)}; delete {lock} if no run is active") from None
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            return
        for _ in range(100):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise busy(_owner(lock)) from None
            try:  # the holder before us may have deleted the file after we opened it: retry on the new one
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise busy(_owner(lock))  # pragma: no cover

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        if fcntl is not None:
            _unlink_quietly(self.folder / LOCK_NAME)  # delete while still holding the lock, then release
            os.close(fd)
        else:  # pragma: no cover - Windows
            os.close(fd)
            _unlink_quietly(self.folder / LOCK_NAME)


def _owner(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}, lock file {lock}" if pid else f"lock file {lock}"


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        _fsync_dir(path)
        return
    _fsync_path(path)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    _fsync_path(path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
