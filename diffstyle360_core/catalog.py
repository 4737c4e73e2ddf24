"""Find weight sets on disk: what a model picker (CLI or the ComfyUI loader) offers.

A *weight set* is a folder laid out as README "Weights" describes: ``main/`` and/or
``back_view/`` (converted models, each with ``config.json``), a camera-condition set
(where :func:`~.cameras.find_condition_folder` finds one: ``cam_condition/sphere32``,
…), optional style modules (``*.safetensors`` next to them). ``make-tiny OUTDIR`` writes one; so does converting the official files.
ComfyUI users drop such folders under ``models/diffstyle360/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from .cameras import has_condition_folder
from .config import BACK_VIEW, CONFIG_NAME, MAIN, WEIGHTS_SUFFIX, BackboneConfig, ConfigValueError

PathLike = Union[str, os.PathLike]


@dataclass
class WeightSet:
    name: str
    path: Path
    kinds: List[str]
    style_modules: List[str] = field(default_factory=list)
    has_cameras: bool = False

    @property
    def complete(self) -> bool:
        """Both models and a condition set: everything `stylize` needs."""
        return set(self.kinds) == {MAIN, BACK_VIEW} and self.has_cameras


def describe(folder: PathLike, name: Optional[str] = None) -> Optional[WeightSet]:
    """The weight set in ``folder``, or None when it holds no converted model."""
    root = Path(folder)
    kinds = [k for k in (MAIN, BACK_VIEW) if _is_model(root / k, k)]
    if not kinds:
        return None
    styles = sorted(p.name for p in root.glob("*" + WEIGHTS_SUFFIX))
    styles += sorted(f"{MAIN}/{p.name}" for p in (root / MAIN).glob("style_appearance*" + WEIGHTS_SUFFIX))
    return WeightSet(name or root.name, root, kinds, styles, has_condition_folder(root))



def _is_model(folder: Path, kind: str) -> bool:
    """A converted model of ``kind``: its config.json parses as ours (a diffusers folder does not)."""
    if not (folder / CONFIG_NAME).is_file():
        return False
    try:
        return BackboneConfig.load(folder).kind == kind
    except ConfigValueError:  # ours, with a wrong field: listed, so that loading it names the field
        return True
    except (ValueError, OSError):
        return False


def list_weight_sets(roots: Iterable[PathLike]) -> Dict[str, WeightSet]:
    """Weight sets found directly in, or one level below, each root (first root wins a name clash)."""
    found: Dict[str, WeightSet] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            ws = describe(folder)
            if ws is not None and ws.name not in found:
                found[ws.name] = ws
    return found
