"""The one module that imports ComfyUI (host facts §2), with a fallback that works without it.

Inside ComfyUI the nodes get the host's V3 node schema (``io``, ``ComfyExtension``),
device, dtype policy, model folders, memory manager (one ``ModelPatcher`` per set
of weights, layers made ``comfy.ops``-castable for partial loads, loaded with
``load_models_gpu``), latent previews (``latent_preview``), progress bar and
interrupt flag. Without ComfyUI (unit tests, CI) the same names give:
:mod:`nodes.v3_fallback` for the schema, the CPU (or ``DIFFSTYLE360_DEVICE``) and
the core's dtype policy, a models folder you can set, a fallback patcher and
memory manager with the same clone/load semantics, a stand-in previewer, a
progress bar that records its calls, and an interrupt flag tests can raise with
:func:`request_interrupt`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, List, Optional

import torch
from PIL import Image

from diffstyle360_core.devices import resolve_device, resolve_dtype
from diffstyle360_core.pipeline import ModelPlacement

try:  # ComfyUI is importable only inside a running ComfyUI (its root is on sys.path)
    import comfy.model_management as _mm
    import comfy.latent_formats as _latent_formats
    import comfy.model_patcher as _patcher
    import comfy.ops as _ops
    import comfy.utils as _utils
    import folder_paths as _folder_paths
    import latent_preview as _latent_preview
except ImportError:
    _mm = _patcher = _ops = _utils = _folder_paths = _latent_formats = _latent_preview = None

IN_COMFYUI = _mm is not None

# The V3 node schema the nodes are declared with: ComfyUI's own inside ComfyUI, a faithful copy of
# the parts we use elsewhere (tests/test_v3_schema.py compares the two where ComfyUI is importable).
try:
    from comfy_api.latest import ComfyExtension, io  # noqa: F401  (used by the node modules)
except ImportError:
    from . import v3_fallback as io
    from .v3_fallback import ComfyExtension  # noqa: F401
V3_FALLBACK = io.__name__.endswith("v3_fallback")

#: The model folder key: ``ComfyUI/models/diffstyle360/<weight set>/`` (and ``diffstyle360:`` in extra_model_paths.yaml).
MODEL_FOLDER = "diffstyle360"

# --------------------------------------------------------------------------------------------- model folders
_fallback_models_dir = Path(os.environ.get("DIFFSTYLE360_MODELS", Path(tempfile.gettempdir()) / "diffstyle360-models"))


def register_model_folder() -> None:
    """Add ``models/diffstyle360`` to the host's folder registry (keeps entries from extra_model_paths.yaml)."""
    if IN_COMFYUI:
        _folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(_folder_paths.models_dir, MODEL_FOLDER))


def model_roots() -> List[str]:
    """Folders searched for weight sets, in priority order."""
    if IN_COMFYUI:
        try:
            return list(_folder_paths.get_folder_paths(MODEL_FOLDER))
        except KeyError:
            return [os.path.join(_folder_paths.models_dir, MODEL_FOLDER)]
    return [str(_fallback_models_dir)]


def set_fallback_models_dir(path: os.PathLike | str) -> None:
    """Without ComfyUI: where weight sets are looked up (tests point it at a tmp folder)."""
    global _fallback_models_dir
    _fallback_models_dir = Path(path)


# --------------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    """The device the models run on."""
    if IN_COMFYUI:
        return _mm.get_torch_device()
    return resolve_device(os.environ.get("DIFFSTYLE360_DEVICE", "cpu"))


def offload_device() -> torch.device:
    """Where models wait while they are not running (the CPU unless ComfyUI keeps everything on the GPU)."""
    if IN_COMFYUI:
        return _mm.unet_offload_device()
    return torch_device()


def intermediate_device() -> torch.device:
    """Where IMAGE/MASK outputs live (ComfyUI: the CPU unless --gpu-only)."""
    if IN_COMFYUI:
        return _mm.intermediate_device()
    return torch.device("cpu")


def auto_dtype(device: torch.device, params: int = 0) -> torch.dtype:
    """The host's precision choice for a UNet-like model on ``device`` (honours --fp16-unet, --fp32-unet…)."""
    if IN_COMFYUI:
        return _mm.unet_dtype(device, model_params=params,
                              supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return resolve_dtype("auto", device)


def resolve_dtype_choice(choice: str, device: torch.device, params: int = 0) -> torch.dtype:
    """A loader's dtype widget ("auto" / "fp16" / "bf16" / "fp32") as a torch dtype."""
    return auto_dtype(device, params) if choice == "auto" else resolve_dtype(choice, device)


OOM_EXCEPTION = torch.cuda.OutOfMemoryError


# --------------------------------------------------------------------------------------------- interrupt
class _FallbackInterrupt(Exception):
    """Stands in for ComfyUI's InterruptProcessingException outside ComfyUI."""


InterruptProcessingException = _mm.InterruptProcessingException if IN_COMFYUI else _FallbackInterrupt
_interrupt_lock = threading.Lock()
_interrupt_flag = False


def request_interrupt(value: bool = True) -> None:
    """Raise (or clear) the interrupt flag: what ComfyUI's Cancel button does."""
    global _interrupt_flag
    if IN_COMFYUI:
        _mm.interrupt_current_processing(value)
        return
    with _interrupt_lock:
        _interrupt_flag = value


def check_interrupt() -> None:
    """Raise the host's interrupt exception if the user pressed Cancel (clears the flag, as ComfyUI does)."""
    global _interrupt_flag
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()
        return
    with _interrupt_lock:
        if _interrupt_flag:
            _interrupt_flag = False
            raise InterruptProcessingException("processing interrupted")


# --------------------------------------------------------------------------------------------- progress
class RecordingProgressBar:
    """Fallback ProgressBar: same methods as ``comfy.utils.ProgressBar``, records every call in ``calls``."""

    instances: List["RecordingProgressBar"] = []

    def __init__(self, total: int, node_id: Any = None):
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.calls: List[tuple] = []
        RecordingProgressBar.instances.append(self)
        del RecordingProgressBar.instances[:-16]  # recent bars only (they hold preview images)

    def update_absolute(self, value, total=None, preview=None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        self.calls.append((self.current, self.total, preview))

    def update(self, value) -> None:
        self.update_absolute(self.current + value)


def progress_bar(total: int):
    """A progress bar shown on the running node (ComfyUI) or a recording one (fallback)."""
    if IN_COMFYUI:
        return _utils.ProgressBar(total)
    return RecordingProgressBar(total)


class FallbackPreviewer:
    """Outside ComfyUI: stands in for ``latent_preview``'s previewers (same call, same payload shape).

    It shows the first three latent channels as they are, enough to see that
    a preview was sent each step; inside ComfyUI the host's previewer draws it.
    """

    size = 512

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor):
        rgb = x0[0, :3].float().clamp(-1, 1).add(1).mul(127.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return (preview_format, Image.fromarray(rgb, mode="RGB"), self.size)


def latent_previewer():
    """A function: SD1.5 latents [B,4,h,w] (× 0.18215, the sampler's x0) → the host's preview payload for the
    first one; None when the user switched previews off.

    Inside ComfyUI it is ``latent_preview``'s previewer for the SD1.5 latent
    format, so Latent2RGB or TAESD (models/vae_approx/taesd_decoder) as the
    user's --preview-method says.
    """
    if IN_COMFYUI:
        device = _mm.get_torch_device()
        previewer = _latent_preview.get_previewer(device, _latent_formats.SD15())
    else:
        device, previewer = torch.device("cpu"), FallbackPreviewer()
    if previewer is None:
        return None

    def preview(latents: torch.Tensor):
        return previewer.decode_latent_to_preview_image("JPEG", latents[:1].to(device, torch.float32))

    return preview


# --------------------------------------------------------------------------------------------- memory manager
#: ``set_additional_models`` key under which a styled model's patcher carries its style module's own patcher.
STYLE_PATCHER_KEY = "diffstyle360_style_module"


def _module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's state dict (what ComfyUI's ``module_size`` counts)."""
    return sum(t.nbytes for t in module.state_dict().values())


class FallbackPatcher:
    """Outside ComfyUI: the part of ``comfy.model_patcher.ModelPatcher`` this pack relies on.

    One per set of weights; :meth:`clone` shares the model (and so its memory),
    additional models (a style module's own patcher) come along when loading,
    exactly as ComfyUI does it, so the same code runs in both places.
    """

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device, size: int = 0):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.parent: Optional["FallbackPatcher"] = None
        self.additional_models: dict = {}

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = _module_bytes(self.model)
        return self.size

    def clone(self) -> "FallbackPatcher":
        other = FallbackPatcher(self.model, self.load_device, self.offload_device, self.model_size())
        other.parent = self
        other.additional_models = {k: [m.clone() for m in v] for k, v in self.additional_models.items()}
        return other

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def set_additional_models(self, key: str, models: list) -> None:
        self.additional_models[key] = models

    def get_nested_additional_models(self) -> list:
        found = []
        for models in self.additional_models.values():
            for m in models:
                found += [m] + m.get_nested_additional_models()
        return found


class _FallbackMemory:
    """Outside ComfyUI: ``load_models_gpu`` / ``loaded_models`` / ``unload_all_models`` for FallbackPatchers.

    Keeps one entry per model (a clone replaces the loaded entry of its model,
    as ComfyUI's list does) and only weak references, so it never keeps a model alive.
    """

    def __init__(self):
        self._loaded: List[weakref.ref] = []

    def load(self, patchers: list) -> None:
        for patcher in patchers:
            self._loaded = [r for r in self._loaded if r() is not None and not patcher.is_clone(r())]
            if any(t.device != patcher.load_device for t in patcher.model.parameters()):
                patcher.model.to(patcher.load_device)
            self._loaded.insert(0, weakref.ref(patcher))

    def loaded(self) -> list:
        return [p for p in (r() for r in self._loaded) if p is not None]

    def unload_all(self) -> None:
        for patcher in self.loaded():
            if patcher.offload_device != patcher.load_device:
                patcher.model.to(patcher.offload_device)
        self._loaded = []


_fallback_memory = _FallbackMemory()


def castable(model: torch.nn.Module) -> torch.nn.Module:
    """Give every plain Linear/Conv2d/GroupNorm/LayerNorm ComfyUI's per-layer weight casting (``comfy.ops``).

    The layers become ``comfy.ops.disable_weight_init`` classes (same
    parameters, same maths while fully loaded), which is what lets
    ``ModelPatcher`` load a model partially: layers left on the CPU under
    --lowvram/--novram are cast to the GPU one at a time as they run. In place;
    a no-op without ComfyUI.
    """
    if not IN_COMFYUI:
        return model
    ops = _ops.disable_weight_init
    swap = {torch.nn.Linear: ops.Linear, torch.nn.Conv2d: ops.Conv2d, torch.nn.GroupNorm: ops.GroupNorm,
            torch.nn.LayerNorm: ops.LayerNorm}
    for module in model.modules():
        cls = swap.get(type(module))
        if cls is not None:
            module.__class__ = cls
    return model


def new_patcher(model: torch.nn.Module):
    """The one patcher of a new set of weights: ComfyUI's ``ModelPatcher`` (castable layers), else the fallback."""
    if IN_COMFYUI:
        return _patcher.ModelPatcher(castable(model), load_device=_mm.get_torch_device(),
                                     offload_device=_mm.unet_offload_device())
    return FallbackPatcher(model, torch_device(), offload_device())


def variant_patcher(base, extra: torch.nn.Module):
    """A variant of ``base``'s weights (a trained style module on a weight set): ``base`` cloned, with
    ``extra`` — only the parts the variant adds — as its own small patcher that loads with it.

    ComfyUI counts the shared weights once and switches between base and
    variant without moving anything (they are clones of one patcher).
    """
    patcher = base.clone()
    patcher.set_additional_models(STYLE_PATCHER_KEY, [new_patcher(extra)])
    return patcher


def load_models(patcher) -> None:
    """Load ``patcher`` and the models it carries, the way ComfyUI's samplers do (``load_models_gpu``).

    ComfyUI decides how much fits: other models are offloaded, and under
    --lowvram/--novram (or when it does not fit) the model is loaded
    partially and its castable layers run from the CPU.
    """
    patchers = [patcher] + patcher.get_nested_additional_models()
    if IN_COMFYUI:
        _mm.load_models_gpu(patchers)
    else:
        _fallback_memory.load(patchers)


def loaded_models() -> list:
    """The patchers the memory manager holds now (ComfyUI's ``loaded_models()``)."""
    return _mm.loaded_models() if IN_COMFYUI else _fallback_memory.loaded()


def unload_all_models() -> None:
    """What Unload Models and ``/free`` do to the memory manager."""
    if IN_COMFYUI:
        _mm.unload_all_models()
    else:
        _fallback_memory.unload_all()


class HostPlacement(ModelPlacement):
    """Core ``ModelPlacement`` backed by the host's memory manager.

    Built per pipeline with each model it may run and that model's patcher;
    ``activate`` asks the memory manager to load that patcher (ComfyUI:
    ``load_models_gpu``, which makes room by offloading other models, ours or
    not, and loads partially when needed) and tells the model where it computes.
    The pack never moves a model itself.
    """

    def __init__(self, patchers=()):
        self._patchers = list(patchers)  # (model, patcher); compared by identity

    def patcher(self, model: torch.nn.Module):
        return next((p for m, p in self._patchers if m is model), None)

    def activate(self, model: torch.nn.Module) -> None:
        patcher = self.patcher(model)
        if patcher is None:
            return
        load_models(patcher)
        model.compute_device = patcher.load_device  # castable layers left on the CPU are cast to it per call


def input_directory() -> Optional[str]:
    """ComfyUI's input folder (where Load Image looks), or None without ComfyUI."""
    return _folder_paths.get_input_directory() if IN_COMFYUI else None
