"""Training configuration: one dataclass, the paper's recipe as defaults, YAML in and out.

Defaults follow supplementary §7.1 and the DiffPortrait360 training code
(``/work/shared/reference/diffportrait360-facts.md`` §6):

* trainable: the Style Appearance Module (initialised from the frozen content
  module, §3.2) and the view-consistency modules; everything else frozen;
* AdamW, lr 1e-5, weight decay 0 (facts §6), gradient clipping at 0.5 (facts §6);
* 800 iterations; one sample of 16 target views per step (= 2 windows of 8
  through the view-consistency modules, as they were trained, facts §4);
* ε-prediction MSE on the stylized target views;
* condition dropout 0: DiffPortrait360's multi-view stage drops nothing
  (``control_dropout`` 0, facts §6), and CFG's unconditional branch
  (no references, no pose control) is used untrained at inference; set
  ``condition_dropout`` > 0 to train that branch too (drops both together,
  exactly as the inference unconditional branch runs);
* key scale τ = 1 while training (§3.5 introduces τ at inference only).

``mode: finetune_appearance`` is the ablation row "+ Fine-tuning" of Table 2:
one shared appearance module fine-tuned on content and style, no separate style
module.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .. import options as O
from ..options import MASK_MODES, PAIRINGS, InputError, InputTypeError, check_choice

MODES = ("style_module", "finetune_appearance")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


class ConfigError(InputError):
    """A training configuration the user must fix (unknown key, bad value); the message says which."""


@dataclass
class TrainConfig:
    # where things are
    weights: Optional[str] = None  # weight-set folder (holds main/); make-tiny output for tests
    data: Optional[str] = None  # dataset folder (see README "Train your own style module")
    out: Optional[str] = None  # output folder: checkpoint, accelerate states, logs, previews

    # what is trained (§3.2, §3.4, Table 2)
    mode: str = "style_module"
    pairing: str = "paper"  # Style Fusion Attention value pairing, stored in the checkpoint
    mask_mode: str = "paper"  # stored in the checkpoint (training uses no masks)
    tau: float = 1.0  # key scale while training; inference default stays 1.05

    # optimisation (supplementary §7.1, facts §6)
    steps: int = 800
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 0.5
    gradient_accumulation_steps: int = 1
    condition_dropout: float = 0.0
    seed: int = 0

    # views per step (supplementary §7.1: batch 16 = the views of one generation)
    views_per_sample: int = 16
    view_stride: int = 1  # take every k-th view of a sample's sequence
    window: Optional[int] = None  # views per view-consistency window; None = the model's trained window (8)

    # machinery
    mixed_precision: str = "auto"  # auto = fp16 on CUDA, no elsewhere
    gradient_checkpointing: bool = False
    num_workers: int = 0
    checkpoint_every: int = 100  # accelerate state (resumable) every N steps; 0 = only at the end
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # "latest" or a checkpoint folder
    resume_anyway: bool = False  # resume a checkpoint of another run (other weights, data, seed, lr, …) all the same
    log_every: int = 1
    preview_every: int = 100  # 0 = no previews
    preview_views: int = 4
    preview_steps: int = 10
    preview_cfg: float = 3.0
    device: Optional[str] = None  # None = accelerate's choice (cuda when present); "cpu" forces the CPU

    extra: Dict[str, Any] = field(default_factory=dict, repr=False)  # ignored, kept (e.g. notes)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names - {'extra'}))}"
            )
        return cls(**dict(data)).checked(source)

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        import yaml

        p = Path(os.fspath(path)).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        return cls.from_dict(data, source=str(p))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path) -> None:
        import yaml

        from ..files import write_text_atomic

        write_text_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes) -> "TrainConfig":
        """A checked copy with ``changes`` applied; ``None`` values are ignored (unset CLI flags)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes).checked("overrides")

    # ------------------------------------------------------------ validation
    def checked(self, source: str = "config") -> "TrainConfig":
        def fail(msg: str):
            raise ConfigError(f"{source}: {msg}")

        def integer(name: str, low: int, high: Optional[int] = None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                    setattr(self, name, value)
                else:
                    fail(f"{name} must be a whole number, got {value!r}")
            if value < low or (high is not None and value > high):
                fail(f"{name} must be in [{low}, {high if high is not None else '∞'}], got {value}")

        def number(name: str, low: float, high: float, *, allow_none: bool = False, open_low: bool = False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"{name} must be a finite number, got {value!r}")
            if value < low or value > high or (open_low and value == low):
                fail(f"{name} must be in {'(' if open_low else '['}{low}, {high}], got {value}")
            setattr(self, name, float(value))

        def choice(name: str, choices):
            try:
                check_choice(name, getattr(self, name), choices)
            except (InputError, InputTypeError) as err:
                fail(str(err))

        def ranged(name, option_range):  # the inference option's own range (diffstyle360_core.options)
            try:
                setattr(self, name, option_range.check(getattr(self, name), name))
            except (InputError, InputTypeError) as err:
                fail(str(err))

        for name in ("weights", "data", "out", "resume", "device"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                fail(f"{name} must be a path string, got {value!r}")
            if value is not None:
                setattr(self, name, os.fspath(value))
        choice("mode", MODES)
        choice("pairing", PAIRINGS)
        choice("mask_mode", MASK_MODES)
        choice("mixed_precision", MIXED_PRECISION)
        ranged("tau", O.TAU)
        integer("steps", 1)
        number("learning_rate", 0.0, 1.0, open_low=True)
        number("adam_beta1", 0.0, 1.0)
        number("adam_beta2", 0.0, 1.0)
        number("adam_epsilon", 0.0, 1.0, open_low=True)
        number("weight_decay", 0.0, 10.0)
        number("max_grad_norm", 0.0, 1e6, allow_none=True, open_low=True)
        integer("gradient_accumulation_steps", 1)
        number("condition_dropout", 0.0, 1.0)
        integer("seed", 0, 2**32 - 1)
        integer("views_per_sample", 1, 1024)
        integer("view_stride", 1, 1024)
        if self.window is not None:
            ranged("window", O.WINDOW)
        integer("num_workers", 0, 64)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        integer("log_every", 1)
        integer("preview_every", 0)
        integer("preview_views", 1, 64)
        ranged("preview_steps", O.STEPS)
        ranged("preview_cfg", O.CFG)
        for name in ("gradient_checkpointing", "resume_anyway"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            fail("extra must be a mapping")
        return self

    def require_paths(self) -> None:
        missing = [n for n in ("weights", "data", "out") if getattr(self, n) is None]
        if missing:
            raise ConfigError(f"training needs {', '.join(missing)}: set them in the config (YAML file or arguments)")


def default_config_yaml() -> str:
    """The defaults as a commented-free YAML document (``train --print-config``)."""
    import yaml

    data = TrainConfig().to_dict()
    data.pop("extra")
    return yaml.safe_dump(data, sort_keys=False)
