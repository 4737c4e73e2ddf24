"""Command line: ``python -m diffstyle360_core {stylize,back-view,convert,make-tiny,...}``.

Every command is a thin shell over the library. Everything cheap is checked first
(value ranges, style options, the weight set's config, image and mask files,
device and dtype, the output folder) before any model code is imported or any
weight is loaded. Exit codes: 0 done; 2 a problem the user can fix, printed as one
line ``error: …``; 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (``kill``,
``timeout``, docker), 129 by SIGHUP (a closed terminal), each printed as one line
saying what was kept. Results are written through
:class:`~diffstyle360_core.cli.outputs.RunOutput`: the output folder holds the old or
the new complete result, and a run replaces only the files its manifest proves an
earlier run of the same command wrote.

Other modules plug in more commands: ``diffstyle360_core.cli.train``
provides ``register(subparsers) -> {command: handler}``;
a module that is not there simply adds no command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import options as O
from ..stop_signals import STOP_SIGNALS as ALL_STOP_SIGNALS, install_handlers, restore_handlers
from .outputs import OutputError, RunOutput

EXIT_OK, EXIT_USER, EXIT_INTERRUPTED = 0, 2, 130
#: signals handled like Ctrl-C: the run stops, cleans up and exits 128 + the signal's number
STOP_SIGNALS = tuple(s for s in ALL_STOP_SIGNALS if s != signal.SIGINT)
PLUGINS = ("diffstyle360_core.cli.train", "diffstyle360_core.cli.download", "diffstyle360_core.cli.batch",
           "diffstyle360_core.cli.evaluate")

#: core argument names → the flags that set them (core messages never name flags; ours do)
FLAGS = {
    "tau": "--tau", "steps": "--steps", "cfg": "--cfg", "eta": "--eta", "seed": "--seed", "views": "--views",
    "window": "--window", "overlap": "--overlap", "windows_per_batch": "--windows-per-batch", "alpha": "--alpha",
    "fps": "--fps", "scheduler": "--scheduler", "device": "--device", "dtype": "--dtype", "crop": "--crop",
    "window_mode": "--window-mode", "pairing": "--pairing", "mask_mode": "--mask-mode",
    "guide_frames": "--guide-frames", "content": "--content", "content_back": "--content-back",
    "weights": "--weights",
}


def _flagged(message: str) -> str:
    """Name the flag where a core message starts with the argument's name ("tau must be …")."""
    return re.sub(r"^([a-z_]+)\b", lambda m: FLAGS.get(m.group(1), m.group(1)), message, count=1)


class _State:
    """What the running command has done so far; read by the Ctrl-C and out-of-memory messages."""

    def __init__(self):
        self.run: Optional[RunOutput] = None
        self.phase: Optional[str] = None
        self.line_open = False  # a progress bar is mid-line
        self.interrupt_note: Optional[str] = None
        self.oom_hint = "use --dtype fp16"


STATE = _State()


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Python is, like Ctrl-C's ``KeyboardInterrupt`` (which every cleanup handles)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def _handle_stop_signals() -> Dict[int, object]:
    """Route SIGTERM and SIGHUP through the Ctrl-C path; a signal the caller ignores (``nohup``) stays ignored.

    Returns the previous handlers (main thread only; elsewhere nothing changes)."""
    return install_handlers(STOP_SIGNALS, _raise_stopped)


def _exit_code(err: BaseException) -> int:
    signum = getattr(err, "signum", None)
    return 128 + int(signum) if signum else EXIT_INTERRUPTED


# --------------------------------------------------------------------------- #
# progress
# --------------------------------------------------------------------------- #
class ProgressBar:
    """One text bar per phase of a run, driven by the core's ``ProgressEvent``.

    ``labels`` maps a phase ("back views", "turntable", "decode") to what it runs,
    e.g. "back views (content + style 1, one batched run)".
    """

    def __init__(self, labels: Optional[Dict[str, str]] = None, stream=None, width: int = 30):
        self.labels, self.stream, self.width = labels or {}, stream or sys.stderr, width
        self.phase, self.start = None, time.time()

    def __call__(self, event) -> None:
        if event.phase != self.phase:
            self.phase = STATE.phase = event.phase
        done = int(self.width * event.step / max(1, event.total))
        label = self.labels.get(event.phase, event.phase)
        self.stream.write(f"\r{label} [{'#' * done}{'.' * (self.width - done)}] {event.step}/{event.total} "
                          f"(overall {event.overall_step}/{event.overall_total}) {time.time() - self.start:5.1f}s")
        STATE.line_open = event.step < event.total
        if not STATE.line_open:
            self.stream.write("\n")
            self.start = time.time()  # the next phase's clock starts when this one ends
        self.stream.flush()


# --------------------------------------------------------------------------- #
# parser
# --------------------------------------------------------------------------- #
def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="folder with main/, back_view/ and cam_condition/ (see README)")
    p.add_argument("--out", required=True, help="output folder (one complete run, or left as it was)")
    p.add_argument("--seed", type=int, default=O.SEED.default, help=O.SEED.hint)
    p.add_argument("--steps", type=int, default=O.STEPS.default, help=O.STEPS.hint)
    p.add_argument("--cfg", type=float, default=O.CFG.default, help=O.CFG.hint)
    p.add_argument("--eta", type=float, default=O.ETA.default, help=O.ETA.hint)
    p.add_argument("--scheduler", choices=list(O.SCHEDULERS), default=O.SCHEDULERS[0],
                   help="ddim = the official sampler (exact); the others are faster solvers, not exact")
    p.add_argument("--crop", choices=list(O.CROP_MODES), default="center",
                   help="center: centre-crop non-square images to a square; none: stretch them (official)")
    p.add_argument("--transparent", choices=list(O.ALPHA_MODES), default="drop",
                   help="transparent images: drop the alpha channel (official) or composite onto white/black")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps, cpu (default: cuda, then mps, else cpu)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 elsewhere), fp16, bf16 or fp32")
    p.add_argument("--offload", action="store_true",
                   help="keep only the model in use on the GPU (the other waits in CPU memory): less VRAM, same result")
    p.add_argument("--fp8-weights", action="store_true",
                   help="keep Linear/Conv weights in 8 bits (half of fp16's weight memory; the VAE excepted), "
                        "computed in --dtype: approximate, for 6-8 GB cards")
    p.add_argument("--compile", nargs="?", const="regional", default="off", choices=list(O.COMPILE_CHOICES),
                   help="torch.compile (same result within rounding; pays off for long runs): regional = the "
                        "repeated blocks (~2 min once), full = each model call as one graph (longer compile), "
                        "cudagraphs = full + CUDA graph replay (GPU)")


DESCRIPTION = """DiffStyle360: 360° head stylization from one portrait and one style image.

Exit codes: 0 done, 2 a problem you can fix (one line "error: ..."), 130 interrupted
(Ctrl-C), 143 stopped by SIGTERM, 129 by SIGHUP.
An output folder holds complete runs: files appear together when the run is done and
replace exactly the files the last run of the same command wrote there (recorded in a
hidden manifest); any other file is never deleted or overwritten."""


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The full parser; ``plugins=False`` leaves out the plug-in commands (their imports can be slow)."""
    parser = argparse.ArgumentParser(prog="python -m diffstyle360_core", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stylize", help="stylized 360° turntable of a portrait (no --style: plain novel views)")
    _add_sampler_args(p)
    p.add_argument("--content", required=True, help="portrait (aligned head crop)")
    p.add_argument("--content-back", default=None, help="back of the head (generated if omitted)")
    p.add_argument("--style", action="append", default=[],
                   help="style image; repeat with --alpha to blend two; omit for plain DiffPortrait360 views")
    p.add_argument("--alpha", type=float, default=None, help="interpolation α between two --style images (§4)")
    p.add_argument("--style-back", action="append", default=None, help="back view of each --style (generated if omitted)")
    p.add_argument("--style-mask", default=None, help="mask image on the style image: where to stylize (white)")
    p.add_argument("--style-back-mask", default=None, help="mask on the style's back view (default: none)")
    p.add_argument("--style-module", default=None, help="DiffStyle360 style module .safetensors (else training-free)")
    p.add_argument("--views", type=int, default=None,
                   help="number of views, at one even step of the set's renders, the front (yaw 0) included "
                        "(default: every view of the set or of --yaw-range)")
    p.add_argument("--yaw-range", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="only views with yaw in [START, END] degrees (wraps past 360); --views picks that many "
                        "of them at one even step, with the front when the range holds it")
    p.add_argument("--conditions", default=None, help="your own folder of condition images (default: from --weights)")
    p.add_argument("--guide-frames", default=None,
                   help="folder with one guide frame per view, or per view of the full set (3D-aware noise)")
    p.add_argument("--tau", type=float, default=O.TAU.default, help="key scale τ (§3.5); paper range 1.00–1.10")
    p.add_argument("--pairing", choices=list(O.PAIRINGS), default=None,
                   help="values paired with the fused keys: the paper's literal order or each key with its own "
                        "(default: what --style-module was trained with, else paper)")
    p.add_argument("--mask-mode", choices=list(O.MASK_MODES), default=None,
                   help="paper: mask the keys as the paper does (style may leak); confined: keep style inside the mask "
                        "(default: what --style-module was trained with, else paper)")
    p.add_argument("--window", type=int, default=None, help="views per view-consistency window (trained: 8)")
    p.add_argument("--window-mode", choices=list(O.WINDOW_MODES), default=O.WINDOW_MODES[0])
    p.add_argument("--overlap", type=int, default=O.OVERLAP.default,
                   help="window overlap in circular mode (checked in every mode: 0 … window-1)")
    p.add_argument("--windows-per-batch", type=int, default=O.WINDOWS_PER_BATCH.default, help="lower to save VRAM")
    p.add_argument("--fps", type=int, default=O.FPS.default, help="turntable frames per second")

    p = sub.add_parser("back-view", help="back-of-head image from a front portrait")
    _add_sampler_args(p)
    p.add_argument("--content", required=True, help="front portrait")

    p = sub.add_parser("convert", help="official DiffPortrait360 .th → our safetensors folder")
    p.add_argument("--checkpoint", required=True, help="model_state-340000.th or back_head-230000.th")
    p.add_argument("--out", required=True, help="output folder (e.g. WEIGHTS/main or WEIGHTS/back_view)")
    p.add_argument("--kind", choices=["main", "back_view"], default=None, help="checked against the file")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default=None, help="store weights in this dtype")

    p = sub.add_parser("make-tiny", help="random-weight model set for demos, tests and memory/speed checks")
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["tiny", "small", "sd15"], default="tiny",
                   help="tiny (seconds), small (SD1.5 topology at CPU widths) or sd15 (the real shapes: ~11 GB in fp16)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="store weights in this dtype")

    commands = dict(COMMANDS)
    for module in PLUGINS if plugins else ():
        commands.update(_register_plugin(module, sub))
    parser.set_defaults(_commands=commands)
    return parser


def _register_plugin(module: str, sub) -> Dict[str, Callable]:
    """``module.register(subparsers) -> {command: handler}``; a module that fails to import adds nothing."""
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # a broken plug-in must not take the other commands down
        print(f"warning: the commands of {module} are unavailable ({type(err).__name__}: {err})", file=sys.stderr)
        return {}
    register = getattr(mod, "register", None)
    return dict(register(sub) or {}) if callable(register) else {}


# --------------------------------------------------------------------------- #
# cheap checks (no model code imported, no weights loaded)
# --------------------------------------------------------------------------- #
def _require_folder(value, flag: str, example: str) -> None:
    """An empty folder name would mean the current folder: never what was asked for."""
    if not str(value).strip():
        raise O.InputError(f"{flag} is empty; give an output folder, e.g. {example}")


def _check_sampler(args) -> "O.SamplerOptions":
    _require_folder(args.out, "--out", "--out out/")
    return O.SamplerOptions(args.seed, args.steps, args.cfg, args.eta, args.scheduler).checked()  # main() names flags


def _main_config(weights: str) -> Optional[dict]:
    """``weights/main/config.json`` as a dict, read without loading anything (None if absent or unreadable:
    the loader reports those cases with its own messages)."""
    path = Path(weights, "main", "config.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_stylize_options(args) -> dict:
    """Every number, choice and combination of stylize's options; returns the checked values."""
    sampler = _check_sampler(args)
    tau = O.TAU.check(args.tau, "--tau")
    if args.views is not None:
        O.VIEWS.check(args.views, "--views")
    O.FPS.check(args.fps, "--fps")
    if args.alpha is not None:
        O.ALPHA.check(args.alpha, "--alpha")
    for yaw in args.yaw_range or ():
        O.YAW.check(yaw, "--yaw-range")
    config = _main_config(args.weights) or {}
    temporal = config.get("temporal") if isinstance(config.get("temporal"), dict) else {}
    max_views, trained = temporal.get("max_views"), temporal.get("window")
    windows = O.WindowOptions(args.window, args.window_mode, args.overlap, args.windows_per_batch).checked(
        max_window=max_views if isinstance(max_views, int) else None,
        trained_window=trained if isinstance(trained, int) else None)
    styles = args.style
    if len(styles) > 2:
        raise O.InputError(f"give one --style, or two with --alpha to blend them; got {len(styles)}")
    if len(styles) == 2 and args.alpha is None:
        raise O.InputError("two --style images are blended: give --alpha α in [0, 1] (0 = first, 1 = second)")
    if args.alpha is not None and len(styles) != 2:
        raise O.InputError("--alpha blends two styles: give exactly two --style images")
    if not styles:
        for flag, value in (("--style-back", args.style_back), ("--style-mask", args.style_mask),
                            ("--style-back-mask", args.style_back_mask), ("--style-module", args.style_module)):
            if value:
                raise O.InputError(f"{flag} needs a --style image (without --style the run gives plain "
                                   "DiffPortrait360 novel views)")
    if args.style_back is not None and len(args.style_back) != len(styles):
        raise O.InputError(f"give one --style-back per --style ({len(args.style_back)} for {len(styles)})")
    if args.style_back_mask and not args.style_mask:
        raise O.InputError("--style-back-mask needs --style-mask (the mask on the style's front image)")
    for flag, folder in (("--guide-frames", args.guide_frames), ("--conditions", args.conditions)):
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} folder {folder} not found")
    if args.style_module and not Path(args.style_module).is_file():
        raise FileNotFoundError(f"--style-module file {args.style_module} not found")
    return {"sampler": sampler, "tau": tau, "windows": windows}


def _read_images(args, size: int) -> dict:
    """Decode every image and mask file once, now (after torch, before model code): a bad file fails in seconds."""
    from ..images import load_image, load_mask, read_mask_file

    def img(path, flag):
        return load_image(path, name=flag, alpha=args.transparent)

    content = img(args.content, "--content")
    out = {"content": content,
           "content_back": img(args.content_back, "--content-back") if getattr(args, "content_back", None) else None}
    styles = [img(p, "--style") for p in getattr(args, "style", [])]
    backs = [img(p, "--style-back") for p in (getattr(args, "style_back", None) or [])]
    masks = {}
    for key, flag, path, image in (("mask", "--style-mask", getattr(args, "style_mask", None), styles[:1]),
                                   ("back_mask", "--style-back-mask", getattr(args, "style_back_mask", None),
                                    backs[:1])):
        masks[key] = None
        if path:
            masks[key] = read_mask_file(path, name=flag)  # decoded once; the pipeline resizes this image
            hw = (image[0].height, image[0].width) if image else None
            load_mask(masks[key], size, name=flag, crop=args.crop, match_hw=hw)
    out.update(styles=styles, backs=backs, masks=masks)
    return out


def _device_dtype(args):
    from ..devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)  # main() puts the flag name in front of a core message
    return device, resolve_dtype(args.dtype, device)


def _open_output(args, kind: str, inputs: list, planned: List[str]) -> RunOutput:
    """Lock, test-write and check ``--out`` before any model is loaded: nothing of ours may be touched."""
    run = RunOutput(args.out, kind=kind, inputs=inputs, planned=planned)
    STATE.run = run
    return run.open()


def _file_inputs(args, flags: Dict[str, str]) -> list:
    """(flag, value) of every file or folder option; RunOutput expands lists and drops the options not given."""
    return [(flag, getattr(args, attr, None)) for attr, flag in flags.items()]


# --------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------- #
def _placement(args, device):
    """(where models load, placement): with --offload they wait on the CPU and move to the GPU in turn."""
    if not getattr(args, "offload", False):
        return device, None
    from ..acceleration import SequentialOffload

    return "cpu", SequentialOffload(device)


def _prepare_models(args, dtype, *models) -> None:
    """The opt-in speed/memory switches, in the order that works: fp8 storage first, then compiling."""
    from ..acceleration import apply_compile_choice, store_weights_fp8
    from ..devices import FP8_SKIP

    for model in models:
        if model is None:
            continue
        if args.fp8_weights:
            store_weights_fp8(model, dtype, skip=FP8_SKIP)
        if args.compile != "off":
            apply_compile_choice(model, args.compile)


def _stylize(args) -> None:
    checked = _check_stylize_options(args)  # no torch yet
    windows = checked["windows"]
    device, dtype = _device_dtype(args)
    STATE.oom_hint = (f"lower --windows-per-batch (now {windows.windows_per_batch}), then --window or --views"
                      + (", or use --dtype fp16" if dtype != _torch().float16 else "")
                      + ("" if args.offload else ", or add --offload")
                      + ("" if args.fp8_weights else ", then --fp8-weights"))
    from .. import loading

    need_backs = bool(args.content_back is None or (args.style and not args.style_back))
    if need_backs:
        loading.model_folder(args.weights, "back_view")  # clear message for a wrong --weights, before loading
    size = loading.read_config(args.weights, "main").image_size
    images = _read_images(args, size)
    full = loading.load_cameras(args.weights, size, conditions=args.conditions)
    cameras, guides = _select_cameras(args, full, size)

    from ..cameras import find_condition_folder

    inputs = _file_inputs(args, {"content": "--content", "content_back": "--content-back", "style": "--style",
                                 "style_back": "--style-back", "style_mask": "--style-mask",
                                 "style_back_mask": "--style-back-mask", "style_module": "--style-module",
                                 "guide_frames": "--guide-frames", "conditions": "--conditions"})
    inputs.append(("--weights", loading.model_folder(args.weights, "main")))
    if need_backs:
        inputs.append(("--weights", loading.model_folder(args.weights, "back_view")))
    if not args.conditions:
        inputs.append(("--weights", find_condition_folder(loading.weight_set_root(args.weights))))
    run = _open_output(args, "stylize", inputs, _stylize_names(len(cameras), len(args.style)))
    with run:
        from ..pipeline import DiffStyle360Pipeline

        load_device, placement = _placement(args, device)
        main = loading.load_main(args.weights, device=load_device, dtype=dtype, style_module=args.style_module)
        back = loading.load_back_view(args.weights, device=load_device, dtype=dtype) if need_backs else None
        _prepare_models(args, dtype, main, back)
        pipe = DiffStyle360Pipeline(main, back, full, placement=placement)  # back views: the set's view nearest 180°
        made = (["content"] if args.content_back is None else []) + (
            [f"style {k + 1}" for k in range(len(args.style))] if args.style and not args.style_back else [])
        bar = ProgressBar({"back views": f"back views ({' + '.join(made)}, one batched run)",
                           "turntable": f"turntable ({len(cameras)} views)",
                           "decode": f"decode ({len(cameras)} views)"})
        result = _turntable(pipe, args, checked, images, cameras, guides, progress=bar)
        paths = _save_run(run, result, fps=args.fps)
        run.commit()
    print(f"wrote {len(result.views)} views to {args.out}: {paths.get('gif') or paths['png'][0]}")


def _select_cameras(args, full, size: int):
    """(the views a run renders: --yaw-range / --views of the ``full`` set, their --guide-frames or None)."""
    from ..cameras import load_condition_set, select_views

    cameras = full
    if args.yaw_range is not None or args.views is not None:  # the Turntable Camera node's rule, one for all
        cameras = select_views(full, yaw_range=None if args.yaw_range is None else tuple(args.yaw_range),
                               views=args.views)
    guides = None
    if args.guide_frames:
        frames = load_condition_set(args.guide_frames, size)
        if len(frames) == len(full) and len(frames) != len(cameras):
            frames = frames.select(cameras.indices)  # a full-turntable guide video: keep the chosen views
        if len(frames) != len(cameras):
            raise O.InputError(f"--guide-frames has {len(frames)} frames for {len(cameras)} views; give one per "
                               "view, or one per view of the whole condition set")
        guides = (frames.images + 1) / 2
    return cameras, guides


def _turntable(pipe, args, checked: dict, images: dict, cameras, guides, *, content_back=None, style_backs=None,
               progress=None):
    """One stylize run of ``pipe`` with checked options and read images (shared by stylize and batch).

    ``content_back`` / ``style_backs``: back views already at hand (e.g. cached), instead of the files'.
    """
    from ..pipeline import Style, alpha_weights

    sampler, windows = checked["sampler"], checked["windows"]
    style = None
    if args.style:
        style = Style(images=images["styles"],
                      weights=list(alpha_weights(args.alpha)) if args.alpha is not None else None,
                      backs=style_backs or images["backs"] or None, mask=images["masks"]["mask"],
                      back_mask=images["masks"]["back_mask"])
    return pipe.stylize(
        images["content"], style, content_back=content_back if content_back is not None else images["content_back"],
        cameras=cameras, tau=checked["tau"], pairing=args.pairing, mask_mode=args.mask_mode, seed=sampler.seed,
        steps=sampler.steps, cfg=sampler.cfg, eta=sampler.eta, scheduler=sampler.scheduler, window=windows.window,
        window_mode=windows.mode, overlap=windows.overlap, windows_per_batch=windows.windows_per_batch,
        guide_frames=guides, crop=args.crop, progress=progress,
    )


CONTENT_BACK = "back_views/content_back"


def _style_back_name(k: int, j: int) -> str:
    return f"back_views/style{k + 1}_back_{j:03d}.png"


def _stylize_names(views: int, styles: int) -> List[str]:
    """Every file :func:`_save_run` writes: the views, the turntable, the content back, one back per style image
    (the blended images of ``--alpha`` are one style)."""
    from .saving import view_names

    return (view_names(views) + view_names(1, prefix=CONTENT_BACK, formats=("png",))
            + [_style_back_name(0, j) for j in range(styles)])


def _save_run(run: RunOutput, result, *, fps: int = O.FPS.default) -> dict:
    """A turntable's files into ``run``: views, turntable.gif/.webp, and back_views/ (content and style backs)."""
    from .saving import save_views

    paths = save_views(result.views, run, fps=fps)
    save_views(result.content_back, run, prefix=CONTENT_BACK, formats=("png",))
    for k, backs in enumerate(getattr(result, "style_backs", None) or []):
        for j, b in enumerate(backs):
            run.write(_style_back_name(k, j), _png_writer(b))
    return paths


def _png_writer(view):
    from ..images import tensor_to_pil

    image = tensor_to_pil(view)
    return image.save


def _back_view(args) -> None:
    sampler = _check_sampler(args)  # no torch yet
    device, dtype = _device_dtype(args)
    STATE.oom_hint = "use --dtype fp16" if dtype != _torch().float16 else "use a GPU with more memory, or --device cpu"
    from .. import loading

    loading.model_folder(args.weights, "back_view")
    size = loading.read_config(args.weights, "back_view").image_size
    images = _read_images(args, size)
    cameras = loading.load_cameras(args.weights, size)
    from ..cameras import find_condition_folder

    inputs = [("--content", args.content), ("--weights", loading.model_folder(args.weights, "back_view")),
              ("--weights", find_condition_folder(loading.weight_set_root(args.weights)))]
    run = _open_output(args, "back-view", inputs, [BACK_VIEW])
    with run:
        from ..pipeline import DiffStyle360Pipeline

        load_device, placement = _placement(args, device)
        back_model = loading.load_back_view(args.weights, device=load_device, dtype=dtype)
        _prepare_models(args, dtype, back_model)
        pipe = DiffStyle360Pipeline(None, back_model, cameras, placement=placement)
        back = pipe.back_view(images["content"], seed=sampler.seed, steps=sampler.steps, cfg=sampler.cfg,
                              eta=sampler.eta, scheduler=sampler.scheduler, crop=args.crop,
                              progress=ProgressBar({"back views": "back view"}))
        run.write(BACK_VIEW, _png_writer(back))
        run.commit()
    print(f"wrote back view to {Path(args.out) / BACK_VIEW}")


BACK_VIEW = "back_000.png"


def _convert(args) -> None:
    _require_folder(args.out, "--out", "--out WEIGHTS/main")
    STATE.interrupt_note = f"interrupted; {args.out} may hold an incomplete conversion: run convert again"
    from ..weights import convert_checkpoint

    from ..devices import DTYPES

    dtype = DTYPES.get(args.dtype)
    folder = convert_checkpoint(args.checkpoint, args.out, kind=args.kind, dtype=dtype)
    print(f"converted {args.checkpoint} → {folder}")


def _make_tiny(args) -> None:
    _require_folder(args.outdir, "the output folder name", "make-tiny tiny/")
    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise O.InputError(f"{args.outdir} is a file; give a folder for the random model set")
    STATE.interrupt_note = f"interrupted; {args.outdir} may hold an incomplete set: run make-tiny again"
    from ..tiny import make_tiny

    start = time.time()
    make_tiny(args.outdir, seed=args.seed, size=args.size, dtype=args.dtype)
    print(f"wrote {args.size} model set to {args.outdir} in {time.time() - start:.1f}s (use as --weights {args.outdir})")


def _torch():
    import torch

    return torch


COMMANDS: Dict[str, Callable] = {"stylize": _stylize, "back-view": _back_view, "convert": _convert,
                                 "make-tiny": _make_tiny}


# --------------------------------------------------------------------------- #
# entry point
# --------------------------------------------------------------------------- #
def _interrupted_line(signum: Optional[int] = None) -> str:
    """One line: how the run was stopped and what it kept."""
    how = f"stopped by {signal.Signals(signum).name}" if signum else "interrupted"
    run = STATE.run
    if run is not None and run.committed:
        return f"{how}; kept the complete results in {run.folder}"
    if STATE.interrupt_note:
        return re.sub(r"^interrupted", how, STATE.interrupt_note)
    where = f" ({run.folder} left as it was)" if run is not None else ""
    return f"{how}; nothing written{where}"


def _say(line: str) -> None:
    """Print to stderr; a terminal that is gone (SIGHUP) must not turn the exit into a traceback."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _is_cuda_oom(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(err, oom)


def main(argv: Optional[List[str]] = None) -> int:
    global STATE
    STATE = _State()
    previous = _handle_stop_signals()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        ours = next((a for a in argv if not a.startswith("-")), None) in COMMANDS
        try:
            args = build_parser(plugins=not ours).parse_args(argv)
        except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
            return int(exit_.code or 0)
        try:
            code = args._commands[args.command](args)
            return int(code) if isinstance(code, int) else EXIT_OK
        except OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER
        except (ValueError, OSError) as err:  # InputError is a ValueError; OSError: missing/unreadable files
            print(f"error: {_flagged(str(err))}", file=sys.stderr)
            return EXIT_USER
        except MemoryError:
            print("error: out of memory (RAM); lower --views or --windows-per-batch, or use a GPU", file=sys.stderr)
            return EXIT_USER
        except Exception as err:
            if not _is_cuda_oom(err):
                raise
            where = f" during {STATE.phase}" if STATE.phase else ""
            print(f"{chr(10) if STATE.line_open else ''}error: out of GPU memory{where}; {STATE.oom_hint}",
                  file=sys.stderr)
            return EXIT_USER
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP (Stopped)
        line = _interrupted_line(getattr(err, "signum", None))
        _say(f"\n{line}" if STATE.line_open else line)
        return _exit_code(err)
    finally:
        try:
            if STATE.run is not None:
                STATE.run.close()
        finally:
            restore_handlers(previous)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as err:  # a second signal while the first was handled
        sys.exit(_exit_code(err))
