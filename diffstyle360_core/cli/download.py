"""``download`` subcommand: the official weight set from the Hugging Face hub, converted to fp16 once.

``python -m diffstyle360_core download [--weights-dir DIR] [--keep-th]`` does what the
ComfyUI loader does on its first run with the official set (README, Getting the
weights): downloads what DIR lacks (resuming an interrupted download), checks each
file's SHA-256, converts the ``.th`` files and unpacks the camera-condition set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict

Handler = Callable[[argparse.Namespace], None]

#: This package's root; inside ``ComfyUI/custom_nodes/<pack>/`` the default folder is ComfyUI's models folder.
PACK_ROOT = Path(__file__).resolve().parents[2]


def default_folder() -> Path:
    """ComfyUI/models/diffstyle360/diffportrait360 when this pack sits in ComfyUI/custom_nodes, else
    ./weights/diffportrait360."""
    from ..download import OFFICIAL_SET

    if PACK_ROOT.parent.name == "custom_nodes" and (PACK_ROOT.parent.parent / "models").is_dir():
        return PACK_ROOT.parent.parent / "models" / "diffstyle360" / OFFICIAL_SET
    return Path("weights") / OFFICIAL_SET


class ByteBar:
    """One text line per phase (download, check, convert, extract) in bytes, redrawn at most 5 times a second."""

    LABELS = {"download": "downloading", "check": "checking the kept part of", "convert": "converting",
              "extract": "unpacking the camera set from"}

    def __init__(self, state, stream=None, width: int = 30):
        self.state, self.stream, self.width = state, stream or sys.stderr, width
        self.phase, self.start, self.drawn = None, time.time(), 0.0

    def __call__(self, event) -> None:
        if event.phase != self.phase:
            if self.state.line_open:
                self.stream.write("\n")
            self.phase, self.start, self.drawn = event.phase, time.time(), 0.0
        now = time.time()
        finished = event.done >= event.total
        if (not finished and now - self.drawn < 0.2) or (finished and self.drawn < 0):
            return  # redrawn 5 times a second; a finished phase once
        self.drawn = -1.0 if finished else now
        done = int(self.width * event.done / max(1, event.total))
        rate = event.done / max(1e-6, now - self.start) / 1e6
        label = f"{self.LABELS.get(event.phase, event.phase)} {event.item}"
        self.stream.write(f"\r{label} [{'#' * done}{'.' * (self.width - done)}] {event.done / 1e6:,.1f}/"
                          f"{event.total / 1e6:,.1f} MB ({rate:,.1f} MB/s)")
        self.state.line_open = not finished
        if finished:
            self.stream.write("\n")
        self.stream.flush()


def _download(args: argparse.Namespace) -> None:
    from .. import download as dl
    from . import main as cli

    folder = Path(args.weights_dir).expanduser() if args.weights_dir else default_folder()
    cli.STATE.interrupt_note = (f"interrupted; what was downloaded or converted is kept in {folder}: run download "
                                "again to continue")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # our own bar in bytes; huggingface_hub's would draw over it
    report = dl.ensure_weight_set(folder, official=True, keep_originals=args.keep_th,
                                  progress=ByteBar(cli.STATE))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.changed:
        print(f"weights ready in {folder} (use it as --weights {folder})")
    else:
        print(f"{folder} already holds the official weights; nothing to do (use it as --weights {folder})")


def register(sub) -> Dict[str, Handler]:
    p = sub.add_parser(
        "download",
        help="get the official DiffPortrait360 weights from the Hugging Face hub and convert them (≈ 20 GB)",
        description="Download model_state-340000.th, back_head-230000.th and inference_data.zip from "
        "huggingface.co/gym890/diffportrait360 (HF_ENDPOINT and HF_TOKEN apply), check their SHA-256, convert the "
        "checkpoints to fp16 safetensors and unpack the camera-condition set. An interrupted run continues where it "
        "stopped; .th files already in the folder are converted, not downloaded again.",
    )
    p.add_argument("--weights-dir", default=None,
                   help="the weight-set folder to fill, later given as --weights (default: "
                        "ComfyUI/models/diffstyle360/diffportrait360 when this pack is in ComfyUI/custom_nodes, "
                        "else ./weights/diffportrait360)")
    p.add_argument("--keep-th", action="store_true",
                   help="keep the downloaded .th files and inference_data.zip in the folder after converting "
                        "(≈ 20 GB more); files you put there yourself are never deleted")
    return {"download": _download}
