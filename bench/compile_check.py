"""Both compile scopes with real inductor kernels on the tiny model, against eager.

    python bench/compile_check.py [--device cpu|cuda] [--views 8] [--threads 1]

On a CPU inductor writes C++ kernels: minutes per scope on 2 cores. For each
scope (regional, full) it prints the time of the first calls (compiling),
max|Δ| against eager over a styled call with a masked style in "paper" and
"confined" mode (the second carries an attention bias) and the unconditional
call, and the seconds per cond+uncond pair, eager vs compiled. The tests check
the wiring with dynamo's eager backend; this is the check with real kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffstyle360_core.acceleration import compile_model, uncompile_model  # noqa: E402
from diffstyle360_core.attention import FusionCall, StyleEntry  # noqa: E402
from diffstyle360_core.config import MAIN  # noqa: E402
from diffstyle360_core.options import FusionSettings  # noqa: E402
from diffstyle360_core.tiny import build_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, _ = build_tiny_model(MAIN, seed=3)
    model = model.to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    latent, size = model.config.latent_size, model.config.image_size
    x = torch.randn(args.views, 4, latent, latent, generator=g).to(device)
    hints = (torch.rand(args.views, 3, size, size, generator=g) * 2 - 1).to(device)
    refs = torch.randn(2, 4, latent, latent, generator=g).to(device)
    style = torch.randn(2, 4, latent, latent, generator=g).to(device)
    mask = torch.zeros(2, size, size, device=device)
    mask[0, : size // 2] = 1

    @torch.no_grad()
    def eps(t: int, mode: str):
        content_bank, style_banks = model.reference_banks(refs, [style], t)
        call = FusionCall(content_bank, [StyleEntry(banks=style_banks, mask=mask)],
                          FusionSettings(tau=1.1, mask_mode=mode).checked())
        return (model.predict_noise(x, t, hints, num_views=args.views, references=call),
                model.predict_noise(x, t, None, num_views=args.views, references=None))

    def outputs():
        return eps(421, "paper") + eps(421, "confined")

    def seconds_per_pair(n: int = 5) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(n):
            eps(100 + i, "paper")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    eager = outputs()
    eager_s = seconds_per_pair()
    for scope in ("regional", "full"):
        start = time.perf_counter()
        compile_model(model, scope=scope)
        compiled = outputs()
        first_s = time.perf_counter() - start
        delta = max(float((a - b).abs().max()) for a, b in zip(eager, compiled))
        print(f"{scope}: first calls (compiling) {first_s:.1f}s, max|Δ| vs eager {delta:.2e}, "
              f"s per cond+uncond pair: eager {eager_s:.3f}, compiled {seconds_per_pair():.3f}", flush=True)
        uncompile_model(model)


if __name__ == "__main__":
    main()
