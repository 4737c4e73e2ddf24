"""Write the small extra images the example workflows load (run once; the PNGs are checked in).

    python tests/tools/make_workflow_images.py

* ``style_ink.png``: a second style (ink drawing with a sepia wash) made from astronaut.png.
* ``mask_hair.png`` / ``mask_lower_face.png``: two non-overlapping region masks (white = stylize)
  drawn on the 256x256 style images, for the local-stylization workflow (hair in one style,
  lower face in the other).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

IMAGES = Path(__file__).resolve().parents[2] / "workflows" / "images"


def ink_style(src: Path, dst: Path) -> None:
    gray = ImageOps.grayscale(Image.open(src).convert("RGB"))
    edges = gray.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
    e = np.asarray(edges, np.float32) / 255.0
    g = np.asarray(gray.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255.0
    wash = np.round(g * 3) / 3  # three tone levels
    ink = np.clip(wash * 0.55 + 0.45 - 1.6 * e, 0, 1)
    sepia = np.stack([ink * 0.98 + 0.02, ink * 0.88 + 0.04, ink * 0.70 + 0.06], -1)
    Image.fromarray((sepia * 255).round().astype(np.uint8), "RGB").save(dst, optimize=True)


def masks(size: int = 256) -> None:
    hair = Image.new("L", (size, size), 0)
    ImageDraw.Draw(hair).ellipse((30, -10, 226, 110), fill=255)  # top of the head
    lower = Image.new("L", (size, size), 0)
    ImageDraw.Draw(lower).ellipse((60, 120, 196, 200), fill=255)  # mouth and chin
    a, b = np.asarray(hair) > 0, np.asarray(lower) > 0
    assert not (a & b).any(), "the two masks must not overlap"
    hair.save(IMAGES / "mask_hair.png", optimize=True)
    lower.save(IMAGES / "mask_lower_face.png", optimize=True)


if __name__ == "__main__":
    ink_style(IMAGES / "astronaut.png", IMAGES / "style_ink.png")
    masks()
    for p in sorted(IMAGES.iterdir()):
        print(p.name, p.stat().st_size)
