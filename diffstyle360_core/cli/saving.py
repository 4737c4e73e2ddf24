"""Writing generated views as files: numbered PNGs and a looping turntable (GIF / WebP).

Lives with the command line because it writes through :class:`RunOutput` (one complete
run or nothing); the ComfyUI nodes hand images to the host's own save nodes instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import features

from ..images import ImageInputError, _check_output, tensor_to_pil
from .outputs import RunOutput

SAVE_FORMATS = ("png", "gif", "webp")



def save_views(views: torch.Tensor, out: "str | os.PathLike | RunOutput", *, prefix: str = "view",
               fps: float = 10, formats: Sequence[str] = SAVE_FORMATS) -> dict:
    """Write generated views ``[N,3,H,W]`` in [-1, 1].

    * ``"png"``: ``{prefix}_000.png``, ``{prefix}_001.png``, ... (``prefix`` may name a
      subfolder: ``"back_views/content_back"``)
    * ``"gif"``: ``turntable.gif``, looping forever (``loop=0``), 1000/fps ms a frame
      (GIF stores 10 ms units; Pillow merges consecutive identical frames).
    * ``"webp"``: ``turntable.webp``, looping; skipped with a warning if this Pillow
      build lacks WebP support.

    ``out``: an open :class:`~diffstyle360_core.cli.outputs.RunOutput` (the files become
    part of that run and appear at its ``commit()``), or a folder: then this call is
    one run of its own: all its files appear together or none do, and an earlier
    ``{prefix}_*.png`` set (and turntable, if written) in that folder is replaced as a
    whole. A write error (e.g. a full disk) raises
    :class:`~diffstyle360_core.cli.outputs.OutputError` naming the file.

    The official code writes a 10 fps mp4 (facts §1 "Output"); 10 fps is the default.
    Returns ``{"png": [paths], "gif": path, "webp": path}`` (final paths) for the formats written.
    """
    x = _check_output(views, "save_views")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        raise ImageInputError(
            f"save_views: expected views [N,3,H,W] in [-1,1] with N >= 1, got shape {tuple(x.shape)}"
        )
    fmts = tuple(formats)
    bad = [f for f in fmts if f not in SAVE_FORMATS]
    if bad:
        raise ImageInputError(f"save_views: unknown format(s) {bad}; choose from {SAVE_FORMATS}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not np.isfinite(fps) or fps <= 0:
        raise ImageInputError(f"save_views: fps must be a number > 0, got {fps!r}")
    if not isinstance(out, RunOutput):
        first = Path(prefix).parts[0] if Path(prefix).parts else prefix
        replaces = [f"{prefix}_*.png" if first == prefix else first]
        if "gif" in fmts or "webp" in fmts:
            replaces += ["turntable.gif", "turntable.webp"]
        with RunOutput(out, replaces=replaces) as run:
            result = save_views(x, run, prefix=prefix, fps=fps, formats=fmts)
            run.commit()
        return result
    frames = [tensor_to_pil(v) for v in x]
    duration = max(1, int(round(1000.0 / float(fps))))
    result: dict = {}
    if "png" in fmts:
        result["png"] = [out.write(f"{prefix}_{i:03d}.png", fr.save) for i, fr in enumerate(frames)]
    if "gif" in fmts:
        result["gif"] = out.write("turntable.gif", lambda p: frames[0].save(
            p, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=duration, disposal=2))
    if "webp" in fmts:
        if features.check("webp"):
            result["webp"] = out.write("turntable.webp", lambda p: frames[0].save(
                p, format="WEBP", save_all=True, append_images=frames[1:], loop=0, duration=duration, quality=90))
        else:
            warnings.warn("save_views: this Pillow build has no WebP support; turntable.webp skipped",
                          RuntimeWarning, stacklevel=2)
    return result
