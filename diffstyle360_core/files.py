"""Atomic file writes: a reader never sees a half-written weight file, config or trained module.

One helper for every file the library writes (``config.json``, component
``.safetensors``, trained module files and their JSON sidecars, the command
line's reports, summaries, caches and run journals, the download's state).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

_HASH_BLOCK = 8 * 2**20  # bytes read at a time: a weight file of gigabytes never sits in memory whole

TEMP_SUFFIX = ".tmp"  # every temporary file of write_atomic ends so; its name starts with the target's


def temp_prefix(name: str) -> str:
    """The start of a temporary file's name for target ``name``: hidden, and a hidden name keeps its own start.

    So ``config.json`` writes through ``.config.json.<random>.tmp`` and ``.ds360-journal.json``
    through ``.ds360-journal.json.<random>.tmp`` (a folder's reserved prefix still matches).
    """
    return f"{name}." if name.startswith(".") else f".{name}."


def write_atomic(path: Union[str, os.PathLike], write: Callable[[str], None], *, fsync: bool = False,
                 rename: Optional[Callable[[str, Path], None]] = None) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    On any failure (an exception, Ctrl-C) the temporary file is removed and an
    existing ``path`` is left as it was. The file ends up 0644 like other model files.
    ``fsync=True`` also makes it survive a power loss: the data is flushed before the
    rename and the folder after it (crash-consistent journals). ``rename`` replaces
    ``os.replace`` for a caller that routes every rename through one hook of its own.
    """
    path = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        if fsync:
            fsync_path(tmp, os.O_RDWR)
        (rename or os.replace)(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error is the one to report
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def unlink_quietly(path: Union[str, os.PathLike]) -> None:
    """Delete a file we made if it is still there (cleanup: a failure here must not hide the real outcome)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_text_atomic(path: Union[str, os.PathLike], text: str, **options) -> Path:
    """:func:`write_atomic` of UTF-8 ``text`` (``options``: its ``fsync`` and ``rename``)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), **options)


def fsync_path(path: Union[str, os.PathLike], flags: int = os.O_RDONLY) -> None:
    """Flush ``path`` to disk: open, fsync, close (a power loss keeps what was written).

    Windows flushes only a handle open for writing: a file that must be flushed there too is opened with
    ``flags=os.O_RDWR``; folders go through :func:`fsync_dir`.
    """
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Union[str, os.PathLike]) -> None:
    """Flush a folder's entries (a rename, a new file) to disk; POSIX only: Windows cannot open a folder."""
    if os.name == "posix":
        fsync_path(path)


def sha256_file(path: Union[str, os.PathLike], hasher=None, on_bytes: Optional[Callable[[int], None]] = None):
    """Feed the bytes of ``path`` to ``hasher`` (a new SHA-256 if None) and return it (``.hexdigest()``).

    ``hasher`` lets a download go on from a partial file's hash; ``on_bytes(n)`` is told of every block read
    (a progress bar on a file of gigabytes).
    """
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            hasher.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return hasher
