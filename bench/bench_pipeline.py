"""Measure what the step-major design saves: reference passes once per step, no ControlNet in CFG-uncond.

Runs one turntable per variant on the same random-weight model (same seed, same
inputs) and prints a table with times and ratios to our default. Variants:

- ours: reference banks once per step for all windows; uncond branch skips the ControlNet.
- refs_per_window: reference banks recomputed for every window batch (what a
  chunk-by-chunk loop does when it re-runs the appearance module per chunk).
- refs_per_view (official): per window, every reference repeated once per view
  through the appearance module (the official code repeats the reference latent
  to the chunk's batch of 8).
- uncond_runs_controlnet: the unconditional branch also runs the pose ControlNet
  and discards it (the official code does this).

Usage: python bench/bench_pipeline.py [--size tiny|small|sd15] [--views 16] [--steps 4] [--device cpu]
"sd15" is the real architecture (random weights) and needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffstyle360_core.cameras import CameraSet  # noqa: E402
from diffstyle360_core.config import BACK_VIEW, MAIN, official_config, sd15_controlnet, sd15_unet, tiny_config  # noqa: E402
from diffstyle360_core.model import DiffStyle360Model  # noqa: E402
from diffstyle360_core.pipeline import DiffStyle360Pipeline, Style  # noqa: E402


def small_config(kind):
    cfg = tiny_config(kind)
    cfg.unet = sd15_unet(channels=(64, 128, 192, 192), context_dim=64, heads=8, groups=32, sample_size=16)
    cfg.controlnet = sd15_controlnet(cfg.unet, hint_channels=(16, 32, 64, 64))
    cfg.text_encoder["hidden_size"] = 64
    cfg.image_size = 128
    if cfg.temporal is not None:
        cfg.temporal.num_heads, cfg.temporal.norm_num_groups = 8, 32
    return cfg


CONFIGS = {"tiny": tiny_config, "small": small_config, "sd15": official_config}


def build(size, device, dtype):
    torch.manual_seed(0)
    main = DiffStyle360Model(CONFIGS[size](MAIN)).to(device, dtype).eval()
    main.text_embedding.normal_()
    back = DiffStyle360Model(CONFIGS[size](BACK_VIEW)).to(device, dtype).eval()
    return main, back


def patch_refs_per_window(model):
    """Re-run the appearance modules before every conditional window batch."""
    original = model.predict_noise
    state = {}

    def predict(x, t, hints, *, num_views=None, with_references=True):
        if with_references and "refs" in state:
            content, styles = state["refs"]
            cb, sb = model.reference_banks(content, styles, t)
            entries = [type(e)(banks=[b], weights=e.weights, mask=e.mask) for e, b in zip(model.fusion.styles, sb)]
            model.fusion.set_references(cb, entries)
        return original(x, t, hints, num_views=num_views, with_references=with_references)

    banks = model.reference_banks

    def remember(content, styles, t):
        state["refs"] = (content, styles)
        return banks(content, styles, t)

    model.predict_noise, model.reference_banks = predict, remember


def patch_refs_per_view(model):
    """The official loop: per window, the appearance module runs on every reference repeated once per view.

    The repeated pass is only timed (its rows are identical copies); the banks used
    are the per-window ones, so outputs stay comparable.
    """
    patch_refs_per_window(model)
    inner = model.predict_noise
    remember = model.reference_banks
    state = {}

    def remember_refs(content, styles, t):
        state["refs"] = torch.cat([content] + list(styles))
        return remember(content, styles, t)

    def predict(x, t, hints, *, num_views=None, with_references=True):
        if with_references and "refs" in state:
            repeated = state["refs"].repeat_interleave(x.shape[0], dim=0)
            model.appearance(repeated, t, model.text_embedding)
        return inner(x, t, hints, num_views=num_views, with_references=with_references)

    model.predict_noise, model.reference_banks = predict, remember_refs


def patch_uncond_controlnet(model):
    """Run the ControlNet in the unconditional branch too (on the cond call's hints) and discard it."""
    original = model.predict_noise
    last = {}

    def predict(x, t, hints, *, num_views=None, with_references=True):
        if with_references:
            last["hints"] = hints
        elif last.get("hints") is not None:
            model.pose_controlnet(x, t, model.text_embedding, last["hints"])  # computed, then discarded
        return original(x, t, hints, num_views=num_views, with_references=with_references)

    model.predict_noise = predict


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=sorted(CONFIGS), default="small")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--windows-per-batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = p.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    variants = {
        "ours": None,
        "refs_per_window": patch_refs_per_window,
        "refs_per_view (official)": patch_refs_per_view,
        "uncond_runs_controlnet": patch_uncond_controlnet,
    }
    size = CONFIGS[args.size](MAIN).image_size
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, size, size, 3, generator=g)
    style = torch.rand(1, size, size, 3, generator=g)
    back = torch.rand(1, size, size, 3, generator=g)
    cams = CameraSet(images=torch.rand(args.views, 3, size, size, generator=g) * 2 - 1,
                     yaws_deg=[360.0 * i / args.views for i in range(args.views)], source="bench")
    rows = []
    for name, patch in variants.items():
        main_model, back_model = build(args.size, args.device, dtype)
        if patch is not None:
            patch(main_model)
        pipe = DiffStyle360Pipeline(main_model, back_model, cams)
        kw = dict(content_back=back, views=None, steps=args.steps, seed=1, window=args.window,
                  windows_per_batch=args.windows_per_batch)
        spec = Style(images=[style], backs=[back])  # fixed backs: time the turntable only
        pipe.stylize(content, spec, **{**kw, "steps": 1})  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = pipe.stylize(content, spec, **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        rows.append((name, seconds, peak, out.views))
        del pipe, main_model, back_model

    base_time, base_views = rows[0][1], rows[0][3]
    print(f"\nsize={args.size} views={args.views} steps={args.steps} window={args.window} "
          f"windows_per_batch={args.windows_per_batch} device={args.device} dtype={args.dtype}")
    print(f"{'variant':<26}{'seconds':>10}{'s/step':>10}{'ratio':>8}{'peak GiB':>10}{'max|Δ| vs ours':>16}")
    for name, seconds, peak, views in rows:
        diff = float((views.float() - base_views.float()).abs().max())
        print(f"{name:<26}{seconds:>10.2f}{seconds / args.steps:>10.3f}{seconds / base_time:>8.2f}"
              f"{peak:>10.2f}{diff:>16.2e}")


if __name__ == "__main__":
    main()
