"""Atomic file writes: a reader never sees a half-written weight file, config or trained module.

One helper for every file the library writes (``config.json``, component
``.safetensors``, trained module files and their JSON sidecars).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union


def write_atomic(path: Union[str, os.PathLike], write: Callable[[str], None]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    On any failure (an exception, Ctrl-C) the temporary file is removed and an
    existing ``path`` is left as it was. The file ends up 0644 like other model files.
    """
    path = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """:func:`write_atomic` of UTF-8 ``text``."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
