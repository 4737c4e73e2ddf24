"""Write the template browser's thumbnail for each example workflow: workflows/<name>.jpg.

    python tests/tools/make_thumbnails.py

ComfyUI's template browser shows ``<workflow name>.jpg`` next to each custom-node
template. Each card is composed from what the workflow really uses: its input images
from workflows/images (masks drawn over their style images) and the camera poses of
the turntable it renders (the make-tiny set's synthetic condition renders, at the
official yaws), with the workflow's title. No model output is shown: the cards say
what goes in and what comes out, not a picture the pack did not make.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffstyle360_core.tiny import write_tiny_condition_set  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_workflows import WORKFLOWS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "workflows" / "images"
SIZE = (512, 384)
BACKGROUND = (30, 32, 40)
TEXT, MUTED_TEXT, ACCENT = (235, 235, 240), (160, 165, 180), (120, 180, 255)
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default(size)


def tile(name: str, size: int) -> Image.Image:
    return Image.open(IMAGES / name).convert("RGB").resize((size, size), Image.LANCZOS)


def masked(style: str, mask: str, size: int) -> Image.Image:
    """The style image with its mask drawn on it (the region that takes this style, tinted)."""
    base = tile(style, size)
    region = Image.open(IMAGES / mask).convert("L").resize((size, size), Image.LANCZOS)
    tint = Image.new("RGB", base.size, ACCENT)
    return Image.composite(Image.blend(base, tint, 0.45), base, region)


def poses(count: int, size: int, total: int = 32) -> List[Image.Image]:
    """``count`` evenly spaced camera renders of a ``total``-view turntable (front first)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_tiny_condition_set(tmp, size=size, n=total)
        step = total // count
        return [Image.open(files[i * step]).convert("RGB") for i in range(count)]


class Card:
    def __init__(self, title: str, subtitle: str):
        self.image = Image.new("RGB", SIZE, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.draw.text((20, 14), title, font=font(26, bold=True), fill=TEXT)
        self.draw.text((20, 50), subtitle, font=font(15), fill=MUTED_TEXT)
        # the pack's name: in "All Templates" the cards sit among ComfyUI's own
        self.draw.text((SIZE[0] - 14, 12), "DiffStyle360", font=font(12, bold=True), fill=ACCENT,
                       anchor="rt")

    def tiles(self, items: Sequence[Tuple[Image.Image, str]], x: int, y: int, gap: int = 12) -> int:
        for im, label in items:
            self.image.paste(im, (x, y))
            self.draw.text((x, y + im.height + 4), label, font=font(13), fill=MUTED_TEXT)
            x += im.width + gap
        return x

    def centred_tiles(self, items: Sequence[Tuple[Image.Image, str]], y: int, gap: int = 16) -> None:
        width = sum(im.width for im, _ in items) + gap * (len(items) - 1)
        self.tiles(items, (SIZE[0] - width) // 2, y, gap)

    def down_arrow(self, y: int, length: int = 22) -> None:
        x = SIZE[0] // 2
        self.draw.line([(x, y), (x, y + length)], fill=ACCENT, width=4)
        self.draw.polygon([(x - 9, y + length), (x + 9, y + length), (x, y + length + 12)], fill=ACCENT)

    def arrow(self, x: int, y: int, length: int = 36) -> int:
        self.draw.line([(x, y), (x + length, y)], fill=ACCENT, width=4)
        self.draw.polygon([(x + length, y - 9), (x + length + 14, y), (x + length, y + 9)], fill=ACCENT)
        return x + length + 24

    def strip(self, x: int, y: int, count: int, size: int, label: str) -> None:
        """``count`` camera poses spread across the card, with a caption."""
        step = (SIZE[0] - 2 * x - size) // (count - 1)
        for i, im in enumerate(poses(count, size)):
            self.image.paste(im, (x + i * step, y))
        self.draw.text((x, y + size + 4), label, font=font(13), fill=MUTED_TEXT)

    def save(self, path: Path) -> None:
        self.image.save(path, "JPEG", quality=88, optimize=True)


def inputs_then_turntable(title, subtitle, inputs, label="a 32-view turntable, 0 to 360 degrees") -> Card:
    card = Card(title, subtitle)
    size = inputs[0][0].height
    card.centred_tiles(inputs, 84)
    card.down_arrow(84 + size + 22)
    card.strip(16, 284, 8, 56, label)
    return card


def content_and_style(size: int = 130):
    return [(tile("astronaut.png", size), "content"), (tile("style_posterized.png", size), "style")]


def one_style():
    return inputs_then_turntable("Turntable in one style", "one portrait + one style image -> 360-degree video",
                                 content_and_style())


def trained():
    return inputs_then_turntable("Training-free vs trained", "the same seed with and without a style module",
                                 content_and_style(), "two turntables: training-free | trained module")


def sweep(title: str, subtitle: str, inputs, labels: Sequence[str], top: int, row_height: int, pose_size: int):
    """Inputs, then one row of turntable poses per swept value (the value written at the row's left)."""
    card = Card(title, subtitle)
    card.centred_tiles(inputs, 80)
    card.down_arrow(80 + 96 + 20, 10)
    turntable = poses(8, pose_size)
    for row, label in enumerate(labels):
        y = top + row * row_height
        card.draw.text((20, y + (pose_size - 20) // 2), label, font=font(14, bold=True), fill=TEXT)
        for i, im in enumerate(turntable):
            card.image.paste(im, (110 + i * (pose_size + 4), y))
    return card


def tau_sweep():
    return sweep("Style strength sweep", "key scale tau 1.00 | 1.05 | 1.10, one seed", content_and_style(96),
                 [f"tau {tau}" for tau in ("1.00", "1.05", "1.10")], top=230, row_height=50, pose_size=44)


def local_two_styles():
    return inputs_then_turntable("Two styles, two regions", "style A on the hair, style B on mouth and chin",
                                 [(tile("astronaut.png", 100), "content"),
                                  (masked("style_posterized.png", "mask_hair.png", 100), "A: hair"),
                                  (masked("style_ink.png", "mask_lower_face.png", 100), "B: lower face")])


def interpolation():
    return sweep("Style interpolation", "alpha 0 | 0.5 | 1 between two styles, one seed",
                 [(tile("astronaut.png", 96), "content"), (tile("style_posterized.png", 96), "style 1"),
                  (tile("style_ink.png", 96), "style 2")],
                 [f"alpha {alpha}" for alpha in ("0", "0.5", "1")], top=232, row_height=48, pose_size=40)


def back_view():
    card = Card("Back of the head", "one front portrait -> its back view")
    end = card.tiles([(tile("astronaut.png", 170), "front portrait")], 40, 110)
    x = card.arrow(end + 10, 195, 60)
    back = poses(2, 170)[1]  # yaw 180
    card.tiles([(back, "back view (yaw 180)")], x, 110)
    return card


def novel_views():
    return inputs_then_turntable("Novel views", "no style: the portrait seen all around",
                                 [(tile("astronaut.png", 130), "content")])


def circular_loop():
    card = inputs_then_turntable("Seamless 360 loop", "circular view windows: the last view meets the first",
                                 content_and_style(), "")
    card.draw.arc([44, 318, SIZE[0] - 44, 374], 0, 180, fill=ACCENT, width=3)  # last view back to the first
    card.draw.text((SIZE[0] // 2 - 60, 346), "the loop closes", font=font(13), fill=MUTED_TEXT)
    return card


#: One card per workflow, in the order (and with the file names = titles) of make_workflows.WORKFLOWS.
CARDS = dict(zip(WORKFLOWS, (one_style, trained, tau_sweep, local_two_styles, interpolation, back_view,
                             novel_views, circular_loop)))


def main() -> None:
    for name, build in CARDS.items():
        path = ROOT / "workflows" / f"{name}.jpg"
        build().save(path)
        print(path.relative_to(ROOT), path.stat().st_size)


if __name__ == "__main__":
    main()
