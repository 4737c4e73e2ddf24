"""Stopping a training run cleanly: Ctrl-C, SIGTERM and SIGHUP finish the current step, then save it.

An optimizer step interrupted half-way leaves weights that belong to no step, so a
signal during the loop is only *noted*; the loop checks :attr:`StopSignals.requested`
after each optimizer step, saves a checkpoint and raises :class:`TrainingInterrupted`
saying what was kept. Before the loop starts (checks, model loading) nothing has been
written and a signal stops the run at once. A second signal stops at once too (the
current step is lost; the last saved checkpoint is kept). Exit codes follow the shell:
130 Ctrl-C, 143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

import os
import signal
from typing import Dict, Optional

from ..stop_signals import STOP_SIGNALS, install_handlers, restore_handlers


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``str()`` says what was kept, ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.message, self.signum = message, int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """Context manager: while active, Ctrl-C/SIGTERM/SIGHUP call :meth:`_handle` (main thread only).

    ``deferring`` False (before the loop): a signal raises :class:`TrainingInterrupted` at once
    with ``early_message``. ``deferring`` True (in the loop): the first signal sets
    :attr:`requested`; a second raises at once with :attr:`forced_message`.
    """

    def __init__(self, early_message: str = "interrupted before training started; nothing written"):
        self.requested: Optional[int] = None
        self.deferring = False
        self.early_message = early_message
        self.forced_message = early_message
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        self._previous = install_handlers(STOP_SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if not self.deferring:
            raise TrainingInterrupted(self.early_message, signum)
        if self.requested is not None:
            raise TrainingInterrupted(self.forced_message, signum)
        self.requested = signum
        note = f"\n{signal.Signals(signum).name} received: stopping after the current step (again to stop at once)\n"
        os.write(2, note.encode())  # unbuffered: a print here could re-enter a progress bar's write
