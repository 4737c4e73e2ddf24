"""Where one denoising step's FLOPs go, counted on meta tensors (no weights, no compute, any machine).

The bench's FLOP floor says how fast a step could be; this table says which
part of the model the floor is made of, at the real size, in a second on a
CPU: the appearance pass over the reference images, the per-step reference
slots (K/V projections, AdaIN), and per window batch the conditional pass
(pose ControlNet, UNet, view-consistency modules) and the unconditional pass
(UNet, view-consistency modules; no ControlNet, facts §1). The total equals
what ``bench`` counts by running a real step (tested at the tiny size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffstyle360_core.attention import FusionCall, StyleEntry
from diffstyle360_core.config import BackboneConfig
from diffstyle360_core.options import FusionSettings
from diffstyle360_core.sampling import batch_windows, view_windows

#: Module classes reported on their own inside a denoiser pass (the rest is the UNet).
PASS_PARTS = {"PoseControlNet": "pose ControlNet", "ViewConsistencyModule": "view-consistency modules"}


@dataclass
class FlopRow:
    part: str
    flops: float


def _pass_rows(counter: FlopCounterMode, label: str) -> List[FlopRow]:
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    rows, named = [], 0
    for cls, name in PASS_PARTS.items():
        flops = sum(counts.get(cls, {}).values())
        if flops:
            rows.append(FlopRow(f"{label}: {name}", flops))
            named += flops
    rows.insert(0, FlopRow(f"{label}: UNet", total - named))
    return rows


@torch.no_grad()
def step_flop_breakdown(config: BackboneConfig, views: int, *, window: int = 8, windows_per_batch: int = 4,
                        styles: int = 1, dtype: torch.dtype = torch.float16, guidance: bool = True) -> List[FlopRow]:
    """FLOPs of one step of a ``views``-view turntable with ``styles`` global styles (content + style: front+back)."""
    from diffstyle360_core.model import DiffStyle360Model

    with torch.device("meta"):
        model = DiffStyle360Model(config).to(dtype).eval().requires_grad_(False)
    latent, size = config.latent_size, config.image_size
    t = torch.tensor([421], device="meta")

    def empty(*shape):
        return torch.empty(*shape, device="meta", dtype=dtype)

    rows: List[FlopRow] = []
    with FlopCounterMode(display=False) as counter:
        content_bank, style_banks = model.reference_banks(empty(2, 4, latent, latent),
                                                          [empty(2, 4, latent, latent) for _ in range(styles)], t)
    rows.append(FlopRow(f"appearance pass ({2 + 2 * styles} reference images)", counter.get_total_flops()))
    call = FusionCall(content_bank, [StyleEntry(banks=[bank]) for bank in style_banks], FusionSettings())
    with FlopCounterMode(display=False) as counter:
        model.fusion.bind(call)  # builds every layer's reference slots once for the step
    model.fusion.release()
    rows.append(FlopRow("reference slots (K/V projections, AdaIN)", counter.get_total_flops()))
    batches = batch_windows(view_windows(views, window, "independent", 0), windows_per_batch)
    cond: List[FlopRow] = []
    uncond: List[FlopRow] = []
    for group in batches:
        n, per_window = sum(len(w) for w in group), len(group[0])
        x, hints = empty(n, 4, latent, latent), empty(n, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            model.predict_noise(x, t, hints, num_views=per_window, references=call)
        cond = _merge(cond, _pass_rows(counter, "conditional"))
        if guidance:
            with FlopCounterMode(display=False) as counter:
                model.predict_noise(x, t, None, num_views=per_window, references=None)
            uncond = _merge(uncond, _pass_rows(counter, "unconditional"))
    return rows + cond + uncond


def _merge(into: List[FlopRow], rows: List[FlopRow]) -> List[FlopRow]:
    if not into:
        return rows
    by = {r.part: r for r in into}
    for r in rows:
        if r.part in by:
            by[r.part].flops += r.flops
        else:
            into.append(r)
    return into


def format_breakdown(rows: List[FlopRow], floor_tflops: Optional[float] = None) -> str:
    """The table: part, TFLOP, share (and seconds at ``floor_tflops`` TFLOP/s when given)."""
    total = sum(r.flops for r in rows)
    lines = [f"{'part':<48}{'TFLOP':>9}{'share':>8}" + (f"{'s @ floor':>11}" if floor_tflops else "")]
    for r in rows + [FlopRow("total", total)]:
        line = f"{r.part:<48}{r.flops / 1e12:>9.2f}{100 * r.flops / total:>7.1f}%"
        if floor_tflops:
            line += f"{r.flops / 1e12 / floor_tflops:>11.3f}"
        lines.append(line)
    return "\n".join(lines)
