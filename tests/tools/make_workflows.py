"""Write the example workflows in workflows/ (UI format 0.4), one per capability of the paper.

    python tests/tools/make_workflows.py

Widget values are written by input name and laid out in the order the node
definitions give (tests/test_workflows.py then checks the files against those
definitions independently). Shipped values are the real defaults (50 steps, 32
views); the real-host run overrides them for the tiny weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import ROOT, node_definitions, socket_inputs, widget_slots  # noqa: E402

WEIGHT_SET = "diffportrait360"
STYLE_MODULE = "diffportrait360/style_module.safetensors"
DEFS = node_definitions()


class Node:
    def __init__(self, graph: "Graph", nid: int, kind: str, pos, widgets: Dict[str, Any], title: Optional[str],
                 size):
        self.graph, self.id, self.type, self.pos, self.title, self.size = graph, nid, kind, pos, title, size
        d = DEFS[kind]
        self.sockets = socket_inputs(d)
        self.input_links: Dict[str, int] = {}
        self.output_links: Dict[int, List[int]] = {i: [] for i in range(len(d["output"]))}
        values = []
        for name, kind_, opts, role in widget_slots(d):
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
        unknown = set(widgets) - {n for n, *_ in widget_slots(d)} - {n + ":control" for n, *_ in widget_slots(d)}
        if unknown:
            raise KeyError(f"{kind}: unknown widgets {unknown}")
        self.widgets_values = values

    def out(self, index: int = 0):
        return (self, index)

    def to_json(self, order: int) -> dict:
        d = DEFS[self.type]
        node = {
            "id": self.id,
            "type": self.type,
            "pos": list(self.pos),
            "size": list(self.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": n, "type": t, "link": self.input_links.get(n)}
                for n, t, req in self.sockets
            ],
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


class Graph:
    def __init__(self):
        self.nodes: List[Node] = []
        self.links: List[list] = []
        self.groups: List[dict] = []

    def add(self, kind: str, pos, title: Optional[str] = None, size=None, **widgets) -> Node:
        if size is None:
            n_widgets = len(widget_slots(DEFS[kind]))
            n_sockets = max(len(socket_inputs(DEFS[kind])), len(DEFS[kind]["output"]))
            size = (320 if kind.startswith("DiffStyle360") else 260, 46 + 22 * (n_sockets + n_widgets))
            if kind in ("LoadImage", "LoadImageMask"):
                size = (260, 330)
            if kind in ("PreviewImage", "SaveImage", "SaveAnimatedWEBP"):
                size = (300, 320)
        node = Node(self, len(self.nodes) + 1, kind, pos, widgets, title, size)
        self.nodes.append(node)
        return node

    def connect(self, source, target: Node, input_name: str) -> None:
        src, slot = source if isinstance(source, tuple) else (source, 0)
        names = [n for n, *_ in target.sockets]
        if input_name not in names:
            raise KeyError(f"{target.type} has no input {input_name}")
        link_id = len(self.links) + 1
        out_type = DEFS[src.type]["output"][slot]
        self.links.append([link_id, src.id, slot, target.id, names.index(input_name), out_type])
        src.output_links[slot].append(link_id)
        target.input_links[input_name] = link_id

    def group(self, title: str, bounding, color="#3f789e") -> None:
        self.groups.append({"title": title, "bounding": list(bounding), "color": color, "font_size": 24,
                            "flags": {}})

    def to_json(self, note: str) -> dict:
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
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}, "diffstyle360": note},
            "version": 0.4,
        }


# --------------------------------------------------------------------------------------------- building blocks
def loader(g: Graph, pos=(0, 0), style_module: Optional[str] = None, title=None) -> Node:
    widgets = {"weight_set": WEIGHT_SET}
    if style_module:
        widgets["style_module"] = style_module
    return g.add("DiffStyle360LoadAppearanceModules", pos, title=title, **widgets)


def image(g: Graph, name: str, pos, title=None) -> Node:
    return g.add("LoadImage", pos, title=title, image=name)


def cameras(g: Graph, model: Node, pos, views=32) -> Node:
    cam = g.add("DiffStyle360TurntableCamera", pos, views=views, yaw_start=0.0, yaw_end=360.0)
    g.connect(model, cam, "model")
    return cam


def sampler(g: Graph, model: Node, content: Node, cams: Node, pos, style=None, title=None, **widgets) -> Node:
    s = g.add("DiffStyle360StyleFusionSampler", pos, title=title, **widgets)
    g.connect(model, s, "model")
    g.connect(content, s, "content")
    g.connect(cams.out(0), s, "cameras")
    if style is not None:
        g.connect(style, s, "style")
    return s


def save_turntable(g: Graph, views, pos, prefix: str, title=None) -> Node:
    save = g.add("SaveAnimatedWEBP", pos, title=title, filename_prefix=prefix, fps=10.0, lossless=False,
                 quality=90, method="default")
    g.connect(views, save, "images")
    return save


def preview(g: Graph, images, pos, title=None) -> Node:
    p = g.add("PreviewImage", pos, title=title)
    g.connect(images, p, "images")
    return p


# --------------------------------------------------------------------------------------------- the workflows
def one_style() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    style = image(g, "style_posterized.png", (40, 610), "Style image")
    cam = cameras(g, m, (420, 40))
    s = sampler(g, m, content, cam, (420, 250), style=style)
    save_turntable(g, s.out(0), (800, 40), "DiffStyle360/turntable", "360-degree turntable")
    preview(g, s.out(1), (800, 400), "Back views (content, style)")
    preview(g, cam.out(1), (1130, 40), "Pose conditions")
    return g.to_json("360-degree stylization with one style image (paper Fig. 1). Copy workflows/images/* "
                     "into ComfyUI/input/.")


def training_free_vs_trained() -> dict:
    g = Graph()
    free = loader(g, (40, 40), title="Training-free (no style module)")
    trained = loader(g, (40, 200), style_module=STYLE_MODULE, title="With a trained style module")
    content = image(g, "astronaut.png", (40, 380), "Content portrait")
    style = image(g, "style_posterized.png", (40, 740), "Style image")
    cam = cameras(g, free, (420, 40))
    a = sampler(g, free, content, cam, (420, 250), style=style, title="Training-free")
    b = sampler(g, trained, content, cam, (420, 640), style=style, title="Trained style module")
    save_turntable(g, a.out(0), (800, 40), "DiffStyle360/training_free", "Training-free")
    save_turntable(g, b.out(0), (800, 400), "DiffStyle360/trained", "Trained style module")
    return g.to_json("Training-free (the content appearance module reads the style too) against a trained "
                     "DiffStyle360 style module, same seed (paper §4 ablation).")


def side_by_side(g, samplers, pos):
    """Three samplers' turntables stitched left to right (ImageStitch twice), for sweeps."""
    x, y = pos
    first = g.add("ImageStitch", (x, y), direction="right", match_image_size=True, spacing_width=8,
                  spacing_color="white")
    g.connect(samplers[0].out(0), first, "image1")
    g.connect(samplers[1].out(0), first, "image2")
    second = g.add("ImageStitch", (x, y + 200), direction="right", match_image_size=True, spacing_width=8,
                   spacing_color="white")
    g.connect(first, second, "image1")
    g.connect(samplers[2].out(0), second, "image2")
    return second


def tau_sweep() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    style = image(g, "style_posterized.png", (40, 610), "Style image")
    cam = cameras(g, m, (420, 40))
    outs = []
    for i, tau in enumerate((1.00, 1.05, 1.10)):
        ks = g.add("DiffStyle360KeyScale", (420, 250 + 330 * i), title=f"tau = {tau:.2f}", tau=tau)
        s = sampler(g, m, content, cam, (800, 40 + 480 * i), style=style, title=f"Sampler, tau = {tau:.2f}")
        g.connect(ks, s, "fusion")
        outs.append(s)
    st2 = side_by_side(g, outs, (1180, 40))
    save_turntable(g, st2.out(0), (1180, 440), "DiffStyle360/tau_sweep", "tau 1.00 | 1.05 | 1.10")
    return g.to_json("Key scale sweep (paper §3.5): tau 1.00, 1.05 and 1.10 side by side, same seed.")


def local_two_styles() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    style_a = image(g, "style_posterized.png", (420, 40), "Style A (hair)")
    mask_a = g.add("LoadImageMask", (420, 400), title="Mask A: hair (white = style A)", image="mask_hair.png",
                   channel="red")
    style_b = image(g, "style_ink.png", (720, 40), "Style B (mouth and chin)")
    mask_b = g.add("LoadImageMask", (720, 400), title="Mask B: lower face", image="mask_lower_face.png",
                   channel="red")
    sm_a = g.add("DiffStyle360StyleMask", (1020, 40), title="Style Mask A")
    g.connect(style_a.out(0), sm_a, "style")
    g.connect(mask_a, sm_a, "mask")
    sm_b = g.add("DiffStyle360StyleMask", (1020, 260), title="Style Mask B (after A)")
    g.connect(style_b.out(0), sm_b, "style")
    g.connect(mask_b, sm_b, "mask")
    g.connect(sm_a, sm_b, "previous")
    cam = cameras(g, m, (40, 610))
    s = sampler(g, m, content, cam, (1020, 480), style=sm_b.out(0))
    save_turntable(g, s.out(0), (1400, 40), "DiffStyle360/local_two_styles", "Two styles, two regions")
    preview(g, s.out(1), (1400, 400), "Back views")
    return g.to_json("Local stylization (paper §4): style A on the hair, style B on mouth and chin; each mask is "
                     "painted on its own style image and the masks do not overlap.")


def interpolation() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    s1 = image(g, "style_posterized.png", (40, 610), "Style 1")
    s2 = image(g, "style_ink.png", (40, 970), "Style 2")
    cam = cameras(g, m, (420, 40))
    outs = []
    for i, alpha in enumerate((0.0, 0.5, 1.0)):
        bl = g.add("DiffStyle360StyleBlend", (420, 250 + 250 * i), title=f"alpha = {alpha:g}", alpha=alpha)
        g.connect(s1.out(0), bl, "style_1")
        g.connect(s2.out(0), bl, "style_2")
        outs.append(sampler(g, m, content, cam, (800, 40 + 480 * i), style=bl.out(0),
                            title=f"Sampler, alpha = {alpha:g}"))
    st2 = side_by_side(g, outs, (1180, 40))
    save_turntable(g, st2.out(0), (1180, 440), "DiffStyle360/interpolation", "alpha 0 | 0.5 | 1")
    return g.to_json("Style interpolation (paper §4): alpha = 0 (style 1), 0.5, 1 (style 2) side by side.")


def back_view() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Front portrait")
    bv = g.add("DiffStyle360BackViewGenerate", (420, 40))
    g.connect(m, bv, "model")
    g.connect(content.out(0), bv, "image")
    save = g.add("SaveImage", (800, 40), filename_prefix="DiffStyle360/back_view")
    g.connect(bv, save, "images")
    return g.to_json("The back of the head from one front portrait (DiffPortrait360's back-view model).")


def novel_views() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    cam = cameras(g, m, (420, 40))
    s = sampler(g, m, content, cam, (420, 250), title="Style Fusion Sampler (no style)")
    save_turntable(g, s.out(0), (800, 40), "DiffStyle360/novel_views", "Novel views")
    return g.to_json("No style connected: plain DiffPortrait360 novel views of the portrait.")


def circular_loop() -> dict:
    g = Graph()
    m = loader(g, (40, 40))
    content = image(g, "astronaut.png", (40, 250), "Content portrait")
    style = image(g, "style_posterized.png", (40, 610), "Style image")
    cam = cameras(g, m, (420, 40))
    s = sampler(g, m, content, cam, (420, 250), style=style, title="Circular windows",
                window_mode="circular", overlap=4)
    save_turntable(g, s.out(0), (800, 40), "DiffStyle360/loop", "Seamless 360-degree loop")
    return g.to_json("Circular view windows: overlapping windows wrap around, so the last view is denoised with "
                     "the first and the looping turntable has no seam.")


WORKFLOWS = {
    "01_turntable_one_style": one_style,
    "02_training_free_vs_trained": training_free_vs_trained,
    "03_tau_sweep": tau_sweep,
    "04_local_two_styles": local_two_styles,
    "05_style_interpolation": interpolation,
    "06_back_view": back_view,
    "07_novel_views_no_style": novel_views,
    "08_circular_loop": circular_loop,
}


def main() -> None:
    out = ROOT / "workflows"
    for name, build in WORKFLOWS.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print(path.relative_to(ROOT), path.stat().st_size)


if __name__ == "__main__":
    main()
