"""Camera-condition sets and yaw selection (the "C" box: view control).

Follows ``/work/shared/reference/diffportrait360-facts.md`` §3 ("What the
condition image is", "360° trajectory") and §1 ("Preprocessing of every image").

* DiffPortrait360 has no explicit camera parameters: the pose ControlNet gets an
  **RGB rendering of a different synthetic head** at the target camera, in
  [-1, 1], preprocessed like any image (resized to the model resolution).
* The official turntable uses 32 precomputed renders
  ``cam_condition/sphere32/0000000.png … 0000031.png``: yaw_k = 2π·k/32 around a
  fixed elevation, k = 0 frontal, k = 16 the back, 11.25° apart. (The renderer's
  own frame adds π/2 to that; here yaw 0 always means "frontal".)
* The back-view model conditions on frame 16 (one dataset version uses 18);
  :func:`back_view_index` picks the view nearest 180°.

Yaw convention of :class:`CameraSet`: degrees, 0 = frontal, increasing in the
direction of increasing file index. An N-file folder is assumed to be an even
turntable: ``yaw_i = 360·i/N`` (for sphere32, exactly the official yaws).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import CONDITION_SUBDIRS, OFFICIAL_VIEWS
from .images import (IMAGE_SUFFIXES, ImageInputError, _check_crop, _check_size, _open_pil,
                     to_model_tensor)

__all__ = [
    "CameraSet",
    "OFFICIAL_VIEWS",
    "load_condition_set",
    "find_condition_folder",
    "select_views",
    "even_positions",
    "is_front",
    "TooManyViewsError",
    "back_view_index",
    "user_conditions",
]

_WHERE_FROM = (
    "The official set is DiffPortrait360's inference data folder `cam_condition/sphere32` "
    "(32 PNGs 0000000.png … 0000031.png, from the project's inference_data.zip); "
    "a tiny demo set is written by `python -m diffstyle360_core make-tiny`."
)


@dataclass
class CameraSet:
    """Pose-condition images for a set of cameras.

    images:   ``[N,3,S,S]`` float tensor in [-1, 1] (ControlNet hint range).
    yaws_deg: N yaws in degrees, 0 = frontal, increasing with the view index.
    source:   where the images came from (folder path, ``"user"``, ...).
    indices:  position of each view in the set it was loaded as (kept through
              :meth:`select`, so a subset still knows its original frame numbers);
              defaults to ``0..N-1``.
    """

    images: torch.Tensor
    yaws_deg: list[float]
    source: str = ""
    indices: list[int] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.images) or self.images.ndim != 4 or self.images.shape[1] != 3:
            shape = tuple(self.images.shape) if torch.is_tensor(self.images) else type(self.images)
            raise ImageInputError(f"CameraSet.images must be a [N,3,S,S] tensor, got {shape}")
        n = self.images.shape[0]
        self.yaws_deg = [float(y) for y in self.yaws_deg]
        if len(self.yaws_deg) != n:
            raise ImageInputError(
                f"CameraSet: {n} images but {len(self.yaws_deg)} yaws; give one yaw per image"
            )
        if not all(math.isfinite(y) for y in self.yaws_deg):
            raise ImageInputError(f"CameraSet: yaws must be finite numbers, got {self.yaws_deg}")
        self.indices = list(range(n)) if self.indices is None else [int(i) for i in self.indices]
        if len(self.indices) != n:
            raise ImageInputError(f"CameraSet: {n} images but {len(self.indices)} indices")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Side of the square condition images in pixels."""
        return int(self.images.shape[-1])

    def select(self, indices: Sequence[int]) -> "CameraSet":
        """A new set with the views at ``indices`` (positions in this set), in that order."""
        idx = _validate_indices(indices, len(self))
        return CameraSet(
            images=self.images[idx],
            yaws_deg=[self.yaws_deg[i] for i in idx],
            source=self.source,
            indices=[self.indices[i] for i in idx],
        )

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "CameraSet":
        """Move / cast the images; yaws and indices are shared metadata."""
        return CameraSet(self.images.to(device=device, dtype=dtype), list(self.yaws_deg),
                         self.source, list(self.indices))


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def _even_yaws(n: int) -> list[float]:
    return [360.0 * i / n for i in range(n)]


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def load_condition_set(folder: str | os.PathLike, size: int, *,
                       crop: str = "center") -> CameraSet:
    """Read every ``*.png`` / ``*.jpg`` in ``folder`` (sorted by name) as a turntable.

    Yaws are spread evenly: ``yaw_i = 360·i/N``; for the official 32-file sphere32
    set (``0000000.png … 0000031.png``) that is exactly the official trajectory
    (k·11.25°, k = 0 frontal, 16 back). Files must all be square and the same size;
    they are converted to RGB, resized to ``size`` (bicubic, as the official
    ``.resize((512, 512))``) and mapped to [-1, 1]. ``crop`` is passed on to
    :func:`~diffstyle360_core.images.to_model_tensor` (square inputs are unaffected).
    """
    size = _check_size(size)
    crop = _check_crop(crop)
    d = Path(os.fspath(folder)).expanduser()
    if not d.exists():
        raise ImageInputError(f"camera-condition folder not found: '{d}'. {_WHERE_FROM}")
    if not d.is_dir():
        raise ImageInputError(
            f"camera-condition path '{d}' is a file; pass the folder that holds the "
            f"condition images. {_WHERE_FROM}"
        )
    files = _list_images(d)
    if not files:
        raise ImageInputError(
            f"camera-condition folder '{d}' has no .png/.jpg images. {_WHERE_FROM}"
        )
    pils = []
    for f in files:
        im = _open_pil(f, name=f"camera-condition file '{f.name}'")
        w, h = im.size
        if w != h:
            raise ImageInputError(
                f"camera-condition file '{f.name}' in '{d}' is {w}x{h}; condition renders "
                "must be square. Re-render or crop it to a square."
            )
        pils.append(im)
    sizes = [im.size for im in pils]
    common, _ = Counter(sizes).most_common(1)[0]
    odd = [(f.name, s) for f, s in zip(files, sizes) if s != common]
    if odd:
        shown = ", ".join(f"'{nm}' is {w}x{h}" for nm, (w, h) in odd[:5])
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        raise ImageInputError(
            f"camera-condition files in '{d}' differ in size: {shown}{more}, but the "
            f"others are {common[0]}x{common[1]}. All views of a set must share one size."
        )
    images = torch.cat([to_model_tensor(im, size, name=f"camera-condition file '{f.name}'",
                                        crop=crop) for f, im in zip(files, pils)], dim=0)
    return CameraSet(images=images, yaws_deg=_even_yaws(len(files)), source=str(d))


def find_condition_folder(weights_dir: str | os.PathLike) -> Path:
    """Locate the condition renders under ``weights_dir``.

    Searches, in order, :data:`~.config.CONDITION_SUBDIRS` (``cam_condition/sphere32``,
    ``cam_condition``, ``sphere32``); the first existing folder that holds .png/.jpg
    files wins.
    """
    root = Path(os.fspath(weights_dir)).expanduser()
    searched = [root / s for s in CONDITION_SUBDIRS]
    for cand in searched:
        if cand.is_dir() and _list_images(cand):
            return cand
    listing = "\n".join(f"  - {p}" for p in searched)
    hint = "" if root.is_dir() else f" (the folder '{root}' itself does not exist)"
    raise ImageInputError(
        f"no camera-condition images found under '{root}'{hint}. Searched:\n{listing}\n"
        f"{_WHERE_FROM}"
    )


def has_condition_folder(weights_dir: str | os.PathLike) -> bool:
    """Whether :func:`find_condition_folder` finds condition renders under ``weights_dir`` (one rule for the
    catalogue and the download)."""
    try:
        find_condition_folder(weights_dir)
    except ImageInputError:
        return False
    return True


# --------------------------------------------------------------------------- #
# selection
# --------------------------------------------------------------------------- #
def _validate_indices(indices: Sequence[int], n: int) -> list[int]:
    try:
        idx = [int(i) for i in indices]
    except (TypeError, ValueError) as e:
        raise ImageInputError(f"view indices must be integers, got {indices!r}") from e
    if not idx:
        raise ImageInputError("no view indices given; pass at least one")
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise ImageInputError(f"view indices {bad} are out of range; valid indices are 0..{n - 1}")
    dups = sorted({i for i in idx if idx.count(i) > 1})
    if dups:
        raise ImageInputError(f"duplicate view indices {dups}; each view may be chosen once")
    return idx


#: Yaws this close to 0 (mod 360) count as the front view.
FRONT_TOL_DEG = 1e-6


def is_front(yaw_deg: float) -> bool:
    """Whether ``yaw_deg`` is the front view (0 degrees, any multiple of 360)."""
    r = yaw_deg % 360.0
    return min(r, 360.0 - r) <= FRONT_TOL_DEG


class TooManyViewsError(ImageInputError):
    """More views asked than the set (or the yaw range) holds; carries the numbers so a host can word its own advice."""

    def __init__(self, asked: int, available: int, where: str, whole_set: bool) -> None:
        self.asked, self.available, self.whole_set = asked, available, whole_set
        fix = "or a larger condition set" if whole_set else "or widen the yaw range"
        super().__init__(f"asked for {asked} views but only {available} are available {where}; "
                         f"use views <= {available} {fix}")


def _check_views(views: Any, available: int, where: str, whole_set: bool) -> int:
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)):
        raise ImageInputError(f"views must be an integer, got {views!r}")
    views = int(views)
    if views < 1:
        raise ImageInputError(f"views must be at least 1, got {views}")
    if views > available:
        raise TooManyViewsError(views, available, where, whole_set)
    return views


def even_positions(available: int, views: int, front: int | None, cyclic: bool) -> list[int]:
    """``views`` positions out of ``available`` consecutive renders at one constant stride.

    One stride, so a turntable never mixes step sizes (e.g. 11.25 and 22.5 degrees).
    The largest stride that fits wins (the widest coverage), but only with ``front``
    among the picks when it is given (a smaller stride is taken when needed). An arc
    is centred in the range; a full circle (``cyclic``: the renders go all the way
    round) starts as close to the first render as the front allows.
    """
    if not 1 <= views <= available:
        raise ValueError(f"even_positions: views must be in [1, {available}], got {views}")
    if views == 1:
        if front is not None:
            return [front]
        return [0 if cyclic else (available - 1) // 2]
    widest = available // views if cyclic else (available - 1) // (views - 1)
    for stride in range(widest, 0, -1):
        span = (views - 1) * stride
        starts = range(0, available - span)
        if front is not None:
            starts = [s for s in starts if s <= front <= s + span and (front - s) % stride == 0]
        if starts:
            centre = available - 1
            best = min(starts) if cyclic else min(starts, key=lambda s: (abs(2 * s + span - centre), s))
            return [best + i * stride for i in range(views)]
    raise AssertionError("stride 1 always fits when views <= available")  # checked above


def _in_yaw_range(camera_set: CameraSet, yaw_range: Any) -> tuple[list[int], str]:
    """(positions of the views inside ``yaw_range``, in turntable order from its start; the range as text)."""
    try:
        start, end = (float(v) for v in yaw_range)
    except (TypeError, ValueError) as e:
        raise ImageInputError(f"yaw_range must be (start_deg, end_deg), got {yaw_range!r}") from e
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ImageInputError(f"yaw_range must be finite, got {yaw_range!r}")
    span = (end - start) % 360.0
    if span == 0.0 and end != start:
        span = 360.0
    eps = 1e-6
    offsets = [((y - start) % 360.0, i) for i, y in enumerate(camera_set.yaws_deg)]
    offsets = [(0.0 if o > 360.0 - eps else o, i) for o, i in offsets]  # fp wrap at start
    inside = [i for o, i in sorted(offsets) if o <= span + eps]
    if not inside:
        yaws = ", ".join(f"{y:g}" for y in camera_set.yaws_deg)
        raise ImageInputError(
            f"no views with yaw in [{start:g}°, {end:g}°]; available yaws: {yaws}"
        )
    return inside, f"in yaw range [{start:g}°, {end:g}°]"


def _closes_the_circle(yaws: Sequence[float]) -> bool:
    """Whether ``yaws`` (in order) are an even turntable: the step from the last back to the first is a step too.

    Then picks may be spread round the whole circle (4 of 32 renders: every 90°);
    an arc of renders is spread from its first to its last instead.
    """
    step = 360.0 / len(yaws)
    gaps = [(b - a) % 360.0 for a, b in zip(yaws, list(yaws[1:]) + [yaws[0]])]
    return all(abs(g - step) <= 1e-6 for g in gaps)


def select_views(camera_set: CameraSet, *, views: int | None = None,
                 yaw_range: tuple[float, float] | None = None,
                 indices: Sequence[int] | None = None) -> CameraSet:
    """Choose a subset of views: the one rule of the node, the command line and the library.

    * ``indices``: explicit positions (validated: in range, no duplicates); cannot be
      combined with ``views`` / ``yaw_range``.
    * ``yaw_range=(start, end)`` in degrees, inclusive, going in the direction of
      increasing yaw and wrapping through 360 (``(300, 60)`` = 300°…360°/0°…60°);
      ``(0, 360)`` is the full circle. Views come out in turntable order from
      ``start``. Without it, the whole set in its own order.
    * ``views=N``: N of those views at one constant step (:func:`even_positions`),
      the front (yaw 0) always among them when the range holds it: 8 of the 32
      official renders are every 45°, 12 of them every 22.5° from the front
      (270° of the circle: one step never covers 360° with a count that does not
      divide the set), 12 of yaw -90…90 every 11.25° centred on the front.
    * nothing: the whole set.
    """
    n = len(camera_set)
    if indices is not None:
        if views is not None or yaw_range is not None:
            raise ImageInputError("pass either indices or views/yaw_range, not both")
        return camera_set.select(indices)
    if yaw_range is None:
        inside, where = list(range(n)), "in the condition set"
    else:
        inside, where = _in_yaw_range(camera_set, yaw_range)
    if views is None:
        return camera_set.select(inside)
    views = _check_views(views, len(inside), where, whole_set=len(inside) == n)
    cyclic = len(inside) == n and _closes_the_circle([camera_set.yaws_deg[i] for i in inside])
    front = next((p for p, i in enumerate(inside) if is_front(camera_set.yaws_deg[i])), None)
    return camera_set.select([inside[p] for p in even_positions(len(inside), views, front, cyclic)])


def back_view_index(camera_set: CameraSet) -> int:
    """Position of the view whose yaw is closest to 180° (ties: the lowest index)."""
    if len(camera_set) == 0:
        raise ImageInputError("the camera set is empty")
    dist = [abs(((y - 180.0) + 180.0) % 360.0 - 180.0) for y in camera_set.yaws_deg]
    return int(min(range(len(dist)), key=lambda i: (round(dist[i], 9), i)))


def user_conditions(images: Any, size: int, *, yaws_deg: Sequence[float] | None = None,
                    crop: str = "center", name: str = "camera conditions") -> CameraSet:
    """Condition views from user images.

    ``images``: a ComfyUI IMAGE ``[B,H,W,3]`` (or any batch layout
    :func:`~diffstyle360_core.images.to_model_tensor` accepts) or a list of PIL
    images / arrays / file paths. Yaws default to an even 360° spread, ``360·i/B``.
    """
    size = _check_size(size)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageInputError(f"{name}: the list of condition images is empty")
        tens = torch.cat([to_model_tensor(im, size, name=f"{name} [{i}]", crop=crop)
                          for i, im in enumerate(images)], dim=0)
    else:
        tens = to_model_tensor(images, size, name=name, crop=crop)
    n = tens.shape[0]
    if yaws_deg is None:
        yaws = _even_yaws(n)
    else:
        yaws = [float(y) for y in yaws_deg]
        if len(yaws) != n:
            raise ImageInputError(f"{name}: {n} images but {len(yaws)} yaws; give one yaw per image")
    return CameraSet(images=tens, yaws_deg=yaws, source="user")
