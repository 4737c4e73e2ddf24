"""Every user-facing option's range, default and check, in one place.

The CLI, the ComfyUI nodes and the library read their widgets, defaults and
validation from here, so a range cannot differ between entry points. Checks
accept Python and numpy scalars (and 0-d tensors), refuse bools, strings and
sequences, and raise :class:`InputError` / :class:`InputTypeError` with a
message that names the argument and says what to do.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np


class InputError(ValueError):
    """A user-fixable problem with an argument or input; the message says what to do."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (a string, bool or list where a number is expected, …)."""


def _scalar(name: str, value: Any) -> Any:
    """Unwrap numpy / 0-d tensor scalars; refuse everything that is not a real number."""
    if hasattr(value, "ndim") and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy 0-d arrays and 0-d torch tensors
    if isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be a number, got the boolean {value!r}")
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a number, got {type(value).__name__} {value!r:.60}")
    return value


@dataclass(frozen=True)
class NumberRange:
    """A numeric option: its default, inclusive bounds and why they are what they are."""

    name: str
    default: Union[int, float]
    low: Union[int, float]
    high: Union[int, float]
    integer: bool = False
    hint: str = ""

    def check(self, value: Any, name: Optional[str] = None) -> Union[int, float]:
        """``value`` as a plain int/float inside the range, else :class:`InputError`."""
        name = name or self.name
        value = _scalar(name, value)
        if self.integer:
            if isinstance(value, float):
                if not math.isfinite(value) or value != int(value):
                    raise InputTypeError(f"{name} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if not self.low <= value <= self.high:
            hint = f" {self.hint}" if self.hint else ""
            raise InputError(f"{name} must be in [{self.low}, {self.high}], got {value!r}.{hint}")
        return value


TAU = NumberRange("tau", 1.05, 0.5, 2.0, hint="The paper uses 1.00-1.10 (default 1.05, §3.5).")
PAPER_TAU_RANGE = (1.00, 1.10)
STEPS = NumberRange("steps", 50, 1, 1000, True, "The official sampler uses 50 DDIM steps.")
CFG = NumberRange("cfg", 3.0, 0.0, 30.0, hint="The official sampler uses 3 (1 skips the unconditional pass).")
ETA = NumberRange("eta", 0.5, 0.0, 1.0, hint="The official sampler uses 0.5.")
SEED = NumberRange("seed", 42, 0, 2**64 - 1, True, "Any integer from 0 to 2**64-1.")
VIEWS = NumberRange("views", 32, 1, 1024, True, "The official turntable has 32 views.")
WINDOW = NumberRange("window", 8, 1, 24, True, "The view-consistency modules were trained on 8 views.")
OVERLAP = NumberRange("overlap", 4, 0, 23, True, "Overlap of circular windows, at most window-1.")
WINDOWS_PER_BATCH = NumberRange("windows_per_batch", 4, 1, 64, True, "Lower it to save GPU memory.")
ALPHA = NumberRange("alpha", 0.5, 0.0, 1.0, hint="0 = first style, 1 = second style (§4).")
FPS = NumberRange("fps", 10, 1, 60, True, "The official turntable plays at 10 fps.")
DECODE_CHUNK = NumberRange("decode_chunk", 4, 1, 64, True, "Views decoded at once by the VAE.")
YAW = NumberRange("yaw", 0.0, -360.0, 720.0, hint="Degrees; 0 = front, 180 = back.")

#: Relative tolerance on a mask's aspect ratio versus its style image (and a layer's token grid).
ASPECT_TOL = 0.02

#: "ddim" is the official sampler, exact; the others are faster solvers, not exact.
SCHEDULERS = ("ddim", "dpmpp_2m", "unipc", "euler")
PAIRINGS = ("paper", "aligned")
MASK_MODES = ("paper", "confined")
WINDOW_MODES = ("independent", "circular")
CROP_MODES = ("center", "none")
#: Transparent images: drop the alpha channel (as the official code) or composite onto white / black.
ALPHA_MODES = ("drop", "white", "black")
#: torch.compile choices: off, the repeated blocks, each model call as one graph, that graph replayed as a CUDA graph.
COMPILE_CHOICES = ("off", "regional", "full", "cudagraphs")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise InputTypeError(f"{name} must be one of {tuple(choices)}, got {type(value).__name__} {value!r:.60}")
    if value not in choices:
        raise InputError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class SamplerOptions:
    """How one denoising run samples: the official DDIM defaults (facts §1)."""

    seed: int = SEED.default
    steps: int = STEPS.default
    cfg: float = CFG.default
    eta: float = ETA.default
    scheduler: str = SCHEDULERS[0]

    def checked(self) -> "SamplerOptions":
        return SamplerOptions(
            seed=SEED.check(self.seed),
            steps=STEPS.check(self.steps),
            cfg=CFG.check(self.cfg),
            eta=ETA.check(self.eta),
            scheduler=check_choice("scheduler", self.scheduler, SCHEDULERS),
        )


@dataclass(frozen=True)
class WindowOptions:
    """Which views go through the view-consistency modules together, and how many windows per forward."""

    window: Optional[int] = None  # None: the window the modules were trained with
    mode: str = WINDOW_MODES[0]
    overlap: Optional[int] = None  # None: half the window (4 for the trained 8); always checked when given
    windows_per_batch: int = WINDOWS_PER_BATCH.default

    def checked(self, max_window: Optional[int] = None, trained_window: Optional[int] = None) -> "WindowOptions":
        """Validated copy; ``max_window``/``trained_window`` come from the model's config when it is known."""
        window = None if self.window is None else WINDOW.check(self.window)
        if window is not None and max_window is not None and window > max_window:
            raise InputError(
                f"window must be at most {max_window} (the view-consistency modules encode {max_window} "
                f"positions; trained with {WINDOW.default}), got {window}"
            )
        overlap = None
        if self.overlap is not None:  # checked even in independent mode, where it does not apply
            overlap = OVERLAP.check(self.overlap)
            effective = window if window is not None else (trained_window or WINDOW.default)
            if overlap >= effective:
                raise InputError(f"overlap must be in [0, window-1] = [0, {effective - 1}], got {overlap}")
        return WindowOptions(window, check_choice("window_mode", self.mode, WINDOW_MODES), overlap,
                             WINDOWS_PER_BATCH.check(self.windows_per_batch))

    def resolved(self, trained_window: int) -> tuple:
        """(window, overlap) with the defaults filled in."""
        window = self.window if self.window is not None else trained_window
        return window, (self.overlap if self.overlap is not None else window // 2)


TauSpec = Union[float, Mapping[str, float]]
#: Named in the message for a τ key that matches no layer.
_TAU_PREFIX_EXAMPLES = "'down_blocks.0', 'mid_block', 'up_blocks.3'"


@dataclass(frozen=True)
class FusionSettings:
    """Per-call Style Fusion Attention settings (§3.3, §3.5, §4).

    ``tau`` is the key scale: one float, or a mapping from attention-layer name
    prefixes (``"down_blocks.0"``, ``"mid_block"``, a full ``...attn1`` name, or
    ``"*"`` for the rest) to τ; the longest matching prefix wins.
    """

    tau: TauSpec = TAU.default
    pairing: str = PAIRINGS[0]
    mask_mode: str = MASK_MODES[0]
    _table: Tuple[Tuple[str, float], ...] = field(default=(), repr=False, compare=False)

    def checked(self, layers: Optional[Sequence[str]] = None) -> "FusionSettings":
        """Validated copy; with the model's attention-layer names, every τ key must name at least one layer."""
        if isinstance(self.tau, Mapping):
            if not self.tau:
                raise InputError("tau: the per-layer mapping is empty; give a float or at least one entry")
            table = []
            for key, value in self.tau.items():
                if not isinstance(key, str) or not key:
                    raise InputTypeError(f"tau: per-layer keys must be layer-name prefixes (strings), got {key!r}")
                if layers is not None and key != "*" and not any(name.startswith(key) for name in layers):
                    raise InputError(
                        f"tau: key {key!r} matches no attention layer of this model; use a layer-name prefix such as "
                        f"{_TAU_PREFIX_EXAMPLES}, a full layer name, or '*' for the rest (tau_by_resolution builds them)"
                    )
                table.append((key, TAU.check(value, f"tau[{key!r}]")))
            table.sort(key=lambda kv: -len(kv[0]))
            default = dict(table).get("*", TAU.default)
            return replace(self, tau=dict(table), _table=tuple(table) + (("", default),),
                           pairing=check_choice("pairing", self.pairing, PAIRINGS),
                           mask_mode=check_choice("mask_mode", self.mask_mode, MASK_MODES))
        tau = TAU.check(self.tau)
        return replace(self, tau=tau, _table=(("", tau),),
                       pairing=check_choice("pairing", self.pairing, PAIRINGS),
                       mask_mode=check_choice("mask_mode", self.mask_mode, MASK_MODES))

    def tau_for(self, layer_name: str) -> float:
        table = self._table or self.checked()._table
        for prefix, value in table:
            if prefix != "*" and layer_name.startswith(prefix):
                return value
        return table[-1][1]


#: Attention-layer prefixes of each latent resolution of the SD1.5 UNet (level 0 = finest, 64x64 at 512 px).
RESOLUTION_LEVELS = {
    0: ("down_blocks.0", "up_blocks.3"),
    1: ("down_blocks.1", "up_blocks.2"),
    2: ("down_blocks.2", "up_blocks.1"),
    3: ("mid_block",),
}


def tau_by_resolution(tau: float, per_level: Mapping[int, Optional[float]]) -> TauSpec:
    """τ per latent resolution (level 0 finest … 3 = middle block); None keeps ``tau``.

    Returns a plain float when no level overrides it, else the prefix mapping
    :class:`FusionSettings` takes.
    """
    base = TAU.check(tau)
    table = {"*": base}
    for level, value in per_level.items():
        if level not in RESOLUTION_LEVELS:
            raise InputError(f"tau level must be one of {sorted(RESOLUTION_LEVELS)}, got {level!r}")
        if value is None:
            continue
        for prefix in RESOLUTION_LEVELS[level]:
            table[prefix] = TAU.check(value, f"tau at resolution level {level}")
    return base if len(table) == 1 else table
