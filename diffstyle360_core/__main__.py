"""Command line: ``python -m diffstyle360_core {stylize,back-view,convert,make-tiny}``.

Every command is a thin shell over the library; errors the user can fix are
printed as one line (``error: …``) with exit code 2, not as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .fusion import MASK_MODES, PAIRINGS

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Progress:
    """A one-line text progress bar (no extra dependency); one bar per denoising run (back views, turntable)."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream, self.start = label, stream, time.time()
        self.run = 0

    def __call__(self, step: int, total: int) -> None:
        if step == 1:
            self.run += 1
            self.start = time.time()
        width = 30
        done = int(width * step / total)
        elapsed = time.time() - self.start
        self.stream.write(f"\r{self.label} run {self.run} [{'#' * done}{'.' * (width - done)}] {step}/{total} {elapsed:5.1f}s")
        if step == total:
            self.stream.write("\n")
        self.stream.flush()


def _device_dtype(args) -> tuple:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device name; use cuda, cuda:N, mps or cpu") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise ValueError(f"--device {device}: this PyTorch build cannot use it here; use --device cpu"
                         " (or install a PyTorch build with GPU support)")
    dtype = DTYPES[args.dtype]
    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    return device, dtype


def _prepare_out(folder: str) -> None:
    """Create the output folder now, so a bad --out fails before minutes of sampling."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="folder with main/, back_view/ and cam_condition/ (see README)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (official: 50)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance (official: 3)")
    p.add_argument("--eta", type=float, default=0.5, help="DDIM eta (official: 0.5)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda if available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="auto = fp16 on CUDA, fp32 elsewhere")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffstyle360_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stylize", help="stylized 360° turntable of a portrait")
    _add_sampler_args(p)
    p.add_argument("--content", required=True, help="portrait (aligned head crop)")
    p.add_argument("--content-back", default=None, help="back of the head (generated if omitted)")
    p.add_argument("--style", action="append", default=[], help="style image; repeat with --alpha to blend two")
    p.add_argument("--alpha", type=float, default=None, help="interpolation α between two --style images (§4)")
    p.add_argument("--style-back", action="append", default=None, help="back view of each --style (generated if omitted)")
    p.add_argument("--style-mask", default=None, help="mask image on the style image: where to stylize (white)")
    p.add_argument("--style-back-mask", default=None, help="mask on the style's back view (default: none)")
    p.add_argument("--style-module", default=None, help="DiffStyle360 style module .safetensors (else training-free)")
    p.add_argument("--views", type=int, default=None,
                   help="number of evenly spaced views (default: every view of the set or of --yaw-range)")
    p.add_argument("--yaw-range", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="only views with yaw in [START, END] degrees (wraps past 360); --views subsamples it")
    p.add_argument("--conditions", default=None, help="your own folder of condition images (default: from --weights)")
    p.add_argument("--guide-frames", default=None,
                   help="folder with one guide frame per view, or per view of the full set (3D-aware noise)")
    p.add_argument("--tau", type=float, default=1.05, help="key scale τ (§3.5); paper range 1.00–1.10")
    p.add_argument("--pairing", choices=list(PAIRINGS), default="paper",
                   help="values paired with the fused keys: the paper's literal order or each key with its own")
    p.add_argument("--mask-mode", choices=list(MASK_MODES), default="paper",
                   help="paper: mask the keys as the paper does (style may leak); confined: keep style inside the mask")
    p.add_argument("--window", type=int, default=None, help="views per view-consistency window (trained: 8)")
    p.add_argument("--window-mode", choices=["independent", "circular"], default="independent")
    p.add_argument("--overlap", type=int, default=4, help="window overlap in circular mode")
    p.add_argument("--windows-per-batch", type=int, default=4, help="lower to save VRAM")
    p.add_argument("--fps", type=int, default=10)

    p = sub.add_parser("back-view", help="back-of-head image from a front portrait")
    _add_sampler_args(p)
    p.add_argument("--content", required=True, help="front portrait")

    p = sub.add_parser("convert", help="official DiffPortrait360 .th → our safetensors folder")
    p.add_argument("--checkpoint", required=True, help="model_state-340000.th or back_head-230000.th")
    p.add_argument("--out", required=True, help="output folder (e.g. WEIGHTS/main or WEIGHTS/back_view)")
    p.add_argument("--kind", choices=["main", "back_view"], default=None, help="checked against the file")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default=None, help="store weights in this dtype")

    p = sub.add_parser("make-tiny", help="tiny random-weight model set for demos and tests")
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _stylize(args) -> None:
    from .cameras import load_condition_set, select_views
    from .images import save_views
    from .pipeline import DiffStyle360Pipeline, Style, alpha_weights

    device, dtype = _device_dtype(args)
    if not args.style:
        raise ValueError("give at least one --style image")
    if len(args.style) > 2 or (len(args.style) == 2) != (args.alpha is not None):
        raise ValueError("blend two styles with exactly two --style images and --alpha α in [0, 1]")
    weights = list(alpha_weights(args.alpha)) if args.alpha is not None else None
    style = Style(images=list(args.style), weights=weights, backs=args.style_back, mask=args.style_mask,
                  back_mask=args.style_back_mask)
    if args.style_back_mask and not args.style_mask:
        raise ValueError("--style-back-mask needs --style-mask (the mask on the style's front image)")
    if args.fps < 1:
        raise ValueError(f"--fps must be >= 1, got {args.fps}")
    if args.guide_frames and not Path(args.guide_frames).is_dir():
        raise FileNotFoundError(f"--guide-frames folder {args.guide_frames} not found")
    _prepare_out(args.out)
    pipe = DiffStyle360Pipeline.from_pretrained(args.weights, device=device, dtype=dtype, style_module=args.style_module,
                                                conditions=args.conditions)
    cameras = pipe.cameras
    if args.yaw_range is not None:
        cameras = select_views(cameras, yaw_range=tuple(args.yaw_range), views=args.views)
    elif args.views is not None:
        cameras = select_views(cameras, views=args.views)
    guides = None
    if args.guide_frames:
        frames = load_condition_set(args.guide_frames, pipe.image_size)
        if len(frames) == len(pipe.cameras) and len(frames) != len(cameras):
            frames = frames.select(cameras.indices)  # a full-turntable guide video: keep the chosen views
        guides = (frames.images + 1) / 2
    result = pipe.stylize(
        args.content, style, content_back=args.content_back, cameras=cameras, tau=args.tau, pairing=args.pairing,
        mask_mode=args.mask_mode,
        seed=args.seed, steps=args.steps, cfg=args.cfg, eta=args.eta, window=args.window,
        window_mode=args.window_mode, overlap=args.overlap, windows_per_batch=args.windows_per_batch,
        guide_frames=guides, callback=Progress("denoising"),
    )
    paths = save_views(result.views, args.out, fps=args.fps)
    save_views(result.content_back, Path(args.out) / "back_views", prefix="content_back", formats=("png",))
    print(f"wrote {len(result.views)} views to {args.out}: {paths.get('gif')}")


def _back_view(args) -> None:
    from .images import save_views
    from .pipeline import DiffStyle360Pipeline

    device, dtype = _device_dtype(args)
    _prepare_out(args.out)
    pipe = DiffStyle360Pipeline.from_pretrained(args.weights, device=device, dtype=dtype, load_main=False)
    back = pipe.back_view(args.content, seed=args.seed, steps=args.steps, cfg=args.cfg, eta=args.eta,
                          callback=Progress("back view"))
    save_views(back, args.out, prefix="back", formats=("png",))
    print(f"wrote back view to {args.out}")


def _convert(args) -> None:
    from .weights import convert_checkpoint

    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(args.dtype)
    folder = convert_checkpoint(args.checkpoint, args.out, kind=args.kind, dtype=dtype)
    print(f"converted {args.checkpoint} → {folder}")


def _make_tiny(args) -> None:
    from .tiny import make_tiny

    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise ValueError(f"{args.outdir} is a file; give a folder for the tiny model set")
    start = time.time()
    make_tiny(args.outdir, seed=args.seed)
    print(f"wrote tiny model set to {args.outdir} in {time.time() - start:.1f}s (use as --weights {args.outdir})")


COMMANDS = {"stylize": _stylize, "back-view": _back_view, "convert": _convert, "make-tiny": _make_tiny}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, MemoryError) as err:  # OSError: missing/unwritable files and folders
        print(f"error: {err}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
        print(f"error: out of GPU memory ({str(err).splitlines()[0]}); lower --windows-per-batch or --views, "
              "or use --dtype fp16", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
