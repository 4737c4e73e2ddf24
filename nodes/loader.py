"""Load Appearance Modules: a weight set from ``models/diffstyle360/`` as a lazy model handle.

The node reads nothing but folder listings. A model is read the first time a
node runs it and then lives in the handle (this node's output) with its one
``ModelPatcher``: ComfyUI's node cache makes a re-run instant, and when the host
drops the output (``/free``, Unload Models + a new prompt, a changed widget,
cache eviction) the model goes with it. Handles of the same files share one
loaded model through a table of weak references, which keeps nothing alive by
itself. A trained style module is a variant: the base's patcher cloned plus
the style module's own small patcher. The back-view model is read only when a
back view has to be generated.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from diffstyle360_core import catalog, returnable_memory
from diffstyle360_core.acceleration import apply_compile_choice, store_weights_fp8
from diffstyle360_core.cameras import CameraSet, find_condition_folder, load_condition_set
from diffstyle360_core.config import BACK_VIEW, MAIN, BackboneConfig
from diffstyle360_core.devices import DTYPE_CHOICES, FP8_SKIP, FP8_WEIGHTS
from diffstyle360_core.options import COMPILE_CHOICES
from diffstyle360_core.pipeline import DiffStyle360Pipeline

from . import download, host
from .common import DiffStyle360Error, Model, schema, user_errors
from .host import io

_log = logging.getLogger(__name__)

TRAINING_FREE = "none (training-free)"
#: The dtype widget: the compute dtypes, plus 8-bit weight storage computed in the "auto" dtype.
NODE_DTYPE_CHOICES = DTYPE_CHOICES + (FP8_WEIGHTS,)
#: Compile choices offered in the graph (CUDA graphs are left to the CLI/library: the host moves weights between runs).
NODE_COMPILE_CHOICES = tuple(c for c in COMPILE_CHOICES if c != "cudagraphs")


def load_model(folder: Path, device, dtype):
    """Read a converted model folder (the one place weights are read; tests count calls here)."""
    from diffstyle360_core.weights import load_model as read

    return read(folder, device=device, dtype=dtype)


def load_style_module(base, path: Path):
    """A model with the style module at ``path``, sharing every frozen part with ``base`` (base unchanged)."""
    from diffstyle360_core.weights import load_style_module as read

    return read(base, path)


# --------------------------------------------------------------------------------------------- loaded models
@dataclass(eq=False)
class HostedModel:
    """A model the pipeline runs and its one patcher (for a styled model: a clone of its base's patcher
    carrying the style module's own); ``base`` keeps the shared weights alive as long as the variant lives."""

    model: nn.Module
    patcher: Any
    base: Optional["HostedModel"] = None

    def __post_init__(self):
        # the weights go back to the system by themselves (returnable memory); when the host frees the model,
        # the heap its runs' activations left behind goes back too, so /free shows in the process's RSS
        returnable_memory.trim_when_freed(self.model)


#: Live models by file signature, dtype and device: weak, so the handles (node outputs) alone keep models alive.
_live: "weakref.WeakValueDictionary[tuple, HostedModel]" = weakref.WeakValueDictionary()
_live_lock = threading.RLock()


def _shared(key: tuple, build: Callable[[], HostedModel]) -> HostedModel:
    """The model another handle still holds for ``key``, else ``build()`` (registered weakly)."""
    with _live_lock:
        found = _live.get(key)
        if found is None:
            found = build()
            _live[key] = found
        return found


def live_models() -> int:
    """How many models some handle still holds (tests: the host's cache eviction frees them)."""
    with _live_lock:
        return len(_live)


def _added_parts(variant: nn.Module, base: nn.Module) -> nn.ModuleDict:
    """The submodules ``variant`` has that ``base`` does not share (its style module, trained view modules):
    what the variant's own small patcher holds."""
    return nn.ModuleDict({name: module for name, module in variant.named_children()
                          if module is not getattr(base, name, None)})


def _signature(folder: Path) -> Tuple:
    """Name, size and mtime of every file a converted folder is read from (a re-converted set reloads)."""
    entries = []
    for path in sorted(folder.glob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            st = path.stat()
            entries.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(entries)


def _file_signature(path: Optional[Path]) -> Tuple:
    if path is None:
        return ()
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------- listings
def weight_sets() -> Dict[str, catalog.WeightSet]:
    return catalog.list_weight_sets(host.model_roots())


def style_module_choices(sets: Dict[str, catalog.WeightSet]) -> Dict[str, Path]:
    """Widget label → file, for every style module found next to a weight set or loose in a models folder."""
    found: Dict[str, Path] = {}
    for ws in sets.values():
        for rel in ws.style_modules:
            found.setdefault(f"{ws.name}/{rel}", ws.path / rel)
    for root in host.model_roots():
        root_path = Path(root)
        if root_path.is_dir():
            for path in sorted(root_path.glob("*.safetensors")):
                found.setdefault(path.name, path)
    return found


@dataclass(eq=False)
class ModelHandle:
    """What flows on a DS360_MODEL link: where the weights are and how to run them; models load on demand
    and stay in the handle (so they live exactly as long as ComfyUI keeps this output)."""

    weight_set: str
    path: Path
    dtype_choice: str = "auto"
    style_module: Optional[Path] = None
    compile_choice: str = "off"
    _cameras: Optional[CameraSet] = field(default=None, repr=False)
    _hosted: Dict[str, Tuple[tuple, HostedModel]] = field(default_factory=dict, repr=False)

    # ---- cheap facts (config.json only)
    def has(self, kind: str) -> bool:
        return (self.path / kind / "config.json").is_file()

    def config(self, kind: str) -> BackboneConfig:
        if not self.has(kind):
            other = MAIN if kind == BACK_VIEW else BACK_VIEW
            what = "back-view model (back_view/)" if kind == BACK_VIEW else "main model (main/)"
            hint = (" Connect a content_back image (and a back image per style) so no back view has to be generated, "
                    "or convert back_head-230000.th into it." if kind == BACK_VIEW
                    else " Convert model_state-340000.th into it (README, Weights).")
            present = f" (it has only {other}/)" if self.has(other) else ""
            raise DiffStyle360Error(f"weight set '{self.weight_set}' at {self.path} has no {what}{present}.{hint}")
        return BackboneConfig.load(self.path / kind)

    @property
    def image_size(self) -> int:
        kind = MAIN if self.has(MAIN) else BACK_VIEW
        return self.config(kind).image_size

    # ---- models
    def _dtype(self, device: torch.device) -> torch.dtype:
        """The compute dtype (fp8 storage computes in what "auto" gives the device)."""
        return host.resolve_dtype_choice("auto" if self.fp8 else self.dtype_choice, device)

    @property
    def fp8(self) -> bool:
        return self.dtype_choice == FP8_WEIGHTS

    def _stored(self, model, dtype: torch.dtype):
        """``model`` with its Linear/Conv weights kept in fp8 when the dtype widget asks for it (VAE excepted)."""
        if self.fp8:
            store_weights_fp8(model, dtype, skip=FP8_SKIP)
        return model

    def _held(self, slot: str, key: tuple, build: Callable[[], HostedModel]) -> HostedModel:
        """This handle's model in ``slot`` (main, back_view, styled) for ``key``; a changed file gives a new
        key, so the set is read again and the stale model dropped."""
        held = self._hosted.get(slot)
        if held is None or held[0] != key:
            self._hosted[slot] = held = (key, _shared(key, build))
        return held[1]

    def _base(self, kind: str) -> Tuple[tuple, HostedModel]:
        """(key, hosted model) of ``kind``, read from disk unless a handle holds it already."""
        self.config(kind)  # clear error if the folder is missing
        folder = self.path / kind
        device = host.offload_device()
        dtype = self._dtype(host.torch_device())
        key = ("model", str(folder.resolve()), _signature(folder), str(dtype), self.fp8, str(device))

        def build() -> HostedModel:
            model = self._stored(load_model(folder, device=device, dtype=dtype), dtype)
            return HostedModel(model, host.new_patcher(model))

        return key, self._held(kind, key, build)

    def _main(self) -> HostedModel:
        base_key, base = self._base(MAIN)
        if self.style_module is None:
            return base
        if not self.style_module.is_file():
            raise DiffStyle360Error(f"style module {self.style_module} not found; pick another in the loader.")
        key = ("styled", base_key, _file_signature(self.style_module))
        dtype = self._dtype(host.torch_device())

        def build() -> HostedModel:
            styled = self._stored(load_style_module(base.model, self.style_module), dtype)
            return HostedModel(styled, host.variant_patcher(base.patcher, _added_parts(styled, base.model)), base)

        return self._held("styled", key, build)

    def main_model(self):
        return self._main().model

    def back_view_model(self):
        return self._base(BACK_VIEW)[1].model

    def cameras(self) -> CameraSet:
        """The weight set's camera-condition set at the model's resolution (read once per handle)."""
        if self._cameras is None:
            self._cameras = load_condition_set(find_condition_folder(self.path), self.image_size)
        return self._cameras

    def _compiled(self, model):
        """The model, compiled as this handle asks ("off" undoes it: loaders of one set share the model)."""
        before = getattr(model, "_ds360_compile", None)
        record = apply_compile_choice(model, self.compile_choice)
        if record is not None and record is not before and record.regions:
            # compiling happens during the first run and shows no progress: say why that run is slow
            _log.info("DiffStyle360: compile=%s set on the %s model; the first run compiles (minutes), later runs "
                      "in this session reuse it", self.compile_choice, model.config.kind)
        return model

    def pipeline(self, *, main: bool = True, back_view: bool = True) -> DiffStyle360Pipeline:
        # each model looked up once: the pipeline runs exactly the models whose patchers it is given
        main_hosted = self._main() if main else None
        back_hosted = self._base(BACK_VIEW)[1] if back_view else None
        return DiffStyle360Pipeline(
            self._compiled(main_hosted.model) if main_hosted else None,
            self._compiled(back_hosted.model) if back_hosted else None,
            cameras=self.cameras(),
            placement=host.HostPlacement([(h.model, h.patcher) for h in (main_hosted, back_hosted) if h]),
        )


class LoadAppearanceModules(io.ComfyNode):
    """A whole weight set, not only the appearance modules: the main model (UNet, content appearance module,
    pose ControlNet, view-consistency modules, VAE, empty-prompt embedding), the back-view model, the
    camera-condition renders and an optional trained style module (style appearance module, with the
    view-consistency modules it was trained with), in the chosen dtype (fp8 storage) and compile setting.
    The handle it returns reads them when a node first needs them."""

    SEARCH_ALIASES = ["model loader", "load model", "checkpoint", "weights", "diffportrait360", "style module", "360"]

    @classmethod
    def define_schema(cls):
        sets = weight_sets()  # listed on every call: a set added on disk shows after a refresh (R)
        names = download.weight_set_choices(list(sets))  # never empty: the official set is always offered
        styles = [TRAINING_FREE] + sorted(style_module_choices(sets))
        return schema(
            "DiffStyle360LoadAppearanceModules", "DiffStyle360 Model Loader (Appearance Modules)",
            description=(
                "Picks a DiffStyle360 weight set from models/diffstyle360/ (converted DiffPortrait360 main and "
                "back-view models plus the camera-condition set) and an optional trained style module. Nothing is "
                "read here: the models load the first time a sampler needs them and stay with this node's output, so "
                "re-running a graph is instant and Unload Models / Free memory release them; the back-view model "
                "loads only when a back view has to be generated."),
            inputs=[
                io.Combo.Input("weight_set", options=names, tooltip=(
                    "A folder under models/diffstyle360/ holding main/, back_view/ and cam_condition/ "
                    "(README, Weights; `python -m diffstyle360_core make-tiny` writes a tiny demo set).")),
                io.Combo.Input("style_module", options=styles, default=TRAINING_FREE, tooltip=(
                    "A trained DiffStyle360 style appearance module (.safetensors), or none: training-free, the "
                    "content appearance module also reads the style image (the paper's first ablation).")),
                io.Combo.Input("dtype", options=list(NODE_DTYPE_CHOICES), default="auto", tooltip=(
                    "Weight precision: auto = ComfyUI's choice for the device (fp16 on most GPUs, fp32 on the CPU); "
                    "fp32 is the most exact, fp16/bf16 halve the memory. fp8_e4m3fn keeps the weights in 8 bits "
                    "(half of fp16's weight memory, for 6-8 GB cards) and computes in the auto dtype: approximate; "
                    "the VAE stays in the auto dtype.")),
                io.Combo.Input("compile", options=list(NODE_COMPILE_CHOICES), default="off", optional=True, tooltip=(
                    "torch.compile the models for faster sampling on a GPU; same images within rounding. regional = "
                    "the repeated blocks (the first run compiles for about 2 minutes), full = each model call as one "
                    "graph (longer first compile). Pays off when you sample many times in one session; "
                    "DIFFSTYLE360_COMPILE=0 switches it off everywhere.")),
                *download.optional_inputs(),
            ],
            outputs=[Model.Output("model", tooltip="The DiffStyle360 models (loaded on first use).")],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, weight_set: str, style_module: str = TRAINING_FREE, dtype: str = "auto", compile: str = "off",
                keep_downloaded_th: bool = False):
        with user_errors("Load Appearance Modules"):
            download.prepare_weight_set(weight_set, keep_downloaded_th)
            sets = weight_sets()
            if weight_set not in sets:
                roots = ", ".join(host.model_roots())
                known = ", ".join(sorted(sets)) or "none"
                raise DiffStyle360Error(
                    f"Load Appearance Modules: no weight set '{weight_set}' in {roots} (found: {known}); put a "
                    "converted set there (README, Weights) and press R to refresh the list."
                )
            if dtype not in NODE_DTYPE_CHOICES:
                raise DiffStyle360Error(
                    f"Load Appearance Modules: dtype must be one of {NODE_DTYPE_CHOICES}, got {dtype!r}.")
            if compile not in NODE_COMPILE_CHOICES:
                raise DiffStyle360Error(
                    f"Load Appearance Modules: compile must be one of {NODE_COMPILE_CHOICES}, got {compile!r}.")
            style_path = None
            if style_module != TRAINING_FREE:
                choices = style_module_choices(sets)
                if style_module not in choices:
                    raise DiffStyle360Error(
                        f"Load Appearance Modules: style module '{style_module}' not found; pick one from the list "
                        f"or '{TRAINING_FREE}'."
                    )
                style_path = choices[style_module]
            ws = sets[weight_set]
            return io.NodeOutput(ModelHandle(weight_set, ws.path, dtype, style_path, compile))
