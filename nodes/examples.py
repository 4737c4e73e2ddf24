"""The example workflows' input images, copied into ComfyUI's input folder so the templates run as shipped.

Load Image only offers files directly in ``ComfyUI/input/``, so a template that names
an image the user never copied fails validation. At start-up each image of
``workflows/images/`` is copied there once, under a ``diffstyle360_`` name so it
never replaces or shadows a user's own file; existing files are left alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import List, Optional

_log = logging.getLogger(__name__)

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "workflows" / "images"
PREFIX = "diffstyle360_"


def input_name(image: str) -> str:
    """The name an example image has in ComfyUI's input folder (what the workflows load)."""
    return PREFIX + image


def install_example_images(input_dir: Optional[str], source: Path = EXAMPLE_IMAGES) -> List[Path]:
    """Copy the example images missing from ``input_dir``; returns the files written (none without a host)."""
    if input_dir is None or not source.is_dir():
        return []
    written = []
    try:
        target = Path(input_dir)
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(source.iterdir()):
            dest = target / input_name(image.name)
            if image.is_file() and not dest.exists():
                shutil.copyfile(image, dest)
                written.append(dest)
    except OSError as err:  # a read-only input folder must not stop the pack from loading
        _log.warning("DiffStyle360: could not copy the example images into %s (%s); copy workflows/images/* "
                     "there with the prefix %r to run the example workflows", input_dir, err, PREFIX)
    return written
