"""Run outputs: a folder holds complete runs, and a run touches only what it can prove it wrote.

:class:`RunOutput` is a context manager around one output folder::

    with RunOutput("out/", kind="stylize") as run:   # lock, recovery, real test write, checks: before compute
        ...                                           # long sampling
        img.save(run.path("view_000.png"))            # files go to a hidden temporary folder inside out/
        run.commit()                                  # the new set replaces the earlier set of this kind

The rules:

* **A manifest says what a run wrote.** A committed run of kind ``K`` leaves
  ``out/.ds360-manifest-K.json``: every file it wrote (relative path, size,
  SHA-256) and the subfolders it created. The next run of the same kind replaces
  exactly the files of that manifest that are still byte for byte what the run
  wrote; runs of other kinds (``stylize`` and ``back-view`` in one folder) have
  their own manifests and never replace each other.
* **Anything else is the user's.** A file not in the manifest, or changed since,
  is never deleted or overwritten: if the new run would write that name, it is
  refused (before any compute when the caller says which names it will write,
  ``planned``), with one sentence saying to move the file or choose another folder.
  So is a run that would write or replace one of its own ``inputs`` (compared as
  files, so symbolic and hard links count), or write a file directly into an input
  folder (input folders are read file by file, not recursively).
* **Nothing partial.** Files are written into ``out/.ds360-partial-<pid>-<id>/``
  (inside the target: same filesystem, so renames are atomic). Leaving the
  ``with`` block without a commit (an error, a signal) deletes it and leaves
  ``out/`` as it was (a folder created for the run is removed again).
* **The commit is crash-consistent.** :meth:`RunOutput.commit` fsyncs the new
  files, then writes the journal ``out/.ds360-journal.json`` atomically (temp file,
  fsync, rename). The journal's rename is the commit point: before it the old
  set is current, after it the new one. Then the old set's files move into
  ``out/.ds360-old-<id>/``, the new files move into ``out/``, the new manifest is
  written atomically, the journal is deleted, and the aside folder is removed.
  Every step can be redone, so a process killed anywhere (SIGKILL, power loss)
  leaves a folder that the next :meth:`RunOutput.open` on it, or
  :func:`current_files`, completes to exactly the new set; killed before the
  journal, the old set is untouched. Finishing never trusts the journal alone:
  only files the kind's manifest lists, unchanged, step aside, and a new file
  never replaces one in its way. A failing rename (an I/O error) undoes the
  renames done and deletes the journal. SIGINT, SIGTERM and SIGHUP arriving
  while files move are held until the step is done (main thread), then delivered.
  Between a kill and the next open a plain ``ls`` may show a mix; opening the
  folder (any run, or :func:`current_files`) settles it first. (Why a journal and
  not a fresh subfolder behind one switched link: users expect ``view_000.png``
  directly in ``out/``, beside their own files, and one rename cannot swap many
  names of one folder.)
* **One run at a time.** Entering takes an exclusive lock on ``out/.ds360.lock``
  (:class:`~diffstyle360_core.folder_lock.FolderLock`: released by the OS if the process
  dies); a second run on the folder, in another process or another thread, is refused at
  once. The lock file must be a plain file of ours: a folder, a symbolic link or a file with
  other hard links at that path is refused, never written.
* **Writable before compute**, **errors name the file**: :func:`check_writable`
  writes, fsyncs and deletes a probe file; an ``OSError`` while writing becomes
  :class:`OutputError` naming the file, and the folder is left as it was.

Messages name folders and files, never command-line flags (the caller's
``inputs`` labels are its own words).
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
import shutil
import signal
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..files import TEMP_SUFFIX, fsync_dir, fsync_path, sha256_file, unlink_quietly, write_text_atomic
from ..folder_lock import LOCK_NAME, FolderLock, LockBusy, LockError, LockUnavailable, NotALockFile
from ..stop_signals import STOP_SIGNALS, install_handlers, restore_handlers

__all__ = ["OutputError", "RunOutput", "check_writable", "current_files", "hold_signals", "manifest_path"]

RESERVED = ".ds360"  # every name of ours in the folder starts with this; a run never writes such a name
JOURNAL_NAME = ".ds360-journal.json"
_MANIFEST = ".ds360-manifest-{kind}.json"
_PARTIAL = ".ds360-partial-"
_OLD = ".ds360-old-"
_PROBE = ".ds360-probe-"
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FORMAT = "diffstyle360-run"
HELD_SIGNALS = STOP_SIGNALS

PathLike = Union[str, "os.PathLike[str]"]
Inputs = Union[Mapping[str, object], Iterable[Tuple[str, object]], None]


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


def _folder(folder: PathLike) -> Path:
    text = os.fspath(folder)
    if not str(text).strip():
        raise OutputError("the output folder is empty (''); give a folder name, e.g. out/", _errno.EINVAL)
    return Path(text).expanduser()


def check_writable(folder: PathLike) -> Path:
    """Create ``folder`` (and parents) and prove it writable with a real write + fsync + delete.

    Raises :class:`OutputError` naming the folder. Returns the folder as a ``Path``.
    """
    path = _folder(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output folder {path} is a file; give a folder", _errno.ENOTDIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {path} ({_reason(err)}); choose another folder",
                          err.errno) from None
    probe = path / f"{_PROBE}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _probe(probe)
    except OSError as err:
        unlink_quietly(probe)
        raise OutputError(f"output folder {path} is not writable ({_reason(err)}); choose another folder "
                          "or free space / fix its permissions", err.errno) from None
    unlink_quietly(probe)
    return path


def _probe(path: Path) -> None:
    """Create, write and fsync a small file (the real test write of :func:`check_writable`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"diffstyle360 write test\n")
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# small file-system steps (every rename goes through _rename: the kill tests hook it)
# --------------------------------------------------------------------------- #
def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        unlink_quietly(path)


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path).hexdigest()}


def _unchanged(path: Path, record: Mapping) -> bool:
    """``path`` is a plain file with exactly the recorded size and SHA-256 (what our run wrote)."""
    try:
        st = os.lstat(path)
        return (stat.S_ISREG(st.st_mode) and st.st_size == record["size"]
                and sha256_file(path).hexdigest() == record["sha256"])
    except OSError:
        return False


def _write_json_atomically(path: Path, data: dict) -> None:
    """Temp file, fsync, rename over ``path`` (through :func:`_rename`), fsync the folder: readers see the old
    or the new file."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", fsync=True, rename=_rename)


def _fsync_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
    elif not path.is_symlink():
        fsync_path(path)


def _parents(name: str) -> List[str]:
    """``"a/b/c.png"`` → ``["a", "a/b"]``."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


def _deepest_first(dirs: Iterable[str]) -> List[str]:
    return sorted(set(dirs), key=lambda d: (-d.count("/"), d))


def _check_name(name: str) -> str:
    """A run's file name: relative, inside the folder, not one of our reserved names; returned as a/b.png."""
    rel = Path(name)
    if not str(name) or rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.anchor:
        raise ValueError(f"output name {name!r} must be a relative path inside the output folder")
    if rel.parts[0].startswith(RESERVED):
        raise ValueError(f"output name {name!r} starts with {RESERVED!r}, which is reserved for the run's own files")
    return rel.as_posix()


def manifest_path(folder: PathLike, kind: str) -> Path:
    """Where the manifest of the last complete run of ``kind`` lives."""
    return Path(os.fspath(folder)).expanduser() / _MANIFEST.format(kind=kind)


# --------------------------------------------------------------------------- #
# signals
# --------------------------------------------------------------------------- #
@contextmanager
def hold_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done, then deliver the first one. Main thread only.

    Delivering means calling the handler that was there before (Python's Ctrl-C handler raises
    ``KeyboardInterrupt``; the CLI's raise its own ``KeyboardInterrupt`` subclass); a signal that was
    ignored stays ignored; one with the default action is raised again, now that the block is done.
    """
    caught: List[int] = []
    previous = install_handlers(HELD_SIGNALS, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        restore_handlers(previous)
    if caught:
        signum, handler = caught[0], previous[caught[0]]
        if callable(handler):
            handler(signum, None)
        elif handler != signal.SIG_IGN:
            signal.raise_signal(signum)


# --------------------------------------------------------------------------- #
# manifests and the journal
# --------------------------------------------------------------------------- #
def _read_manifest(folder: Path, kind: str) -> Tuple[Dict[str, dict], List[str]]:
    """(files {name: record}, dirs) of the last complete run of ``kind``; empty if there was none."""
    path = manifest_path(folder, kind)
    if not _lexists(path):
        return {}, []
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _FORMAT or data.get("kind") != kind:
            raise ValueError("not a DiffStyle360 manifest of this kind")
        files = {_check_name(n): {"size": int(r["size"]), "sha256": str(r["sha256"])}
                 for n, r in data["files"].items()}
        dirs = [_check_name(d) for d in data.get("dirs", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise OutputError(f"{path} is damaged ({_reason(err)}); move the earlier results out of {folder} and "
                          "delete it, or choose another output folder", _errno.EINVAL) from None
    return files, dirs


def _manifest(kind: str, files: Dict[str, dict], dirs: Iterable[str]) -> dict:
    return {"format": _FORMAT, "version": 1, "kind": kind, "files": files, "dirs": sorted(set(dirs))}


def _read_journal(folder: Path) -> Optional[dict]:
    path = folder / JOURNAL_NAME
    if not _lexists(path):
        return None
    try:
        data = json.loads(path.read_text())
        kind = data["kind"]
        if data.get("format") != _FORMAT or not isinstance(kind, str) or not _KIND.match(kind):
            raise ValueError("not a DiffStyle360 journal")
        for key, prefix in (("partial", _PARTIAL), ("aside", _OLD)):
            if not re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_-]+", str(data[key])):
                raise ValueError(f"bad {key} folder name")
            if (folder / data[key]).is_symlink():
                raise ValueError(f"{data[key]} is a symbolic link")
        for key in ("old", "new", "drop_dirs", "made_dirs"):
            data[key] = [_check_name(n) for n in data[key]]
        _manifest(kind, {_check_name(n): r for n, r in data["manifest"]["files"].items()}, data["manifest"]["dirs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise OutputError(f"an interrupted commit in {folder} cannot be finished: {path} is damaged "
                          f"({_reason(err)}); move your files out of {folder} and delete {path}",
                          _errno.EINVAL) from None
    return data


def _manifest_written(folder: Path, journal: dict) -> bool:
    try:
        return json.loads(manifest_path(folder, journal["kind"]).read_text()) == journal["manifest"]
    except (OSError, ValueError):
        return False


def _roll_forward(folder: Path, journal: dict, moved: Optional[List[Tuple[Path, Path]]] = None) -> None:
    """Finish a commit whose journal was written: the old set steps aside, the new set moves in.

    Every step checks what is already done, so this can run again after a kill at any point. Even
    a journal someone else wrote cannot make it delete or overwrite a file that is not ours: only
    files the kind's manifest lists, unchanged, step aside, and a new file never replaces one
    that is there. ``moved`` collects the renames done, for :func:`_roll_back`.
    """
    moved = [] if moved is None else moved
    partial, aside = folder / journal["partial"], folder / journal["aside"]
    if not _manifest_written(folder, journal):  # steps 1-3 were not all done yet
        files, dirs = _read_manifest(folder, journal["kind"])
        for name in journal["old"]:  # 1. the earlier run's files step aside (all of them before any new one moves)
            src, dst = folder / name, aside / name
            if _lexists(dst) or name not in files or not _unchanged(src, files[name]):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            _rename(src, dst)
            moved.append((src, dst))
        for d in _deepest_first(set(journal["drop_dirs"]) & set(dirs)):  # 2. folders it made, not needed now
            try:
                (folder / d).rmdir()  # only if empty: a user's file inside keeps it
            except OSError:
                pass
        touched = {folder}
        for name in journal["new"]:  # 3. the new files move in
            src, dst = partial / name, folder / name
            if not _lexists(src):
                continue  # moved in before
            if _lexists(dst):
                raise FileExistsError(_errno.EEXIST, f"{dst} appeared during the run; move it away and run again")
            dst.parent.mkdir(parents=True, exist_ok=True)
            _rename(src, dst)
            moved.append((src, dst))
            touched.add(dst.parent)
        for d in sorted(touched):
            fsync_dir(d)
        _write_json_atomically(manifest_path(folder, journal["kind"]), journal["manifest"])  # 4. the new manifest
    unlink_quietly(folder / JOURNAL_NAME)  # 5. done
    fsync_dir(folder)
    _remove(aside)
    _remove(partial)


def _roll_back(folder: Path, journal: dict, moved: List[Tuple[Path, Path]]) -> None:
    """Undo the renames of a commit that failed part-way (an I/O error, not a kill), newest first."""
    for src, dst in reversed(moved):
        src.parent.mkdir(parents=True, exist_ok=True)
        _rename(dst, src)
    for d in _deepest_first(journal["made_dirs"]):
        try:
            (folder / d).rmdir()
        except OSError:
            pass
    unlink_quietly(folder / JOURNAL_NAME)
    fsync_dir(folder)
    _remove(folder / journal["aside"])


def _settle(folder: Path) -> None:
    """With the lock held: finish a commit a killed run left behind, then drop its temporary files."""
    journal = _read_journal(folder)
    if journal is not None:
        try:
            _roll_forward(folder, journal)
        except OSError as err:
            raise OutputError(f"could not finish the interrupted commit in {folder} ({_reason(err)}); fix that "
                              "(space, permissions, a file in the way) and run again", err.errno) from None
    for leftover in folder.iterdir():
        name = leftover.name
        if name.startswith((_PARTIAL, _OLD, _PROBE)) or (name.startswith(RESERVED) and name.endswith(TEMP_SUFFIX)):
            _remove(leftover)  # a killed run's; we hold the lock, nobody else uses them


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
def _input_pairs(inputs: Inputs) -> List[Tuple[str, Path]]:
    if not inputs:
        return []
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    pairs = []
    for label, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs += [(str(label), Path(os.fspath(v)).expanduser()) for v in values if v is not None and str(v) != ""]
    return pairs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # follows symbolic links; equal inodes: hard links count too
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------- #
# the run
# --------------------------------------------------------------------------- #
class RunOutput:
    """One run's files for ``folder``: all of them, moved into place by :meth:`commit`, or none.

    ``kind``: which results these are (``"stylize"``, ``"back-view"``...): a run replaces the
    last complete run of its own kind (its manifest) and nothing else.
    ``inputs``: ``{label: path or [paths]}`` (or ``(label, path)`` pairs) the run reads; it is
    refused if it would write, replace or delete one of them, or write into an input folder.
    ``planned``: the names the run will write, if known: checked when the run opens (before any
    compute) and again at :meth:`commit` against what was actually written.
    """

    def __init__(self, folder: PathLike, *, kind: str = "run", inputs: Inputs = None,
                 planned: Sequence[str] = ()):
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise ValueError(f"kind {kind!r} must be letters, digits, '-' or '_' (it names the manifest file)")
        self.folder = _folder(folder)
        self.kind = kind
        self.inputs = _input_pairs(inputs)
        self.planned = [_check_name(n) for n in planned]
        self.committed = False
        self._tmp: Optional[Path] = None
        self._folder_lock = FolderLock(self.folder, LOCK_NAME)
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
        """Lock the folder, finish a killed run's commit, check what this run will touch; nothing is replaced yet."""
        self._created = not self.folder.exists()
        try:
            check_writable(self.folder)
            with hold_signals():
                self._lock()
                _settle(self.folder)
            self._check(self.planned)
        except BaseException:
            self.close()
            raise
        try:
            self._tmp = self.folder / f"{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._tmp.mkdir()
        except OSError as err:
            self.close()
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
        with hold_signals():
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
        name = _check_name(name)
        target = self._tmp / name
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
            unlink_quietly(tmp)
            raise OutputError(
                f"could not write {self.final(name)} ({_reason(err)}); nothing in {self.folder} was changed",
                err.errno,
            ) from None
        except BaseException:
            unlink_quietly(tmp)
            raise
        return self.final(name)

    @property
    def names(self) -> list:
        return list(self._written)

    # ----------------------------------------------------------------- checks
    def _check(self, names: Sequence[str]) -> Tuple[List[str], List[str]]:
        """Refuse (one sentence) if writing ``names`` and replacing the earlier set would touch what is not ours.

        Returns the earlier run's files that the commit replaces (those still exactly as it wrote
        them) and the folders it made.
        """
        files, dirs = _read_manifest(self.folder, self.kind)
        ours = [n for n, record in sorted(files.items()) if _unchanged(self.folder / n, record)]
        of_kind = "" if self.kind == "run" else f"{self.kind} "
        touched = [self.folder / n for n in sorted(set(names) | set(ours))]
        for label, source in self.inputs:
            if not _lexists(source):
                continue
            for target in touched:
                if source.is_dir() and _lexists(target.parent) and _same_file(target.parent, source):
                    raise OutputError(f"{label} {source} would receive this run's file {target}; choose an output "
                                      "folder outside it", _errno.EEXIST)
                if _lexists(target) and _same_file(target, source):
                    which = "" if source == target else f" (the same file as {target})"
                    raise OutputError(f"{label} {source}{which} is a file this run would replace; copy it "
                                      "elsewhere first or choose another output folder", _errno.EEXIST)
        for name in names:
            for parent in _parents(name):
                p = self.folder / parent
                if _lexists(p) and (p.is_symlink() or not p.is_dir()):
                    raise OutputError(f"{p} is not a folder (a file or a symbolic link) but this run writes "
                                      f"{self.folder / name}; move it away or choose another output folder",
                                      _errno.EEXIST)
            target = self.folder / name
            if _lexists(target) and name not in ours:
                what = (f"was changed after an earlier {of_kind}run wrote it" if name in files else
                        f"already exists and was not written by an earlier {of_kind}run in {self.folder}")
                raise OutputError(f"{target} {what}; move that file away or choose another output folder",
                                  _errno.EEXIST)
        return ours, dirs

    # ----------------------------------------------------------------- commit
    def commit(self) -> None:
        """Replace the earlier set of this kind with this run's files (see the module docstring for the order)."""
        if self._tmp is None:
            raise RuntimeError("RunOutput is not open (use it as a context manager)")
        tmp = self._tmp
        new = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                     if p.is_symlink() or not p.is_dir())
        try:
            _fsync_tree(tmp)
            records = {n: _record(tmp / n) for n in new}
        except OSError as err:
            raise OutputError(f"could not write the results into {tmp} ({_reason(err)}); nothing in "
                              f"{self.folder} was changed", err.errno) from None
        old, old_dirs = self._check(new)
        needed = {d for n in new for d in _parents(n)}
        made = sorted(d for d in needed if not _lexists(self.folder / d))
        journal = {"format": _FORMAT, "kind": self.kind, "partial": tmp.name,
                   "aside": f"{_OLD}{tmp.name[len(_PARTIAL):]}", "old": old, "new": new,
                   "drop_dirs": sorted(set(old_dirs) - needed), "made_dirs": made,
                   "manifest": _manifest(self.kind, records, set(made) | (set(old_dirs) & needed))}
        with hold_signals():
            try:
                _write_json_atomically(self.folder / JOURNAL_NAME, journal)  # the commit point
            except OSError as err:
                raise OutputError(f"could not write {self.folder / JOURNAL_NAME} ({_reason(err)}); nothing in "
                                  f"{self.folder} was changed", err.errno) from None
            moved: List[Tuple[Path, Path]] = []
            try:
                _roll_forward(self.folder, journal, moved)
            except OSError as err:
                try:
                    _roll_back(self.folder, journal, moved)
                    kept = "the folder was left as it was"
                except OSError:
                    kept = "the next run into the folder finishes the commit"
                raise OutputError(f"could not move the results into {self.folder} ({_reason(err)}); {kept}",
                                  err.errno) from None
            self._tmp = None  # moved in; the partial folder is gone
            self.committed = True

    # ------------------------------------------------------------------- lock
    def _lock(self) -> None:
        try:
            self._folder_lock.acquire()
        except LockBusy as err:
            raise OutputError(f"output folder {self.folder} is in use by another DiffStyle360 run ({err.holder}); "
                              "wait for it to finish or choose another folder", err.errno) from None
        except NotALockFile as err:
            raise OutputError(f"{err.path} is {err.what}, not a DiffStyle360 lock file; move it away or choose "
                              "another output folder", err.errno) from None
        except LockUnavailable as err:
            raise OutputError(f"cannot create {err.path} ({_reason(err.cause)}); choose another output folder",
                              err.errno) from None
        except LockError as err:  # pragma: no cover - every LockError is one of the above
            raise OutputError(str(err), err.errno) from None

    def _unlock(self) -> None:
        self._folder_lock.release()


def current_files(folder: PathLike, kind: str = "run") -> List[str]:
    """The files of the last complete run of ``kind`` in ``folder`` (relative names), as the folder reads now.

    Takes the folder's lock (refused while a run holds it) and first finishes a commit that a
    killed run left behind, so the answer is always one complete set. ``[]`` if there is none.
    """
    path = _folder(folder)
    if not path.is_dir():
        return []
    reader = RunOutput(path, kind=kind)
    with hold_signals():
        reader._lock()
        try:
            _settle(path)
            files, _ = _read_manifest(path, kind)
        finally:
            reader._unlock()
    return sorted(files)
