"""``python -m bench``: every speed/memory variant on one random-weight model, one table.

All variants run in one process on the same weights, inputs and seed, so the
times compare like with like and ``max|Δ|`` shows what a variant changes
beyond the cost. The last line is ``speedup_vs_official_schedule=X.XX``: the
official loop's seconds per step over ours, for the configuration given.

Variants (``--variants``, comma separated; ``default`` always runs first):

* ``default``: eager, DDIM (the official sampler), the pipeline as shipped.
* ``compiled``: :func:`~.acceleration.compile_model` (regional compile); exact
  within rounding. ``compiled_full``: ``scope="full"`` (each model call one
  graph). ``compiled_cudagraphs``: ``scope="full"`` with
  ``mode="reduce-overhead"`` (CUDA graphs; CUDA only). ``<any of them>+<scheduler>``
  also switches the sampler.
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` on (CUDA only).
* ``dpmpp_2m``, ``unipc``, ``euler``: the fast solvers at ``--fast-steps`` (20)
  steps. Not exact: their Δ against 50-step-style DDIM is expected.
* ``offload``: :class:`~.acceleration.SequentialOffload` (CUDA only).
* ``fp8``: fp8 weight storage, compute in ``--dtype`` (CUDA only; irreversible,
  so it runs last).
* ``channels_last``: NHWC conv weights (CUDA only), to measure layout effects.
* ``official``: every difference of the official sampling loop at once —
  references re-run through the appearance modules once per view in every
  chunk, the ControlNet run (and discarded) in the unconditional pass, fp32
  weights under fp16 autocast (CUDA only), chunks of 8 views
  (``windows_per_batch=1``).

``--memory-table`` instead measures peak VRAM of whole ``stylize`` calls
(back views generated, everything resident counted) for several view counts
and windows per batch, resident vs sequential offload vs offload + fp8 (CUDA).

Timing: one warm-up run (1 step; compiles where compiled), then one timed run
of ``--steps`` steps: ``s/step`` = denoising time / steps; ``total`` adds the
reference encoding and the VAE decode of every view; the extrapolated column
puts 50 steps (DDIM) or ``--fast-steps`` (solvers) in place of the timed steps.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from diffstyle360_core.config import BACK_VIEW, MAIN, SIZES
from diffstyle360_core.devices import DTYPES

SCHEDULER_VARIANTS = ("dpmpp_2m", "unipc", "euler")
#: compiled variants: (compile scope, torch.compile mode; None = --compile-mode)
COMPILE_VARIANTS = {"compiled": ("regional", None), "compiled_full": ("full", None),
                    "compiled_cudagraphs": ("full", "reduce-overhead")}
ALL_VARIANTS = ("default", *COMPILE_VARIANTS, *SCHEDULER_VARIANTS, "offload", "channels_last", "cudnn_benchmark",
                "official", "fp8")
DEFAULT_VARIANTS = ("default", "compiled", *SCHEDULER_VARIANTS, "offload", "official", "fp8")
CUDA_ONLY = {"offload": "nothing to offload to without a GPU", "fp8": "fp8 storage is a GPU memory saver",
             "channels_last": "layout effect is a cuDNN matter", "cudnn_benchmark": "cuDNN autotuning",
             "compiled_cudagraphs": "CUDA graphs need a GPU"}
OFFICIAL_STEPS = 50
LAST_LINE = "speedup_vs_official_schedule"


# --------------------------------------------------------------------------- #
# model sizes (diffstyle360_core.config.SIZES)
# --------------------------------------------------------------------------- #
@torch.no_grad()
def build_models(size: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Main and back-view models with random weights, built directly on ``device``.

    Zero-initialised tensors (ControlNet zero-convs, temporal ``proj_out``) get
    N(0, 1/fan_in) so every part acts and a changed result shows in Δ.
    """
    from diffstyle360_core.model import DiffStyle360Model

    torch.manual_seed(seed)
    models = []
    for kind in (MAIN, BACK_VIEW):
        with torch.device(device):
            model = DiffStyle360Model(SIZES[size](kind))
        for p in model.parameters():
            if not bool(p.any()):
                fan_in = p[0].numel() if p.ndim > 1 else 0
                p.normal_(0.0, 1.0 / math.sqrt(fan_in) if fan_in else 0.02)
        if kind == MAIN:
            model.text_embedding.normal_()
        models.append(model.to(device=device, dtype=dtype).eval().requires_grad_(False))
    return models


# --------------------------------------------------------------------------- #
# measuring helpers
# --------------------------------------------------------------------------- #
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated`` (absolute), or the CPU's RSS growth (sampled)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: Optional[int] = None
        self.reserved: Optional[int] = None
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _rss_bytes()
            self._max = self._base
            if self._base is not None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            now = _rss_bytes()
            if now is not None and now > self._max:
                self._max = now

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.reserved = torch.cuda.max_memory_reserved(self.device)
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            now = _rss_bytes() or self._max
            self.peak = max(self._max, now) - self._base
        return False

    def gib_text(self) -> str:
        """``peak (reserved)`` in GiB on CUDA; the RSS growth elsewhere."""
        if self.device.type == "cuda" and self.peak is not None and self.reserved is not None:
            return f"{self.peak / 2**30:.2f} ({self.reserved / 2**30:.2f})"
        return self.text()

    def text(self) -> str:
        if self.peak is None:
            return "n/a"
        gib = self.peak / 2**30
        return f"{gib:.2f}" if self.device.type == "cuda" else f"rss+{gib:.2f}"


def flops_text(flops: Optional[float], per: str = "") -> str:
    """``1.23 TFLOP`` / ``45.6 GFLOP`` (or n/a)."""
    if flops is None:
        return "n/a"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}{per}"
    return f"{flops:.3g} FLOP{per}"


def _register_cpu_sdpa_flops() -> None:
    """FlopCounterMode knows the CUDA SDPA kernels only; count the CPU flash kernel the same way."""
    from torch.utils import flop_counter as fc

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in fc.flop_registry or not hasattr(fc, "sdpa_flop_count"):
        return

    def formula(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    try:
        fc.register_flop_formula(op, get_raw=False)(formula)
    except Exception:  # pragma: no cover - flop counter internals moved; CPU counts then omit attention
        pass


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> Optional[float]:
    """Dense matmul rate on this GPU in ``dtype`` (the ceiling for the FLOP floor); None off CUDA."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000 / reps
    del a, b
    return 2 * n**3 / seconds / 1e12


# --------------------------------------------------------------------------- #
# the official loop, emulated on our model
# --------------------------------------------------------------------------- #
class OfficialLoop:
    """Patch a model so each window batch costs what the official loop costs (outputs unchanged).

    Per conditional window batch the appearance modules re-run on every
    reference repeated once per view in the batch (the official code repeats
    the reference latent to the chunk's batch); their banks are discarded (the
    rows are copies of the per-step ones we use). The unconditional pass also
    runs the pose ControlNet on the batch's hints and discards it. The one
    per-step reference pass we keep is counted on top (about 1/(8·chunks) of the
    repeated work). ``counts`` shows that both patches fired.
    """

    def __init__(self, model):
        self.model = model
        self.counts = {"references_per_view": 0, "uncond_controlnet": 0}
        self._refs = None
        self._hints = None

    def __enter__(self):
        model = self.model
        banks, predict = model.reference_banks, model.predict_noise

        def reference_banks(content, styles, timestep):
            self._refs = (content, list(styles))
            return banks(content, styles, timestep)

        def predict_noise(noisy, timestep, hints, *, num_views=None, references=None, **kwargs):
            if references is not None:
                self._hints = hints
                if self._refs is not None:
                    rows = noisy.shape[0]
                    content, styles = self._refs
                    rep = (lambda z: z.repeat_interleave(rows, 0) if z is not None else None)
                    banks(rep(content), [rep(s) for s in styles], timestep)
                    self.counts["references_per_view"] += 1
            elif self._hints is not None and self._hints.shape[0] == noisy.shape[0]:
                dtype = model.vae.dtype
                model.pose_controlnet(noisy.to(dtype), timestep, model.text_embedding, self._hints.to(noisy.device, dtype))
                self.counts["uncond_controlnet"] += 1
            return predict(noisy, timestep, hints, num_views=num_views, references=references, **kwargs)

        model.reference_banks, model.predict_noise = reference_banks, predict_noise
        return self

    def __exit__(self, *exc):
        for name in ("reference_banks", "predict_noise"):
            self.model.__dict__.pop(name, None)
        self._refs = self._hints = None
        return False


# --------------------------------------------------------------------------- #
# one bench session
# --------------------------------------------------------------------------- #
@dataclass
class Row:
    variant: str
    exact: str
    steps: int
    target_steps: int
    prepare_s: float = float("nan")
    denoise_s: float = float("nan")
    decode_s: float = float("nan")
    warmup_s: Optional[float] = None
    peak: str = "n/a"
    flops_per_step: Optional[float] = None
    delta: Optional[float] = None
    note: str = ""
    views: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def s_step(self) -> float:
        return self.denoise_s / self.steps

    @property
    def total_s(self) -> float:
        return self.prepare_s + self.denoise_s + self.decode_s

    @property
    def extrapolated_s(self) -> float:
        return self.prepare_s + self.decode_s + self.target_steps * self.s_step

    @property
    def tflops(self) -> Optional[float]:
        return None if self.flops_per_step is None else self.flops_per_step / self.s_step / 1e12


HEADER = (f"{'variant':<30}{'exact':<7}{'steps':>6}{'s/step':>9}{'denoise s':>11}{'total s':>9}"
          f"{'extrap. s@steps':>20}{'peak GiB':>14}{'TFLOP/s':>9}{'max|Δ| vs default':>19}  note")


def format_row(row: Row) -> str:
    if row.note.startswith("skipped") or math.isnan(row.denoise_s):
        return f"{row.variant:<30}{'-':<7}{'-':>6}{'-':>9}{'-':>11}{'-':>9}{'-':>20}{'-':>14}{'-':>9}{'-':>19}  {row.note}"
    tflops = f"{row.tflops:.3g}" if row.tflops is not None else "n/a"
    delta = "n/a" if row.delta is None else ("nan" if math.isnan(row.delta) else f"{row.delta:.2e}")
    extrap = f"{row.extrapolated_s:.2f}@{row.target_steps}"
    note = row.note
    if row.warmup_s is not None:
        note = (f"warm-up {row.warmup_s:.1f}s; " + note).rstrip("; ")
    return (f"{row.variant:<30}{row.exact:<7}{row.steps:>6}{row.s_step:>9.3f}{row.denoise_s:>11.2f}"
            f"{row.total_s:>9.2f}{extrap:>20}{row.peak:>14}{tflops:>9}{delta:>19}  {note}")


class Bench:
    def __init__(self, args, out=None):
        from diffstyle360_core.devices import resolve_device

        self.args = args
        self.out = out or sys.stdout
        self.device = resolve_device(args.device)
        self.dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.cuda = self.device.type == "cuda"

    def log(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # ----------------------------------------------------------------- setup
    def build(self) -> None:
        from diffstyle360_core.cameras import CameraSet
        from diffstyle360_core.pipeline import DiffStyle360Pipeline

        args = self.args
        start = time.perf_counter()
        self.main, self.back = build_models(args.size, self.device, self.dtype, seed=0)
        _sync(self.device)
        self.build_s = time.perf_counter() - start
        size = self.main.config.image_size
        g = torch.Generator().manual_seed(args.seed)
        self.content, self.style, self.content_back, self.style_back = (torch.rand(1, size, size, 3, generator=g)
                                                                        for _ in range(4))
        self.cameras = CameraSet(images=torch.rand(args.views, 3, size, size, generator=g) * 2 - 1,
                                 yaws_deg=[360.0 * i / args.views for i in range(args.views)], source="bench")
        self.pipe = DiffStyle360Pipeline(self.main, self.back, self.cameras)

    def _style(self, with_backs: bool = True):
        from diffstyle360_core.pipeline import Style

        return Style(images=[self.style], backs=[self.style_back] if with_backs else None)

    def turntable(self, *, steps: int, scheduler: str = "ddim", windows_per_batch: Optional[int] = None,
                  decode_views: Optional[int] = None, autocast: bool = False):
        """prepare_references → denoise → decode with fixed back views; returns (views, (prep, denoise, decode) s)."""
        from diffstyle360_core.options import SamplerOptions, WindowOptions

        args = self.args
        wpb = args.windows_per_batch if windows_per_batch is None else windows_per_batch
        sampler = SamplerOptions(seed=args.seed, steps=steps, scheduler=scheduler)
        windows = WindowOptions(window=args.window, windows_per_batch=wpb)
        ctx = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
        with ctx, torch.no_grad():
            _sync(self.device)
            t0 = time.perf_counter()
            refs = self.pipe.prepare_references(self.content, self._style(), content_back=self.content_back,
                                                sampler=sampler)
            _sync(self.device)
            t1 = time.perf_counter()
            latents = self.pipe.denoise(refs, self.cameras, sampler=sampler, windows=windows)
            _sync(self.device)
            t2 = time.perf_counter()
            if decode_views is not None:
                latents = latents[:decode_views]
            views = self.pipe.decode(latents)
            _sync(self.device)
            t3 = time.perf_counter()
        return views.float().cpu(), (t1 - t0, t2 - t1, t3 - t2)

    def count_step_flops(self, *, windows_per_batch: Optional[int] = None, autocast: bool = False) -> Optional[float]:
        """FLOPs of one denoising step (reference banks + every window batch, cond and uncond), counted once."""
        from torch.utils.flop_counter import FlopCounterMode

        from diffstyle360_core.options import SamplerOptions, WindowOptions

        _register_cpu_sdpa_flops()
        args = self.args
        wpb = args.windows_per_batch if windows_per_batch is None else windows_per_batch
        sampler = SamplerOptions(seed=args.seed, steps=1)
        ctx = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                refs = self.pipe.prepare_references(self.content, self._style(), content_back=self.content_back,
                                                    sampler=sampler)
                with FlopCounterMode(display=False) as counter:
                    self.pipe.denoise(refs, self.cameras, sampler=sampler,
                                      windows=WindowOptions(window=args.window, windows_per_batch=wpb))
            return float(counter.get_total_flops())
        except Exception as err:  # counting is a report aid: never lose the timings for it
            self.log(f"(FLOP count failed: {type(err).__name__}: {err})")
            return None

    # ----------------------------------------------------------------- variants
    def variant_plan(self, names: Sequence[str]) -> List[str]:
        wanted = []
        for name in ["default", *names]:
            if name not in wanted:
                wanted.append(name)
        # irreversible last
        return sorted(wanted, key=lambda n: (n != "default", n == "fp8"))

    def run_variant(self, name: str, base: Optional[Row], flops: Dict[str, Optional[float]]) -> Row:
        from diffstyle360_core.acceleration import SequentialOffload, compile_model, store_weights_fp8, uncompile_model

        args = self.args
        steps, fast = args.steps, args.fast_steps
        base_cls = name.split("+")[0]
        scheduler = name.split("+", 1)[1] if "+" in name else ("ddim" if name not in SCHEDULER_VARIANTS else name)
        exact = "yes" if scheduler == "ddim" else "no"
        row = Row(name, exact, steps if scheduler == "ddim" else fast,
                  OFFICIAL_STEPS if scheduler == "ddim" else fast, flops_per_step=flops.get("default"))
        if base_cls in CUDA_ONLY and not self.cuda:
            row.note = f"skipped on {self.device.type}: CUDA only ({CUDA_ONLY[base_cls]})"
            return row
        if base_cls not in ALL_VARIANTS:
            row.note = f"skipped: unknown variant (known: {', '.join(ALL_VARIANTS)}, compiled*+<scheduler>)"
            return row
        wpb, autocast, warmup = None, False, (name == "default" or base_cls in COMPILE_VARIANTS
                                       or (self.cuda and base_cls not in SCHEDULER_VARIANTS))
        # CUDA graph trees run a call eagerly once, record it the second time, replay from the third
        warmup_steps = 2 if base_cls == "compiled_cudagraphs" else 1
        teardown: List[Callable[[], None]] = []
        stack = contextlib.ExitStack()
        try:
            if base_cls in COMPILE_VARIANTS:
                scope, mode = COMPILE_VARIANTS[base_cls]
                mode = mode or args.compile_mode
                record = compile_model(self.main, scope=scope, mode=mode, dynamic=args.compile_dynamic,
                                       backend=args.compile_backend)
                teardown.append(lambda: uncompile_model(self.main))
                what = "regions" if scope == "regional" else "modules compiled whole-call"
                row.note = f"{record.regions} {what}, backend={args.compile_backend}" + (f", mode={mode}" if mode else "")
                if record.regions == 0:
                    row.note += " (compiling is switched off: DIFFSTYLE360_COMPILE)"
            elif base_cls == "cudnn_benchmark":
                previous = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = True
                teardown.append(lambda: setattr(torch.backends.cudnn, "benchmark", previous))
                row.note = "cuDNN picks conv algorithms by timing them (first call of each shape)"
            elif base_cls == "offload":
                placement = SequentialOffload(self.device).register(self.main, self.back)
                old = self.pipe.placement
                self.pipe.placement = placement

                def restore_offload(old=old):
                    self.pipe.placement = old
                    self.main.to(self.device)
                    self.back.to(self.device)

                teardown.append(restore_offload)
                row.note = "back-view model parked on CPU; peak after warm-up (steady state)"
            elif base_cls == "fp8":
                count = store_weights_fp8(self.main, self.dtype)
                row.exact = "no"
                row.note = f"{count} Linear/Conv weights in float8_e4m3fn (per-channel scales), compute {args.dtype}"
            elif base_cls == "channels_last":
                self.main.to(memory_format=torch.channels_last)
                teardown.append(lambda: self.main.to(memory_format=torch.contiguous_format))
            elif base_cls == "official":
                wpb = 1
                loop = stack.enter_context(OfficialLoop(self.main))
                if self.cuda and self.dtype != torch.float32:
                    self.main.to(torch.float32)
                    teardown.append(lambda: self.main.to(self.dtype))
                    autocast = True
                    row.note = "fp32 weights + fp16 autocast, "
                else:
                    row.note = "no autocast off CUDA, "
                row.note += "chunks of 8 (windows_per_batch=1), refs per view, ControlNet in uncond"
                row.flops_per_step = flops.get("official")
            if scheduler != "ddim":
                row.note = (row.note + "; " if row.note else "") + "fast solver: not exact, Δ expected"
            if warmup:
                t = time.perf_counter()
                self.turntable(steps=warmup_steps, scheduler=scheduler, windows_per_batch=wpb,
                               decode_views=min(args.views, 4), autocast=autocast)
                row.warmup_s = time.perf_counter() - t
            with PeakMemory(self.device) as peak:
                views, (row.prepare_s, row.denoise_s, row.decode_s) = self.turntable(
                    steps=row.steps, scheduler=scheduler, windows_per_batch=wpb, autocast=autocast)
            row.peak = peak.text()
            if base_cls == "official" and not all(loop.counts.values()):
                row.note += f"; WARNING emulation incomplete {loop.counts}"
            row.views = views
            if not bool(torch.isfinite(views).all()):
                row.note += "; non-finite output"
            if base is not None and base.views is not None:
                row.delta = float((views - base.views).abs().max())
            elif name == "default":
                row.delta = 0.0
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
            row.note = f"skipped: out of GPU memory ({str(err).splitlines()[0][:80]})"
            row.denoise_s = float("nan")
        except Exception as err:
            row.note = f"skipped: failed with {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
            row.denoise_s = float("nan")
        finally:
            stack.close()
            for fn in reversed(teardown):
                fn()
            if self.cuda:
                torch.cuda.empty_cache()
        return row

    # ----------------------------------------------------------------- main
    def describe(self) -> str:
        import diffusers

        args = self.args
        name = torch.cuda.get_device_name(self.device) if self.cuda else _cpu_name()
        return (f"size={args.size} views={args.views} steps={args.steps} fast_steps={args.fast_steps} "
                f"window={args.window} windows_per_batch={args.windows_per_batch} device={self.device} ({name}) "
                f"dtype={args.dtype or ('fp16' if self.cuda else 'fp32')} threads={torch.get_num_threads()} "
                f"torch={torch.__version__} diffusers={diffusers.__version__}")

    def run(self, variants: Sequence[str]) -> List[Row]:
        args = self.args
        self.log(f"# DiffStyle360 bench: {self.describe()}")
        self.build()
        self.log(f"built main + back-view models in {self.build_s:.1f}s "
                 f"({sum(p.numel() for p in self.main.parameters()) / 1e9:.2f}B + "
                 f"{sum(p.numel() for p in self.back.parameters()) / 1e9:.2f}B parameters)")
        plan = self.variant_plan(variants)
        flops: Dict[str, Optional[float]] = {}
        if not args.no_flops:
            flops["default"] = self.count_step_flops()
            if "official" in plan:
                with OfficialLoop(self.main):
                    if self.cuda and self.dtype != torch.float32:
                        self.main.to(torch.float32)
                    try:
                        flops["official"] = self.count_step_flops(windows_per_batch=1, autocast=self.cuda)
                    finally:
                        self.main.to(self.dtype)
            self.log("FLOP per denoising step (FlopCounterMode, one step): " + ", ".join(
                f"{k} {flops_text(v)}" for k, v in flops.items()))
            self._log_breakdown()
        self.log(HEADER)
        rows: List[Row] = []
        base = None
        explicit = list(args.variants) != [",".join(DEFAULT_VARIANTS)]
        for name in plan:
            if name.startswith("compiled") and not self.cuda and not explicit:
                row = Row(name, "yes", args.steps, OFFICIAL_STEPS, note=(
                    f"skipped on {self.device.type} by default: inductor compiles every block shape, minutes on a "
                    "CPU (ask for it with --variants compiled)"))
                rows.append(row)
                self.log(format_row(row))
                continue
            row = self.run_variant(name, base, flops)
            if name == "default":
                base = row
            rows.append(row)
            self.log(format_row(row))
        self.summary(rows, flops)
        return rows

    def summary(self, rows: List[Row], flops: Dict[str, Optional[float]]) -> None:
        args = self.args
        by = {r.variant: r for r in rows}
        base = by["default"]
        self.log("")
        self.log("Table above (final):")
        self.log(HEADER)
        for row in rows:
            self.log(format_row(row))
        self.log("")
        self.log("s/step = denoising seconds / steps (reference banks + every window batch, cond + uncond);")
        self.log("total = prepare_references + denoise + decode of every view (back views given, not generated);")
        self.log("extrap. s = total with the timed steps replaced by 50 (DDIM) or fast_steps (solvers): EXTRAPOLATED.")
        peak = self.matmul_ceiling()
        f = flops.get("default")
        if f is not None:
            line = f"FLOP floor: {flops_text(f, '/step')}"
            if peak is not None:
                line += (f"; at the measured dense {args.dtype or 'fp16'} matmul rate {peak:.0f} TFLOP/s: "
                         f"{f / peak / 1e12:.3f} s/step, {OFFICIAL_STEPS * f / peak / 1e12:.2f} s for {OFFICIAL_STEPS} "
                         f"steps, {args.fast_steps * f / peak / 1e12:.2f} s for {args.fast_steps}")
            else:
                line += " (no GPU: no matmul ceiling measured)"
            self.log(line)
        exact = [r for r in rows if r.exact == "yes" and r.variant != "official" and not math.isnan(r.denoise_s)]
        if exact:
            best = min(exact, key=lambda r: r.s_step)
            self.log(f"fastest exact variant: {best.variant} {best.s_step:.3f} s/step "
                     f"({base.s_step / best.s_step:.2f}x default)")
        official = by.get("official")
        if official is None or math.isnan(official.denoise_s) or math.isnan(base.denoise_s):
            self.log(f"{LAST_LINE}=nan")
        else:
            self.log(f"{LAST_LINE}={official.s_step / base.s_step:.2f}")

    def matmul_ceiling(self) -> Optional[float]:
        """The measured dense matmul rate (TFLOP/s, half precision for fp32 runs), once per bench; None off CUDA."""
        if not hasattr(self, "_matmul_ceiling"):
            dtype = self.dtype if self.dtype != torch.float32 else torch.float16
            self._matmul_ceiling = measured_matmul_tflops(self.device, dtype)
        return self._matmul_ceiling

    def flop_breakdown(self) -> None:
        """Which parts one step's FLOPs are made of (meta tensors: instant at any size, no GPU needed)."""
        args = self.args
        self.log(f"# DiffStyle360 FLOP breakdown: size={args.size} views={args.views} window={args.window} "
                 f"windows_per_batch={args.windows_per_batch} (meta tensors, one denoising step, CFG on)")
        self._log_breakdown()

    def _log_breakdown(self) -> None:
        from .flops import format_breakdown, step_flop_breakdown

        args = self.args
        try:
            rows = step_flop_breakdown(SIZES[args.size](MAIN), args.views, window=args.window,
                                       windows_per_batch=args.windows_per_batch, dtype=self.dtype)
        except Exception as err:  # a report aid: never lose the timings for it
            self.log(f"(FLOP breakdown failed: {type(err).__name__}: {err})")
            return
        self.log(format_breakdown(rows, self.matmul_ceiling()))

    # ----------------------------------------------------------------- memory table
    def memory_table(self) -> None:
        from diffstyle360_core.acceleration import SequentialOffload, store_weights_fp8
        from diffstyle360_core.cameras import CameraSet
        from diffstyle360_core.pipeline import DiffStyle360Pipeline, Style

        args = self.args
        self.log(f"# DiffStyle360 memory table: {self.describe()}")
        if not self.cuda and not args.memory_dry_run:
            self.log(f"memory table: n/a on {self.device.type} (peak VRAM needs CUDA)")
            return
        self.build()
        size = self.main.config.image_size
        g = torch.Generator().manual_seed(args.seed)
        views_list = _ints(args.memory_views)
        wpb_list = _ints(args.memory_wpb)
        modes = ["resident", "offload"] + (["offload+fp8"] if not args.no_memory_fp8 else [])
        results: Dict[tuple, str] = {}
        cams_all = CameraSet(images=torch.rand(max(views_list), 3, size, size, generator=g) * 2 - 1,
                             yaws_deg=[360.0 * i / max(views_list) for i in range(max(views_list))], source="bench")
        self.log(f"one stylize() per point: back views of content and style generated, {args.memory_steps} steps, "
                 f"decode of every view; peak = torch.cuda.max_memory_allocated (reserved in brackets)")
        self.log(f"{'mode':<14}{'views':>6}{'windows/batch':>15}{'peak GiB':>20}{'seconds':>9}")
        for mode in modes:
            if mode == "offload+fp8":
                for model in (self.main, self.back):
                    model.to(self.device)  # quantise on the device (fast), then let the placement park it
                    store_weights_fp8(model, self.dtype)
                if self.cuda:
                    torch.cuda.empty_cache()
            placement = SequentialOffload(self.device).register(self.main, self.back) if mode != "resident" else None
            fp8_views = _ints(args.memory_fp8_views) if args.memory_fp8_views else views_list
            for n in views_list:
                if mode == "offload+fp8" and n not in fp8_views:
                    continue
                step = max(1, max(views_list) // n)
                idx = list(range(0, max(views_list), step))[:n]
                cams = CameraSet(images=cams_all.images[idx], yaws_deg=[cams_all.yaws_deg[i] for i in idx],
                                 source="bench")
                for wpb in wpb_list:
                    if mode == "resident":
                        self.main.to(self.device)
                        self.back.to(self.device)
                    pipe = DiffStyle360Pipeline(self.main, self.back, cams, placement=placement)
                    text = "n/a"
                    t = time.perf_counter()
                    try:
                        with PeakMemory(self.device) as peak, torch.no_grad():
                            pipe.stylize(self.content, Style(images=[self.style]), steps=args.memory_steps,
                                         seed=args.seed, window=args.window, windows_per_batch=wpb)
                        text = peak.gib_text()
                    except torch.cuda.OutOfMemoryError:
                        text = "OOM"
                    except Exception as err:
                        text = f"failed: {type(err).__name__}: {str(err)[:80]}"
                    finally:
                        del pipe
                        if self.cuda:
                            torch.cuda.empty_cache()
                    results[(mode, n, wpb)] = text
                    self.log(f"{mode:<14}{n:>6}{wpb:>15}{text:>20}{time.perf_counter() - t:>9.1f}")
        self.log("")
        self.log("Peak VRAM, GiB (max allocated; reserved in brackets), whole stylize() incl. back-view generation:")
        self.log(f"{'views':>6}{'windows/batch':>15}" + "".join(f"{m:>22}" for m in modes))
        for n in views_list:
            for wpb in wpb_list:
                self.log(f"{n:>6}{wpb:>15}" + "".join(f"{results.get((m, n, wpb), '-'):>22}" for m in modes))


def _ints(text: str) -> List[int]:
    return [int(v) for v in str(text).replace(",", " ").split()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores"


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="small",
                   help="model size: tiny (tests), small (CPU, default), sd15 (the real architecture; needs a GPU)")
    p.add_argument("--views", type=int, default=16, help="views in the turntable (issue setting: 32)")
    p.add_argument("--steps", type=int, default=2, help="timed DDIM steps (after a 1-step warm-up)")
    p.add_argument("--fast-steps", type=int, default=20, help="steps for the fast solvers (dpmpp_2m, unipc, euler)")
    p.add_argument("--device", default=None, help="cuda, cpu, … (default: cuda if available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 elsewhere")
    p.add_argument("--window", type=int, default=8, help="views per view-consistency window (official: 8)")
    p.add_argument("--windows-per-batch", type=int, default=4, help="windows per forward (official loop: 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch; default 1 on the CPU (2 threads on a shared 2-core box gave "
                        "erratic timings), untouched on CUDA; 0 = torch's choice")
    p.add_argument("--variants", nargs="+", default=[",".join(DEFAULT_VARIANTS)],
                   help=f"comma/space separated, from {', '.join(ALL_VARIANTS)}, compiled+<scheduler>")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (TFLOP/s column n/a)")
    p.add_argument("--flop-breakdown", action="store_true",
                   help="only the per-part FLOP table of one step, counted on meta tensors (any size, any machine)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--compile-dynamic", choices=["false", "auto", "true"], default="false",
                   help="false: one graph per shape (fastest kernels); auto: generalise after a shape change")
    p.add_argument("--memory-table", action="store_true", help="peak VRAM table instead of the timing table (CUDA)")
    p.add_argument("--memory-views", default="8,16,32,64")
    p.add_argument("--memory-wpb", default="1,4")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per memory point (peak does not grow with steps)")
    p.add_argument("--no-memory-fp8", action="store_true", help="leave out the offload + fp8 column")
    p.add_argument("--memory-fp8-views", default=None, help="view counts for the fp8 column (default: --memory-views)")
    p.add_argument("--memory-dry-run", action="store_true", help=argparse.SUPPRESS)  # CPU check of the table code


def run(args, out=None) -> int:
    args.compile_dynamic = {"false": False, "auto": None, "true": True}[getattr(args, "compile_dynamic", "false")] \
        if isinstance(getattr(args, "compile_dynamic", "false"), str) else args.compile_dynamic
    for name in ("views", "steps", "fast_steps", "window", "windows_per_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    bench = Bench(args, out)
    threads = getattr(args, "threads", None)
    if threads is None and bench.device.type == "cpu":
        threads = 1
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if args.memory_table:
            bench.memory_table()
            return 0
        if args.flop_breakdown:
            bench.flop_breakdown()
            return 0
        variants = [v for item in args.variants for v in item.replace(",", " ").split()]
        bench.run(variants)
        return 0
    finally:
        torch.set_num_threads(previous)


def _handler(args) -> int:
    return run(args)


def register(subparsers) -> Dict[str, Callable]:
    """Add the ``bench`` command to the CLI's subparsers; returns ``{"bench": handler}``."""
    p = subparsers.add_parser("bench", help="time every speed/memory variant on random weights (see bench/RESULTS.md)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return {"bench": _handler}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
