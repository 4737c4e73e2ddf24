"""The signals that stop a run (Ctrl-C, ``kill``/``timeout``/docker, a closed terminal), installed one way.

The command line, its output folders and the training loop each route these signals
to a handler of their own for a while; all three install and restore them through
here, so "a signal the caller ignores (``nohup``) stays ignored" and "only the main
thread can install handlers" hold in one place.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Dict, Iterable

#: SIGINT, SIGTERM and SIGHUP, those this platform has.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def install_handlers(signums: Iterable[int], handler: Callable) -> Dict[int, object]:
    """Route ``signums`` to ``handler``; returns the handlers replaced (give them to :func:`restore_handlers`).

    A signal that is ignored stays ignored; off the main thread nothing changes.
    """
    previous: Dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum in signums:
        try:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # pragma: no cover - no signal support here
            pass
    return previous


def restore_handlers(previous: Dict[int, object]) -> None:
    """Put back what :func:`install_handlers` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
