"""Weights on demand in ComfyUI: the loader offers the official set before it is on disk and fetches it.

Two hooks for Load Appearance Modules: :func:`weight_set_choices` (its list: the sets
on disk, the official ``diffportrait360`` and folders whose ``.th`` files await
conversion) and :func:`prepare_weight_set` (called first in ``load``: downloads and
converts what the chosen set lacks, with ComfyUI's progress bar in bytes on the
loader node; returns at once when there is nothing to do). The set goes into the
first models folder that already holds it, else the first ``diffstyle360`` folder
(the ``extra_model_paths.yaml`` one when set, else ``ComfyUI/models/diffstyle360``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional

from diffstyle360_core import download as core

from . import host
from .host import io

_log = logging.getLogger(__name__)

OFFICIAL_SET = core.OFFICIAL_SET
#: The loader's option: keep the downloaded originals (≈ 20 GB) after converting them.
KEEP_TH = "keep_downloaded_th"


def weight_set_choices(names: List[str]) -> List[str]:
    """``names`` (sets on disk) plus the official set and the folders that hold only ``.th`` / the archive."""
    return sorted(set(names) | set(core.pending_sets(host.model_roots())) | {OFFICIAL_SET})


def optional_inputs() -> list:
    return [io.Boolean.Input(KEEP_TH, default=False, optional=True, tooltip=(
        "When the loader downloads the official set (the first run with 'diffportrait360': ≈ 20 GB from "
        "huggingface.co/gym890/diffportrait360, converted to fp16 safetensors): on = keep the downloaded .th files "
        "and inference_data.zip in the set folder, off = delete them once converted. Files you put there yourself "
        "are never deleted."))]


def set_folder(name: str) -> Optional[Path]:
    """Where the set ``name`` is (or, for the official set, will be); None for an unknown name."""
    folder = core.target_folder(host.model_roots(), name)
    return folder if name == OFFICIAL_SET or folder.is_dir() else None


def prepare_weight_set(name: str, keep_th: bool = False) -> None:
    """Download and convert what the set ``name`` lacks (nothing to do: returns after a few file checks)."""
    folder = set_folder(name)
    if folder is None:
        return
    report = core.ensure_weight_set(folder, official=name == OFFICIAL_SET, keep_originals=keep_th,
                                    progress=ByteProgress())
    for note in report.notes:
        _log.warning("DiffStyle360: %s", note)
    if report.changed:
        _log.info("DiffStyle360: weight set '%s' ready in %s (downloaded: %s; converted: %s)", name, folder,
                  ", ".join(report.downloaded) or "nothing", ", ".join(report.converted) or "nothing")


class ByteProgress:
    """Core progress events → one host progress bar per phase, in bytes; checks Cancel on every event."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.phase, self.bar, self.shown = interval, None, None, 0.0

    def __call__(self, event: core.ProgressEvent) -> None:
        host.check_interrupt()
        total = max(1, event.total)
        if event.phase != self.phase:
            self.phase, self.bar, self.shown = event.phase, host.progress_bar(total), 0.0
            _log.info("DiffStyle360: %s, %.2f GB in all, starting with %s", event.phase, event.total / 1e9, event.item)
        now = time.monotonic()
        if event.done >= event.total or now - self.shown >= self.interval:
            self.shown = now
            self.bar.update_absolute(event.done, total)
