"""Paired multi-view stylization data (§3.4, supplementary §6): format, validator, loader, tiny set.

One sample = one folder::

    SAMPLE/
      content/front.png      content identity, frontal view          -> content appearance module
      content/back.png       its back view                            -> content appearance module
      content/views/*.png    (optional) the unstylized views at the target cameras; checked, not trained on
      style/front.png        style exemplar of a *different* identity (§3.4) -> style appearance module
      style/back.png         its back view
      target/*.png           ground-truth stylized views of the content identity (the loss targets)
      cam/*.png              camera-condition image of each target view (same file names as target/)

A dataset is a folder of such sample folders (any names; folders starting with
``.`` or ``_`` are skipped). The views of ``target/`` (and ``cam/``) are ordered
by file name and must follow the orbit in order (e.g. ``000.png … 031.png`` =
the official sphere32 yaws ``360·k/32``, k = 0 frontal): a training step takes
``views_per_sample`` consecutive views (every ``view_stride``-th, wrapping
around) and runs them through the view-consistency modules in windows of 8.
Camera poses are given as condition *images* (what the pose ControlNet sees:
renders of another head at the same camera, facts §3); for sphere32 cameras
copy ``cam_condition/sphere32/*.png`` into ``cam/`` under the target's names.
Accepted image types: .png, .jpg, .jpeg. Within a sample, the content, style and
target images share one size and the condition images share one size; images
are centre-cropped to a square and resized to the model resolution.

:func:`validate_dataset` checks every sample before training starts and raises
one :class:`DatasetError` that lists every problem found.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..images import IMAGE_SUFFIXES, MIN_SIDE, to_model_tensor
from ..options import InputError

REFERENCE_FILES = ("content/front", "content/back", "style/front", "style/back")
TARGET_DIR, CAMERA_DIR, CONTENT_VIEWS_DIR = "target", "cam", "content/views"


class DatasetError(InputError):
    """A dataset folder that cannot be trained on; ``problems`` lists every issue found (one per line)."""

    def __init__(self, root, problems: Sequence[str], samples_checked: int = 0):
        self.root = str(root)
        self.problems = list(problems)
        shown = self.problems[:200]
        more = f"\n  … and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        lines = "\n".join(f"  - {p}" for p in shown)
        super().__init__(
            f"dataset {self.root}: {len(self.problems)} problem(s) in {samples_checked} sample folder(s) "
            f"(format: README, 'Train your own style module'):\n{lines}{more}"
        )


@dataclass
class Sample:
    """One validated sample folder."""

    name: str
    path: Path
    references: Dict[str, Path]  # content/front, content/back, style/front, style/back
    targets: List[Path]
    cameras: List[Path]
    content_views: List[Path] = field(default_factory=list)

    @property
    def num_views(self) -> int:
        return len(self.targets)


def _find_image(folder: Path, stem: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        for cand in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


def _list_images(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def _image_size(path: Path) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """(width, height) of a readable image, or (None, why not). Checks the whole file's integrity."""
    try:
        with Image.open(path) as im:
            size = im.size
            if im.format == "PNG":
                im.verify()  # every chunk's CRC (truncation, corruption) without decoding the pixels
            else:
                im.load()  # JPEG has no checksums: decode it
        return size, None
    except Exception as err:  # noqa: BLE001 - every reason becomes one line of the report
        return None, f"{type(err).__name__}: {str(err).strip()[:120] or 'unreadable'}"


def view_indices(num_available: int, views: int, stride: int, start: int) -> List[int]:
    """Positions of the ``views`` views taken from a sequence of ``num_available``: every ``stride``-th
    from ``start``, wrapping around the orbit."""
    return [(start + i * stride) % num_available for i in range(views)]


def _selectable(num_available: int, views: int, stride: int) -> bool:
    return num_available >= 1 and len(set(view_indices(num_available, views, stride, 0))) == views


def _check_sample(folder: Path, views: int, stride: int) -> Tuple[Optional[Sample], List[str]]:
    name = folder.name
    problems: List[str] = []
    refs: Dict[str, Path] = {}
    for stem in REFERENCE_FILES:
        sub, base = stem.split("/")
        found = _find_image(folder / sub, base) if (folder / sub).is_dir() else None
        if found is None:
            problems.append(f"{name}: missing {stem}.png (or .jpg)")
        else:
            refs[stem] = found

    def listing(sub: str, required: bool) -> List[Path]:
        d = folder / sub
        if not d.is_dir():
            if required:
                problems.append(f"{name}: missing folder {sub}/")
            return []
        files = _list_images(d)
        if not files and required:
            problems.append(f"{name}: {sub}/ holds no .png/.jpg images")
        return files

    targets = listing(TARGET_DIR, True)
    cameras = listing(CAMERA_DIR, True)
    content_views = listing(CONTENT_VIEWS_DIR, False)
    if targets and cameras:
        t_names = {p.stem for p in targets}
        c_names = {p.stem for p in cameras}
        for stem in sorted(t_names - c_names):
            problems.append(f"{name}: target/{stem} has no camera condition cam/{stem}.png")
        for stem in sorted(c_names - t_names):
            problems.append(f"{name}: cam/{stem} has no target view target/{stem}.png")
    if content_views and targets:
        t_names = {p.stem for p in targets}
        v_names = {p.stem for p in content_views}
        for stem in sorted(t_names ^ v_names):
            where = "content/views" if stem in t_names else "target"
            problems.append(f"{name}: view {stem} is missing from {where}/ (content/views must match target/)")
    if targets and not _selectable(len(targets), views, stride):
        problems.append(
            f"{name}: {len(targets)} target views, but a step takes {views} distinct views with stride {stride}; "
            f"give more views or lower views_per_sample / view_stride"
        )

    # readability and sizes, every file
    sizes: Dict[Path, Tuple[int, int]] = {}
    for path in list(refs.values()) + targets + cameras + content_views:
        size, why = _image_size(path)
        rel = path.relative_to(folder).as_posix()
        if size is None:
            problems.append(f"{name}: cannot read {rel} ({why})")
            continue
        if min(size) < MIN_SIDE:
            problems.append(f"{name}: {rel} is {size[0]}x{size[1]}, smaller than {MIN_SIDE} px")
        sizes[path] = size

    def same_size(paths: List[Path], what: str) -> None:
        known = [(p, sizes[p]) for p in paths if p in sizes]
        if not known:
            return
        values = [s for _, s in known]
        common = max(set(values), key=values.count)
        for p, s in known:
            if s != common:
                problems.append(
                    f"{name}: size mismatch: {p.relative_to(folder).as_posix()} is {s[0]}x{s[1]}, the other "
                    f"{what} are {common[0]}x{common[1]}"
                )

    same_size(list(refs.values()) + targets + content_views, "content/style/target images")
    same_size(cameras, "camera-condition images")
    if problems:
        return None, problems
    by_stem = {p.stem: p for p in cameras}
    cams_in_order = [by_stem[p.stem] for p in targets]
    views_by_stem = {p.stem: p for p in content_views}
    return Sample(name, folder, refs, targets, cams_in_order, [views_by_stem[p.stem] for p in targets]
                  if content_views else []), []


def validate_dataset(root, *, views_per_sample: int = 16, view_stride: int = 1) -> List[Sample]:
    """Check every sample folder of ``root``; return the samples, or raise one :class:`DatasetError`
    listing every problem (missing or unreadable files, size mismatches, target/cam name mismatches,
    too few views)."""
    root = Path(os.fspath(root)).expanduser()
    if not root.exists():
        raise DatasetError(root, [f"folder {root} does not exist (make a demo set with `make-tiny-dataset`)"])
    if not root.is_dir():
        raise DatasetError(root, [f"{root} is a file; give the folder that holds one folder per sample"])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise DatasetError(root, [f"{root} holds no sample folders (one folder per sample, see the format)"])
    samples, problems = [], []
    for folder in folders:
        sample, issues = _check_sample(folder, views_per_sample, view_stride)
        problems += issues
        if sample is not None:
            samples.append(sample)
    if problems:
        raise DatasetError(root, problems, len(folders))
    return samples


class StylizationDataset(torch.utils.data.Dataset):
    """Items are keyed ``(sample index, start view)``; see :class:`StepSampler`.

    An item holds, at the model resolution, in [-1, 1]: ``content`` [2,3,S,S]
    (front, back), ``style`` [2,3,S,S] (front, back), ``target`` [V,3,S,S] and
    ``cameras`` [V,3,S,S], plus ``name`` and ``views`` (positions in the sample).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, views_per_sample: int = 16, view_stride: int = 1):
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.views = int(views_per_sample)
        self.stride = int(view_stride)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, paths: Sequence[Path], what: str) -> torch.Tensor:
        return torch.cat([to_model_tensor(p, self.image_size, name=f"{what} {p}") for p in paths])

    def __getitem__(self, key) -> dict:
        index, start = key if isinstance(key, tuple) else (key, 0)
        s = self.samples[index]
        idx = view_indices(s.num_views, self.views, self.stride, start)
        refs = s.references
        return {
            "name": s.name,
            "views": idx,
            "content": self._load([refs["content/front"], refs["content/back"]], "content"),
            "style": self._load([refs["style/front"], refs["style/back"]], "style"),
            "target": self._load([s.targets[i] for i in idx], "target"),
            "cameras": self._load([s.cameras[i] for i in idx], "camera condition"),
        }


class StepSampler(torch.utils.data.Sampler):
    """Item keys for steps ``start_step, start_step+1, …``: (sample, first view) drawn from
    ``(seed, step, rank)`` alone, so a resumed run sees exactly the data the uninterrupted one would,
    and each process of a multi-GPU run sees different samples."""

    def __init__(self, samples: Sequence[Sample], *, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, micro_steps: int = 1):
        self.sizes = [s.num_views for s in samples]
        self.seed, self.start, self.total = int(seed), int(start_step), int(total_steps)
        self.rank, self.micro = int(rank), int(micro_steps)

    def key(self, step: int, micro: int) -> Tuple[int, int]:
        rng = random.Random(f"{self.seed}/{step}/{micro}/{self.rank}")
        index = rng.randrange(len(self.sizes))
        return index, rng.randrange(self.sizes[index])

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for step in range(self.start, self.total):
            for micro in range(self.micro):
                yield self.key(step, micro)

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.micro


def collate_one(item):
    """Batch size is one sample (its views are the batch): the item passes unchanged."""
    return item


# ----------------------------------------------------------------------------------------------
# tiny synthetic dataset (tests, README demo)
# ----------------------------------------------------------------------------------------------
_STYLE_PALETTE = {  # a "zombie" domain: green skin, purple hair, red eyes, posterised
    "skin": np.array([0.45, 0.70, 0.35], np.float32),
    "hair": np.array([0.35, 0.10, 0.40], np.float32),
    "eyes": np.array([0.90, 0.10, 0.10], np.float32),
}


def _render_head(size: int, yaw_deg: float, ident: dict, styled: bool) -> np.ndarray:
    """A shaded ellipse head at ``yaw_deg`` (0 = frontal): face features turn with the yaw and hide on the back."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx + 0.5 - size / 2) / (ident["width"] * size)
    v = (yy + 0.5 - size * 0.52) / (0.42 * size)
    r2 = u * u + v * v
    inside = r2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    facing = np.cos(np.arctan2(u, nz) - math.radians(yaw_deg))
    skin = _STYLE_PALETTE["skin"] if styled else ident["skin"]
    hair = _STYLE_PALETTE["hair"] if styled else ident["hair"]
    t = np.clip(facing * 1.5 + 0.2, 0.0, 1.0)[..., None]
    t = np.where((v < -0.45)[..., None], np.minimum(t, 0.15), t)
    shade = (0.45 + 0.55 * nz)[..., None]
    col = (t * skin + (1 - t) * hair) * shade
    img = np.empty((size, size, 3), np.float32)
    img[...] = ident["background"]
    img[inside] = col[inside]
    yr = math.radians(yaw_deg)
    eye = _STYLE_PALETTE["eyes"] if styled else np.array([0.08, 0.08, 0.12], np.float32)
    for lon, vy, rad, rgb in ((-ident["eyes"], -0.15, 0.1, eye), (ident["eyes"], -0.15, 0.1, eye),
                              (0.0, 0.2, 0.12, np.array([0.75, 0.35, 0.3], np.float32))):
        if math.cos(yr + lon) <= 0.05:
            continue
        mx = math.sin(yr + lon) * math.sqrt(max(0.0, 1 - vy * vy))
        img[(((u - mx) ** 2 + (v - vy) ** 2) <= rad * rad) & inside] = rgb
    if styled:
        img = np.round(img * 4) / 4  # posterised: a texture-level style cue
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _identity(rng: np.random.Generator) -> dict:
    return {
        "width": float(rng.uniform(0.28, 0.38)),
        "eyes": float(rng.uniform(0.3, 0.55)),
        "skin": rng.uniform([0.7, 0.5, 0.4], [0.95, 0.8, 0.7]).astype(np.float32),
        "hair": rng.uniform([0.1, 0.05, 0.0], [0.5, 0.35, 0.2]).astype(np.float32),
        "background": rng.uniform(0.75, 0.95, 3).astype(np.float32),
    }


TINY_LIMITS = {"samples": (1, 1000), "views": (1, 1024), "size": (MIN_SIDE, 1024), "seed": (0, 2**32 - 1)}


def make_tiny_dataset(folder, *, samples: int = 2, views: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny valid dataset (cartoon heads; a "zombie" style domain) and return its folder.

    Each sample: a content identity, a style exemplar of another identity in the
    style domain, ``views`` stylized target views on an even turntable
    (``yaw = 360·k/views``), the unstyled content views at the same yaws, and the
    condition images (one other head, unstyled, at the same yaws, as DiffPortrait360's
    cross-identity condition renders, facts §3).

    ``folder`` must be new or empty (nothing in it is replaced); the set is written into a
    hidden sibling folder and renamed into place when complete, so an interrupted call
    leaves no half dataset behind.
    """
    for name, value in (("samples", samples), ("views", views), ("size", size), ("seed", seed)):
        low, high = TINY_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    root = Path(os.fspath(folder)).expanduser()
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a new or empty folder for the tiny dataset")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root} is not empty; give a new or empty folder for the tiny dataset (nothing was changed)")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    try:
        _write_tiny_dataset(partial, samples, views, size, seed)
        if root.is_dir():
            root.rmdir()  # empty (checked above); a folder cannot be renamed onto a folder
        os.replace(partial, root)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return root


def _write_tiny_dataset(root: Path, samples: int, views: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    condition_head = _identity(rng)  # the condition renders show one other head for every sample (facts §3)
    yaws = [360.0 * k / views for k in range(views)]
    for s in range(samples):
        d = root / f"sample_{s:03d}"
        for sub in ("content/views", "style", "target", "cam"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        content, other = _identity(rng), _identity(rng)
        save = lambda arr, path: Image.fromarray(arr, mode="RGB").save(path)  # noqa: E731
        save(_render_head(size, 0.0, content, False), d / "content" / "front.png")
        save(_render_head(size, 180.0, content, False), d / "content" / "back.png")
        save(_render_head(size, 0.0, other, True), d / "style" / "front.png")
        save(_render_head(size, 180.0, other, True), d / "style" / "back.png")
        for k, yaw in enumerate(yaws):
            stem = f"{k:03d}.png"
            save(_render_head(size, yaw, content, True), d / "target" / stem)
            save(_render_head(size, yaw, content, False), d / "content" / "views" / stem)
            save(_render_head(size, yaw, condition_head, False), d / "cam" / stem)
