"""Writing generated views as files: numbered PNGs and a looping turntable (GIF / WebP).

Lives with the command line because it writes through :class:`RunOutput` (one complete
run or nothing); the ComfyUI nodes hand images to the host's own save nodes instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import features

from ..images import ImageInputError, _check_output, tensor_to_pil
from .outputs import RunOutput

SAVE_FORMATS = ("png", "gif", "webp")


def view_names(n: int, *, prefix: str = "view", formats: Sequence[str] = SAVE_FORMATS) -> list:
    """The names :func:`save_views` writes for ``n`` views (known before any compute: a run checks them first)."""
    names = [f"{prefix}_{i:03d}.png" for i in range(n)] if "png" in formats else []
    names += ["turntable.gif"] if "gif" in formats else []
    names += ["turntable.webp"] if "webp" in formats and features.check("webp") else []
    return names


def _folder_kind(prefix: str) -> str:
    """The run kind of ``save_views`` on a folder: one manifest per prefix, so two prefixes never replace each other.

    A prefix that is already a valid kind of at most 40 characters keeps its plain name (folders written before
    keep working); any other is cleaned, cut to 40 characters and given a short SHA-256 of the prefix itself.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
    if cleaned == prefix and len(prefix) <= 40:
        return "save_views-" + prefix
    return f"save_views-{cleaned[:40]}-{hashlib.sha256(prefix.encode('utf-8')).hexdigest()[:12]}"


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
    one run of its own (kind ``save_views-<prefix>``): all its files appear together or
    none do, and the set an earlier ``save_views`` call with the same prefix wrote there
    is replaced as a whole; any other file of that name is refused, never overwritten.
    A write error (e.g. a full disk) raises
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
        with RunOutput(out, kind=_folder_kind(prefix), planned=view_names(len(x), prefix=prefix, formats=fmts)) as run:
            result = save_views(x, run, prefix=prefix, fps=fps, formats=fmts)
            run.commit()
        return result
    frames = [tensor_to_pil(v) for v in x]
    duration = max(1, int(round(1000.0 / float(fps))))
    result: dict = {}
    if "png" in fmts:
        names = view_names(len(frames), prefix=prefix, formats=("png",))
        result["png"] = [out.write(name, fr.save) for name, fr in zip(names, frames)]
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
