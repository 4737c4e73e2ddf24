"""``train`` and ``make-tiny-dataset`` subcommands for ``python -m diffstyle360_core``.

``register(subparsers)`` adds both and returns ``{command: handler}``; a handler
takes the parsed ``argparse.Namespace`` and raises ``ValueError``/``OSError`` for
problems the user can fix (the CLI prints those as one ``error:`` line). ``train``
returns its exit code: 0, or 130/143/129 when Ctrl-C/SIGTERM/SIGHUP stopped it
after saving the current step (the line printed says what was kept).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Callable, Dict

from . import main as cli

Handler = Callable[[argparse.Namespace], None]


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a style appearance module on paired multi-view data (accelerate; see README)",
        description="Fine-tune the Style Appearance and view-consistency modules (paper §3.4, supp. §7.1). "
        "Settings come from --config (YAML); the flags below override it. Multi-GPU: "
        "`accelerate launch -m diffstyle360_core train --config C.yaml`.",
    )
    p.add_argument("--config", default=None, help="YAML file with TrainConfig settings (defaults: the paper's recipe)")
    p.add_argument("--weights", default=None, help="weight-set folder holding main/ (or a converted main/ folder)")
    p.add_argument("--data", default=None, help="dataset folder (one folder per sample; README)")
    p.add_argument("--out", default=None, help="output folder: module file, checkpoints, logs, previews")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (paper: 800)")
    p.add_argument("--mode", choices=["style_module", "finetune_appearance"], default=None,
                   help="style_module (paper) or finetune_appearance (Table 2 ablation)")
    p.add_argument("--lr", dest="learning_rate", type=float, default=None, help="AdamW learning rate (paper: 1e-5)")
    p.add_argument("--views", dest="views_per_sample", type=int, default=None, help="target views per step (paper: 16)")
    p.add_argument("--pairing", choices=["paper", "aligned"], default=None, help="Style Fusion value pairing")
    p.add_argument("--mask-mode", dest="mask_mode", choices=["paper", "confined"], default=None,
                   help="Style Fusion mask mode recorded for inference (training itself uses no masks)")
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["auto", "no", "fp16", "bf16"], default=None,
                   help="auto = fp16 on CUDA, no (fp32) elsewhere")
    p.add_argument("--grad-accum", dest="gradient_accumulation_steps", type=int, default=None,
                   help="micro-steps (one sample each) per optimizer step")
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const=True,
                   default=None, help="recompute activations in the backward pass (less memory, ~30%% slower)")
    p.add_argument("--resume", default=None, help="'latest' (newest OUT/checkpoints/step_*) or a checkpoint folder")
    p.add_argument("--resume-anyway", dest="resume_anyway", action="store_const", const=True, default=None,
                   help="resume a checkpoint of another run (other weights, data, seed, learning rate, …); "
                        "without it such a checkpoint is refused, naming what differs")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=None,
                   help="save a resumable state and the module file every N steps (0 = at the end only)")
    p.add_argument("--preview-every", dest="preview_every", type=int, default=None, help="0 = no previews")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N, mps (refused if not usable here); default: what accelerate picks")
    p.add_argument("--print-config", action="store_true", help="print the default configuration as YAML and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_tiny_dataset(sub) -> None:
    p = sub.add_parser("make-tiny-dataset", help="write a tiny valid training dataset (tests, demos)")
    p.add_argument("outdir", help="a new or empty folder")
    p.add_argument("--samples", type=int, default=2, help="sample folders (1-1000)")
    p.add_argument("--views", type=int, default=16, help="target views per sample (1-1024)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels, 32-1024 (the tiny model works at 64)")
    p.add_argument("--seed", type=int, default=0)


OVERRIDES = ("weights", "data", "out", "steps", "mode", "learning_rate", "views_per_sample", "pairing", "mask_mode",
             "mixed_precision", "gradient_accumulation_steps", "gradient_checkpointing", "resume", "resume_anyway",
             "checkpoint_every", "preview_every", "seed", "device")


def config_from_args(args: argparse.Namespace):
    from ..training.config import TrainConfig

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    return config.replace(**{name: getattr(args, name, None) for name in OVERRIDES})


def _require_training_packages() -> None:
    """Training needs packages the nodes do not: say which, instead of an ImportError traceback."""
    import importlib.util

    missing = [name for name, module in (("accelerate", "accelerate"), ("PyYAML", "yaml"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(f"training needs {', '.join(missing)}: pip install -r requirements-train.txt "
                         "(in the pack's folder)")


#: Settings named in training messages → the flags that set them (messages of the library name settings).
TRAIN_FLAGS = {"mixed_precision": "--mixed-precision", "device": "--device", "steps": "--steps", "seed": "--seed",
               "learning_rate": "--lr", "views_per_sample": "--views"}
TINY_FLAGS = {"samples": "--samples", "views": "--views", "size": "--size", "seed": "--seed"}


def _flag_names(message: str, flags: Dict[str, str]) -> str:
    """Name the flag where a message names a setting ("mixed_precision fp16 needs …" → "--mixed-precision …")."""
    for name, flag in flags.items():
        message = re.sub(rf"(?<![^\s(]){name}(?=[\s:]|$)", flag, message)
    return message


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` command: 0 done; 130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP after saving the current step."""
    _require_training_packages()
    from ..training.interrupt import TrainingInterrupted
    from ..training.loop import train

    if getattr(args, "print_config", False):
        from ..training.config import default_config_yaml

        print(default_config_yaml(), end="")
        return 0
    config = config_from_args(args)
    try:
        result = train(config, progress=not getattr(args, "quiet", False))
    except TrainingInterrupted as stopped:
        print(f"\n{stopped}", file=sys.stderr)
        return stopped.exit_code
    except ValueError as err:  # ConfigError, DatasetError, CheckpointError, InputError: one sentence
        raise ValueError(_flag_names(str(err), TRAIN_FLAGS)) from None
    except Exception as err:
        if not (isinstance(err, MemoryError) or cli._is_cuda_oom(err)):
            raise
        where = "GPU memory" if not isinstance(err, MemoryError) else "memory (RAM)"
        raise ValueError(f"out of {where} while training; use --gradient-checkpointing, --mixed-precision bf16 "
                         "or fp16 on a GPU, or fewer --views") from None
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    print(f"trained steps {result.start_step}→{result.final_step} in {result.seconds:.1f}s (last loss {last}); "
          f"wrote {result.module_path} (use: stylize --style-module {result.module_path})")
    return 0


def run_make_tiny_dataset(args: argparse.Namespace) -> None:
    from ..training.dataset import make_tiny_dataset

    start = time.time()
    try:
        root = make_tiny_dataset(args.outdir, samples=args.samples, views=args.views, size=args.size, seed=args.seed)
    except ValueError as err:
        raise ValueError(_flag_names(str(err), TINY_FLAGS)) from None
    except MemoryError:
        raise ValueError("out of memory (RAM) while drawing the tiny dataset; lower --size") from None
    print(f"wrote a tiny dataset ({args.samples} samples × {args.views} views) to {root} in "
          f"{time.time() - start:.1f}s (use as --data {root})")


def register(subparsers) -> Dict[str, Handler]:
    """Add ``train`` and ``make-tiny-dataset`` to an argparse subparsers object; return their handlers."""
    _add_train(subparsers)
    _add_tiny_dataset(subparsers)
    return {"train": run_train, "make-tiny-dataset": run_make_tiny_dataset}


def main(argv=None) -> int:
    """Standalone entry (``python -m diffstyle360_core.cli.train``) until the main CLI wires ``register``."""
    parser = argparse.ArgumentParser(prog="python -m diffstyle360_core.cli.train")
    handlers = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = handlers[args.command](args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
