"""Device and dtype policy: which device and precision a run uses when the caller says "auto".

One place for it, so the CLI, the library and the nodes' fallback agree, and a bad
device or dtype is reported as such (not as a broken weight file later on).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .options import InputError, InputTypeError

DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
#: Choices offered by the CLI and the loader node ("auto" = fp16 on CUDA, fp32 elsewhere).
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
#: The three concrete choices by short name (the bench's and make-tiny's ``--dtype``).
DTYPES = {name: DTYPE_NAMES[name] for name in DTYPE_CHOICES[1:]}
#: Weight storage in 8 bits, computed in the run's dtype (acceleration.store_weights_fp8); ComfyUI's name for it.
FP8_WEIGHTS = "fp8_e4m3fn"
#: Parts left in the compute dtype when weights are stored in fp8: the VAE decodes every view (small, sensitive).
FP8_SKIP = ("vae",)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def usable_devices() -> list:
    """Device names this PyTorch build can compute on here ("cpu" always; "cuda", "mps", "xpu" when present)."""
    found = ["cuda"] if torch.cuda.is_available() else []
    found += ["mps"] if _mps_available() else []
    found += ["xpu"] if _xpu_available() else []
    return found + ["cpu"]


def _refuse(device, why: str) -> InputError:
    return InputError(f"device {str(device)!r}: {why}; use {' or '.join(map(repr, usable_devices()))} (or 'auto')")


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None``/``"auto"``: CUDA if present, then MPS, else CPU; anything else must be usable by this torch, here.

    The one check for every entry point (library, ``stylize --device``, ``train --device``, nodes):
    a device this build or machine cannot compute on (``xpu``, ``mps``, ``cuda`` on a CPU build,
    ``meta``, a garbled name) is refused in one sentence that lists what can be used instead.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise InputTypeError(f"device must be a name such as 'cuda', 'cuda:1', 'mps' or 'cpu', got {device!r:.60}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device {device!r} is not a device name; use 'cuda', 'cuda:N', 'mps' or 'cpu'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {str(device)!r}: this PyTorch build or machine has no usable CUDA GPU; use 'cpu', "
                "or install a PyTorch build with CUDA support"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise _refuse(device, "MPS (Apple GPU) is not available to this PyTorch here")
        return dev
    if dev.type == "xpu":
        if not _xpu_available():
            raise _refuse(device, "no Intel XPU is available to this PyTorch here")
        return dev
    raise _refuse(device, f"DiffStyle360 cannot compute on {dev.type!r} devices")


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device, None] = None) -> torch.dtype:
    """``None``/``"auto"``: float16 on CUDA, float32 elsewhere; names like ``"fp16"`` or torch dtypes."""
    if dtype is None or dtype == "auto":
        kind = resolve_device(device).type if not isinstance(device, torch.device) else device.type
        return torch.float16 if kind == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise InputError(f"dtype {dtype} is not supported; use float32, float16 or bfloat16")
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower().removeprefix("torch.")]
    raise InputError(f"dtype {dtype!r} is not supported; use one of {DTYPE_CHOICES[1:]} or 'auto'")


def mixed_precision_dtype(mode: str) -> torch.dtype:
    """accelerate's ``mixed_precision`` ("no", "fp16", "bf16") as the dtype frozen weights are kept in."""
    return DTYPE_NAMES.get(mode, torch.float32)


def empty_cache(device: Optional[torch.device]) -> None:
    """Return cached GPU blocks to the driver after a run (no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
