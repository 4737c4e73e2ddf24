"""The one module that imports ComfyUI (host facts §2), with a fallback that works without it.

Inside ComfyUI the nodes get the host's device, dtype policy, model folders,
memory manager (every model wrapped in a ``ModelPatcher`` and loaded with
``load_models_gpu``), progress bar and interrupt flag. Without ComfyUI (unit
tests, CI) the same names give: the CPU (or ``DIFFSTYLE360_DEVICE``) and the
core's dtype policy, a models folder you can set, a progress bar that records
its calls, and an interrupt flag tests can raise with :func:`request_interrupt`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, List, Optional

import torch

from diffstyle360_core.devices import resolve_device, resolve_dtype
from diffstyle360_core.pipeline import ModelPlacement

try:  # ComfyUI is importable only inside a running ComfyUI (its root is on sys.path)
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _utils
    import folder_paths as _folder_paths
except ImportError:
    _mm = _patcher = _utils = _folder_paths = None

IN_COMFYUI = _mm is not None

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


def preview_settings() -> Optional[int]:
    """Max preview size in pixels when the user enabled sampler previews, else None (previews off)."""
    if IN_COMFYUI:
        from comfy.cli_args import LatentPreviewMethod, args

        if args.preview_method == LatentPreviewMethod.NoPreviews:
            return None
        return int(getattr(args, "preview_size", 512) or 512)
    return 512


# --------------------------------------------------------------------------------------------- memory manager
def _move_leftovers(model: torch.nn.Module, device: torch.device) -> None:
    """After load_models_gpu: move whatever the patcher left behind (buffers of parameter-less modules,
    parts shared with another of our models that the host offloaded meanwhile)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device != device:
            model.to(device)
            return


#: Attributes ModelPatcher keeps on the model it wraps (comfy/model_patcher.py, ComfyUI 0.8).
_PATCHER_BOOKKEEPING = ("device", "model_loaded_weight_memory", "lowvram_patch_counter", "model_lowvram",
                        "current_weight_patches_uuid", "model_offload_buffer_memory", "current_patcher")


class HostPlacement(ModelPlacement):
    """Core ``ModelPlacement`` backed by ComfyUI's memory manager.

    Every DiffStyle360 model gets one ``ModelPatcher(model, load_device, offload_device)``;
    ``activate`` asks ``load_models_gpu`` to make room (offloading other models, ours
    or not) and load it, so the host knows our VRAM and can free it later
    (Unload Models, OOM recovery). Without ComfyUI it does nothing: models are
    loaded on their device directly.
    """

    ATTRIBUTE = "_diffstyle360_patcher"

    def patcher(self, model: torch.nn.Module):
        """The model's one ModelPatcher, kept on the model itself (a model dropped from the cache and
        unloaded by ComfyUI is then freed with its patcher; a side table would keep both alive)."""
        if not IN_COMFYUI:
            return None
        patcher = model.__dict__.get(self.ATTRIBUTE)
        if patcher is not None and patcher.model is not model:
            # A shallow copy of a model we had registered (the core's sharing copy for a style module)
            # inherits its patcher and ComfyUI's bookkeeping attributes: give it its own.
            for name in (self.ATTRIBUTE,) + _PATCHER_BOOKKEEPING:
                model.__dict__.pop(name, None)
            patcher = None
        if patcher is None:
            patcher = _patcher.ModelPatcher(model, load_device=_mm.get_torch_device(),
                                            offload_device=_mm.unet_offload_device())
            model.__dict__[self.ATTRIBUTE] = patcher
        return patcher

    def activate(self, model: torch.nn.Module) -> None:
        if not IN_COMFYUI:
            return
        patcher = self.patcher(model)
        # Plain torch modules cannot be partially loaded (no comfy.ops casting): load them whole.
        _mm.load_models_gpu([patcher], force_full_load=True)
        _move_leftovers(model, patcher.load_device)


def placement() -> ModelPlacement:
    return HostPlacement()


def input_directory() -> Optional[str]:
    """ComfyUI's input folder (where Load Image looks), or None without ComfyUI."""
    return _folder_paths.get_input_directory() if IN_COMFYUI else None
