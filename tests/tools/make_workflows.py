"""Write the example workflows in workflows/ (UI format 0.4), one per capability of the paper.

    python tests/tools/make_workflows.py

ComfyUI 0.8's template browser (frontend 1.35) shows a custom-node template by its
file name only (title = the name, description = the name with - and _ as spaces), so
the names are the titles. Widget values are written by input name and laid out in the
order the node definitions give (tests/test_workflows.py checks the files against
those definitions independently). Shipped values are the real defaults (the official
weight set, 50 steps, 32 views); the real-host run overrides them for the tiny weights.
Each graph opens with a Markdown note that explains it; nodes are stacked in columns
so no two overlap (tests/test_workflows.py checks the rectangles).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import (FRONTEND_WIDGETS, ROOT, TITLE_HEIGHT, node_definitions,  # noqa: E402
                            socket_inputs, widget_slots, widget_types)

from nodes.examples import input_name  # noqa: E402

WEIGHT_SET = "diffportrait360"
#: Where README's training recipe puts a trained module: the set folder, as the loader lists it.
TRAINED_MODULE = f"{WEIGHT_SET}/style_module.safetensors"
DEFS = node_definitions()
GAP = 40  # vertical space between stacked nodes
MUTED = 2  # LiteGraph mode "never": the frontend leaves the node out of the prompt
NOTE_COLOR, NOTE_BG = "#432", "#653"
FPS = 8.0  # 32 views = a 4-second turn


class Node:
    def __init__(self, nid: int, kind: str, pos, widgets: Dict[str, Any], title: Optional[str], size, mode: int):
        self.id, self.type, self.pos, self.title, self.size, self.mode = nid, kind, pos, title, size, mode
        d = DEFS[kind]
        self.sockets = socket_inputs(d)
        self.slots = widget_slots(d)
        self.widget_inputs: List[dict] = []  # widgets driven by a link (shared primitives)
        self.input_links: Dict[str, int] = {}
        self.output_links: Dict[int, List[int]] = {i: [] for i in range(len(d["output"]))}
        names = {n for n, *_ in self.slots}
        unknown = set(widgets) - names - {n + ":control" for n in names}
        if unknown:
            raise KeyError(f"{kind}: unknown widgets {unknown}")
        values = []
        for name, _, opts, role in self.slots:
            if role == "control":
                values.append(widgets.get(name + ":control", "fixed"))
            elif role == "upload":
                values.append("image")
            elif name in widgets:
                values.append(widgets[name])
            elif "default" in opts:
                values.append(opts["default"])
            else:
                raise KeyError(f"{kind}.{name} needs a value")
        self.widgets_values = values or list(FRONTEND_WIDGETS.get(kind, []))

    def out(self, index: int = 0):
        return (self, index)

    def input_slot(self, name: str) -> int:
        """The slot index of a linkable input; a widget gets an input slot after the sockets when first linked."""
        names = [n for n, *_ in self.sockets]
        if name in names:
            return names.index(name)
        kind = widget_types(DEFS[self.type]).get(name)
        if kind is None:
            raise KeyError(f"{self.type} has no input {name}")
        if name not in [w["name"] for w in self.widget_inputs]:
            self.widget_inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": None})
        return len(names) + [w["name"] for w in self.widget_inputs].index(name)

    def to_json(self, order: int) -> dict:
        d = DEFS[self.type]
        inputs = [{"name": n, "type": t, "link": self.input_links.get(n)} for n, t, _ in self.sockets]
        inputs += [{**w, "link": self.input_links.get(w["name"])} for w in self.widget_inputs]
        node = {
            "id": self.id,
            "type": self.type,
            "pos": list(self.pos),
            "size": list(self.size),
            "flags": {},
            "order": order,
            "mode": self.mode,
            "inputs": inputs,
            "outputs": [
                {"name": name, "type": t, "links": self.output_links[i], "slot_index": i}
                for i, (name, t) in enumerate(zip(d["output_name"], d["output"]))
            ],
            "properties": {"Node name for S&R": self.type},
        }
        if self.widgets_values:  # the frontend writes no widgets_values for nodes without widgets
            node["widgets_values"] = self.widgets_values
        if self.title:
            node["title"] = self.title
        return node


class Note:
    """A frontend-only Markdown note (not sent to the server)."""

    type = "MarkdownNote"

    def __init__(self, nid: int, text: str, pos, size, mode: int = 0):
        self.id, self.text, self.pos, self.size, self.mode = nid, text.strip(), pos, size, mode

    def to_json(self, order: int) -> dict:
        return {"id": self.id, "type": self.type, "pos": list(self.pos), "size": list(self.size), "flags": {},
                "order": order, "mode": self.mode, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [self.text], "color": NOTE_COLOR, "bgcolor": NOTE_BG}


def default_size(kind: str):
    """A node's size, at least what the frontend draws for its slots and widgets (body only, no title bar)."""
    d = DEFS[kind]
    rows = max(len(socket_inputs(d)), len(d["output"]))
    widgets = len([s for s in widget_slots(d) if s[3] != "upload"])
    width = 400 if kind.startswith("DiffStyle360") else 300  # room for the display names
    if kind in ("LoadImage", "LoadImageMask"):
        return (300, 340)
    if kind in ("PreviewImage", "SaveImage", "SaveVideo"):
        return (320, 300)
    if kind == "PreviewAny":
        return (300, 120)
    return (width, 26 + 22 * rows + 28 * widgets)


class Column:
    """Nodes stacked top to bottom at one x, GAP apart (positions are the body's top-left, below the title)."""

    def __init__(self, graph: "Graph", x: int, y: int = 40):
        self.graph, self.x, self.y = graph, x, y

    def add(self, kind: str, title: Optional[str] = None, size=None, mode: int = 0, **widgets) -> Node:
        size = size or default_size(kind)
        node = self.graph.add(kind, (self.x, self.y + TITLE_HEIGHT), title=title, size=size, mode=mode, **widgets)
        self.y += TITLE_HEIGHT + size[1] + GAP
        return node

    def note(self, text: str, height: int, width: int = 400, mode: int = 0) -> Note:
        note = self.graph.note(text, (self.x, self.y + TITLE_HEIGHT), (width, height), mode)
        self.y += TITLE_HEIGHT + height + GAP
        return note


class Graph:
    def __init__(self):
        self.nodes: List[Any] = []
        self.links: List[list] = []
        self.groups: List[dict] = []

    def column(self, x: int, y: int = 40) -> Column:
        return Column(self, x, y)

    def add(self, kind: str, pos, size, title=None, mode: int = 0, **widgets) -> Node:
        node = Node(len(self.nodes) + 1, kind, pos, widgets, title, size, mode)
        self.nodes.append(node)
        return node

    def note(self, text: str, pos, size, mode: int = 0) -> Note:
        note = Note(len(self.nodes) + 1, text, pos, size, mode)
        self.nodes.append(note)
        return note

    def connect(self, source, target: Node, input_name: str) -> None:
        src, slot = source if isinstance(source, tuple) else (source, 0)
        dst_slot = target.input_slot(input_name)
        link_id = len(self.links) + 1
        out_type = DEFS[src.type]["output"][slot]
        self.links.append([link_id, src.id, slot, target.id, dst_slot, out_type])
        src.output_links[slot].append(link_id)
        target.input_links[input_name] = link_id

    def group(self, title: str, members: List[Any], color="#3f789e", pad: int = 20) -> None:
        """A group framing ``members`` (their title bars included, plus room for the group's own title)."""
        left = min(m.pos[0] for m in members) - pad
        top = min(m.pos[1] - TITLE_HEIGHT for m in members) - pad - 40
        right = max(m.pos[0] + m.size[0] for m in members) + pad
        bottom = max(m.pos[1] + m.size[1] for m in members) + pad
        self.groups.append({"title": title, "bounding": [left, top, right - left, bottom - top], "color": color,
                            "font_size": 24, "flags": {}})

    def to_json(self) -> dict:
        # execution order: a node after all its sources (the frontend recomputes it anyway)
        order, done = [], set()
        while len(order) < len(self.nodes):
            for n in self.nodes:
                if n.id in done:
                    continue
                sources = {link[1] for link in self.links if link[3] == n.id}
                if sources <= done:
                    order.append(n)
                    done.add(n.id)
        rank = {n.id: i for i, n in enumerate(order)}
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": [n.to_json(rank[n.id]) for n in self.nodes],
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}},
            "version": 0.4,
        }


# --------------------------------------------------------------------------------------------- shared text
WEIGHTS_HELP = (
    "**Weights** — `diffportrait360` is the official set: the first run downloads it (about 19 GB) into "
    "`models/diffstyle360/diffportrait360/` with a progress bar. To try the graph in a minute first: "
    "`python -m diffstyle360_core make-tiny ComfyUI/models/diffstyle360/tiny`, press **R**, pick `tiny` in every "
    "loader (random weights: the pictures are noise, the graph is real)."
)
IMAGES_HELP = (
    "**Images** — the example portrait, styles and masks are copied into `ComfyUI/input/` when ComfyUI starts "
    "(`diffstyle360_*.png`); load your own with *choose file to upload*."
)
SPEED_HELP = (
    "**Time** — 32 views x 50 steps take minutes on a GPU; for a quick look set Turntable Camera *views* to 8 "
    "and *steps* to 20."
)


def intro(title: str, what: str, *extra: str) -> str:
    return "\n\n".join([f"## {title}", what, WEIGHTS_HELP, IMAGES_HELP, *extra, SPEED_HELP])


# --------------------------------------------------------------------------------------------- building blocks
def loader(col: Column, style_module: Optional[str] = None, title=None, mode: int = 0) -> Node:
    widgets = {"weight_set": WEIGHT_SET}
    if style_module:
        widgets["style_module"] = style_module
    return col.add("DiffStyle360LoadAppearanceModules", title=title, mode=mode, **widgets)


def image(col: Column, name: str, title=None) -> Node:
    return col.add("LoadImage", title=title, image=input_name(name))


def mask(col: Column, name: str, title=None) -> Node:
    return col.add("LoadImageMask", title=title, image=input_name(name), channel="red")


def cameras(col: Column, model: Node, views=32, show_yaws: bool = True) -> Node:
    cam = col.add("DiffStyle360TurntableCamera", views=views, yaw_start=0.0, yaw_end=360.0)
    col.graph.connect(model, cam, "model")
    if show_yaws:
        yaws = col.add("PreviewAny", title="Yaws used (degrees, 0 = front)")
        col.graph.connect(cam.out(2), yaws, "source")
    return cam


def sampler(col: Column, model: Node, content: Node, cams: Node, style=None, title=None, mode: int = 0,
            **widgets) -> Node:
    s = col.add("DiffStyle360StyleFusionSampler", title=title, mode=mode, **widgets)
    g = col.graph
    g.connect(model, s, "model")
    g.connect(content, s, "content")
    g.connect(cams.out(0), s, "cameras")
    if style is not None:
        g.connect(style, s, "style")
    return s


def save_video(col: Column, views, prefix: str, title=None, mode: int = 0) -> Node:
    """ComfyUI's own Create Video + Save Video: the turntable as an mp4 in output/."""
    video = col.add("CreateVideo", title=title and f"{title}: video", mode=mode, fps=FPS)
    col.graph.connect(views, video, "images")
    save = col.add("SaveVideo", title=title, mode=mode, filename_prefix=prefix, format="auto", codec="auto")
    col.graph.connect(video, save, "video")
    return save


def preview(col: Column, images, title=None, mode: int = 0) -> Node:
    p = col.add("PreviewImage", title=title, mode=mode)
    col.graph.connect(images, p, "images")
    return p


def shared_settings(col: Column, samplers: List[Node]) -> None:
    """One seed and one steps value for every sampler of a comparison (Int primitives linked to the widgets)."""
    seed = col.add("PrimitiveInt", title="Seed (shared)", value=42)
    steps = col.add("PrimitiveInt", title="Steps (shared)", value=50)
    for s in samplers:
        col.graph.connect(seed, s, "seed")
        col.graph.connect(steps, s, "steps")


def side_by_side(col: Column, samplers: List[Node]) -> Node:
    """Three samplers' turntables stitched left to right (ImageStitch twice), for sweeps."""
    first = col.add("ImageStitch", title="Stitch 1 | 2", direction="right", match_image_size=True,
                    spacing_width=8, spacing_color="white")
    col.graph.connect(samplers[0].out(0), first, "image1")
    col.graph.connect(samplers[1].out(0), first, "image2")
    second = col.add("ImageStitch", title="Stitch 1 | 2 | 3", direction="right", match_image_size=True,
                     spacing_width=8, spacing_color="white")
    col.graph.connect(first, second, "image1")
    col.graph.connect(samplers[2].out(0), second, "image2")
    return second


# --------------------------------------------------------------------------------------------- the workflows
def one_style() -> dict:
    g = Graph()
    left, mid, right, out = g.column(40), g.column(500), g.column(920), g.column(1340)
    left.note(intro("Turntable in one style",
                    "A 360-degree turntable of the **content portrait** in the look of the **style image** "
                    "(DiffStyle360, paper Fig. 1): back views of both are generated first, then 32 views are "
                    "denoised with Style Fusion Attention. Press **Queue**; the video lands in "
                    "`output/DiffStyle360/`."), 430)
    m = loader(left)
    content = image(mid, "astronaut.png", "Content portrait")
    style = image(mid, "style_posterized.png", "Style image")
    cam = cameras(right, m)
    s = sampler(right, m, content, cam, style=style)
    save_video(out, s.out(0), "DiffStyle360/turntable", "360-degree turntable")
    preview(out, s.out(1), "Back views (content, style)")
    preview(out, cam.out(1), "Pose conditions")
    return g.to_json()


def training_free_vs_trained() -> dict:
    g = Graph()
    left, mid, right, out = g.column(40), g.column(500), g.column(920), g.column(1340)
    left.note(intro("Training-free vs trained style module",
                    "The paper's first ablation, same seed: **training-free** (the content appearance module "
                    "also reads the style) against a **trained DiffStyle360 style module**. The trained branch "
                    "(the grey group) is muted until you have a module: as shipped only the training-free "
                    "turntable renders."), 430)
    free = loader(left, title="Training-free (no style module)")
    content = image(mid, "astronaut.png", "Content portrait")
    style = image(mid, "style_posterized.png", "Style image")
    cam = cameras(right, free)
    a = sampler(right, free, content, cam, style=style, title="Training-free")
    save_video(out, a.out(0), "DiffStyle360/training_free", "Training-free")
    # the trained branch, muted: a module has to be trained (or copied) first
    low = max(c.y for c in (left, mid, right, out)) + 80
    how = g.column(40, low)
    note = how.note(
        "## The trained branch (muted)\n\n"
        "It needs a trained DiffStyle360 style module, which the official weights do not include:\n\n"
        "1. Train one (README, *Train your own style module*): `python -m diffstyle360_core train ... --out RUN`.\n"
        f"2. Copy `RUN/style_module.safetensors` to `models/diffstyle360/{WEIGHT_SET}/` and press **R**: the "
        f"loader lists it as `{TRAINED_MODULE}` (with the tiny set: `tiny/style_module-tiny.safetensors`).\n"
        "3. Pick it in *With a trained style module*, select this group's nodes and press **Ctrl+M** to un-mute.\n\n"
        "Un-muted without a module, the loader fails validation (its module is not in the list): the comparison "
        "never silently shows only one half.", 330, width=420)
    tcol, scol, ocol = g.column(500, low), g.column(920, low), g.column(1340, low)
    trained = loader(tcol, style_module=TRAINED_MODULE, title="With a trained style module", mode=MUTED)
    b = sampler(scol, trained, content, cam, style=style, title="Trained style module", mode=MUTED)
    save_video(ocol, b.out(0), "DiffStyle360/trained", "Trained style module", mode=MUTED)
    g.group("Trained style module (muted until you have one: see the note)",
            [note] + [n for n in g.nodes if n.mode == MUTED], color="#444")
    return g.to_json()


def tau_sweep() -> dict:
    g = Graph()
    left, mid, ks_col, s_col, out = g.column(40), g.column(500), g.column(920), g.column(1340), g.column(1760)
    left.note(intro("Style strength sweep: tau 1.00 / 1.05 / 1.10",
                    "Key scale tau (paper §3.5) pulls attention toward the style: 1.00 keeps more identity, 1.10 "
                    "gives more style. Three samplers share one **seed** and one **steps** value (the two *Int* "
                    "nodes), so only tau differs; the turntables are stitched side by side into one video."), 430)
    m = loader(left)
    content = image(mid, "astronaut.png", "Content portrait")
    style = image(mid, "style_posterized.png", "Style image")
    cam = cameras(ks_col, m)
    outs = []
    for tau in (1.00, 1.05, 1.10):
        ks = ks_col.add("DiffStyle360KeyScale", title=f"tau = {tau:.2f}", tau=tau)
        s = sampler(s_col, m, content, cam, style=style, title=f"Sampler, tau = {tau:.2f}")
        g.connect(ks, s, "fusion")
        outs.append(s)
    shared_settings(left, outs)
    stitched = side_by_side(out, outs)
    save_video(out, stitched.out(0), "DiffStyle360/tau_sweep", "tau 1.00 | 1.05 | 1.10")
    return g.to_json()


def local_two_styles() -> dict:
    g = Graph()
    left, a_col, b_col, sm_col, out = g.column(40), g.column(500), g.column(860), g.column(1220), g.column(1640)
    left.note(intro("Two styles on two regions",
                    "Local stylization (paper §4): style A on the **hair**, style B on **mouth and chin**. Each mask "
                    "is painted on its own style image (white = use this style there) and the masks must not "
                    "overlap; Style Mask B chains Style Mask A through *previous*. Paint your own masks with Load "
                    "Image's mask editor or ComfyUI's mask nodes."), 430)
    m = loader(left)
    content = image(left, "astronaut.png", "Content portrait")
    style_a = image(a_col, "style_posterized.png", "Style A (hair)")
    mask_a = mask(a_col, "mask_hair.png", "Mask A: hair (white = style A)")
    style_b = image(b_col, "style_ink.png", "Style B (mouth and chin)")
    mask_b = mask(b_col, "mask_lower_face.png", "Mask B: lower face")
    sm_a = sm_col.add("DiffStyle360StyleMask", title="Style Mask A")
    g.connect(style_a.out(0), sm_a, "style")
    g.connect(mask_a, sm_a, "mask")
    sm_b = sm_col.add("DiffStyle360StyleMask", title="Style Mask B (after A)")
    g.connect(style_b.out(0), sm_b, "style")
    g.connect(mask_b, sm_b, "mask")
    g.connect(sm_a, sm_b, "previous")
    cam = cameras(sm_col, m)
    s = sampler(out, m, content, cam, style=sm_b.out(0))
    save_video(out, s.out(0), "DiffStyle360/local_two_styles", "Two styles, two regions")
    preview(out, s.out(1), "Back views")
    return g.to_json()


def interpolation() -> dict:
    g = Graph()
    left, mid, bl_col, s_col, out = g.column(40), g.column(500), g.column(920), g.column(1340), g.column(1760)
    left.note(intro("Style interpolation",
                    "Style Blend (paper §4) mixes the keys and values of two styles: alpha 0 = style 1, 1 = style "
                    "2, 0.5 = halfway. Three samplers share one **seed** and one **steps** value (the two *Int* "
                    "nodes), so only alpha differs; the turntables are stitched side by side into one video."), 430)
    m = loader(left)
    content = image(mid, "astronaut.png", "Content portrait")
    s1 = image(mid, "style_posterized.png", "Style 1")
    s2 = image(mid, "style_ink.png", "Style 2")
    cam = cameras(bl_col, m)
    outs = []
    for alpha in (0.0, 0.5, 1.0):
        bl = bl_col.add("DiffStyle360StyleBlend", title=f"alpha = {alpha:g}", alpha=alpha)
        g.connect(s1.out(0), bl, "style_1")
        g.connect(s2.out(0), bl, "style_2")
        outs.append(sampler(s_col, m, content, cam, style=bl.out(0), title=f"Sampler, alpha = {alpha:g}"))
    shared_settings(left, outs)
    stitched = side_by_side(out, outs)
    save_video(out, stitched.out(0), "DiffStyle360/interpolation", "alpha 0 | 0.5 | 1")
    return g.to_json()


def back_view() -> dict:
    g = Graph()
    left, mid, right, out = g.column(40), g.column(500), g.column(920), g.column(1340)
    left.note(intro("Back of the head from a portrait",
                    "DiffPortrait360's back-view model imagines the back of the head from one front portrait. "
                    "Its seed is *fixed*, so re-queuing reuses the result; feed it to a sampler's *content_back* "
                    "or paint a *back_mask* on it for Style Mask."), 400)
    m = loader(left)
    content = image(mid, "astronaut.png", "Front portrait")
    bv = right.add("DiffStyle360BackViewGenerate")
    g.connect(m, bv, "model")
    g.connect(content.out(0), bv, "image")
    save = out.add("SaveImage", filename_prefix="DiffStyle360/back_view")
    g.connect(bv, save, "images")
    return g.to_json()


def novel_views() -> dict:
    g = Graph()
    left, mid, right, out = g.column(40), g.column(500), g.column(920), g.column(1340)
    left.note(intro("Novel views without a style",
                    "With nothing on the sampler's *style* input DiffStyle360 is plain DiffPortrait360: a 360-degree "
                    "turntable of the portrait as it is."), 400)
    m = loader(left)
    content = image(mid, "astronaut.png", "Content portrait")
    cam = cameras(right, m)
    s = sampler(right, m, content, cam, title="Style Transfer sampler (no style: novel views)")
    save_video(out, s.out(0), "DiffStyle360/novel_views", "Novel views")
    return g.to_json()


def circular_loop() -> dict:
    g = Graph()
    left, mid, right, out = g.column(40), g.column(500), g.column(920), g.column(1340)
    left.note(intro("Seamless 360 loop",
                    "Circular view windows: the 32 views are denoised in overlapping windows of 8 that wrap around "
                    "(*window_mode* circular, *overlap* 4), so the last view is denoised together with the first "
                    "and the looping video has no seam."), 430)
    m = loader(left)
    content = image(mid, "astronaut.png", "Content portrait")
    style = image(mid, "style_posterized.png", "Style image")
    cam = cameras(right, m)
    s = sampler(right, m, content, cam, style=style, title="Circular windows", window_mode="circular", overlap=4)
    save_video(out, s.out(0), "DiffStyle360/loop", "Seamless 360-degree loop")
    return g.to_json()


#: File name (= the template browser's title) → builder, in teaching order.
WORKFLOWS = {
    "01 Turntable in one style": one_style,
    "02 Training-free vs trained style module": training_free_vs_trained,
    "03 Style strength sweep (tau)": tau_sweep,
    "04 Two styles on two regions (masks)": local_two_styles,
    "05 Style interpolation between two styles": interpolation,
    "06 Back of the head from a portrait": back_view,
    "07 Novel views without a style": novel_views,
    "08 Seamless 360 loop (circular windows)": circular_loop,
}


def main() -> None:
    out = ROOT / "workflows"
    for name, build in WORKFLOWS.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print(path.relative_to(ROOT), path.stat().st_size)


if __name__ == "__main__":
    main()
