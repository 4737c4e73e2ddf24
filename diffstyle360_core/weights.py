"""Weights: official DiffPortrait360 checkpoint files → DiffStyle360 model folders, and loading them.

Reads the official ``.th`` checkpoints (``torch.load(weights_only=True)``,
memory-mapped where the file format allows, so a 10 GB checkpoint converts in
about its own memory) and writes and reads our converted folders. The official
key layout (prefixes, the official → ours name map, the grouped
:class:`WeightMismatchError`) lives in :mod:`.official_keys`
(``reference/dp360-keys-notes.md``); the keys and shapes our model expects in
:mod:`.layout`.

A converted folder holds ``config.json`` plus one ``<component>.safetensors``
per component of :data:`~.config.COMPONENTS` (``temporal`` for main models
only, ``style_appearance`` optional). The prompt is always "" (facts §5), so
CLIP is run once at conversion and only its output, the empty-prompt
embedding, is kept.

Format decision: ``config.json`` is one plain dict per component (each the
kwargs of its diffusers / transformers class, as diffusers' ``ConfigMixin``
writes them), and every file is a plain, complete state dict. We do not use
diffusers' ``ModelMixin`` folder layout (one sub-folder per model with its own
config): the appearance module (a UNet without output head), the
view-consistency modules and the constant text embedding are not diffusers
models, so that layout would cost a custom class per part and give no loader
that could read the folder anyway.

Every mismatch (unknown, missing or mis-shaped keys) is reported at once,
grouped by component, in one :class:`WeightMismatchError`. Weights holding NaN
or inf are refused when read (:class:`NonFiniteWeightError`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from . import returnable_memory
from .config import (
    BACK_VIEW,
    CONFIG_NAME,
    MAIN,
    META_COMPONENT,
    META_TRAINING,
    MODULE_COMPONENTS,
    TEXT_EMBEDDING,
    TRAINED_COMPONENTS,
    BackboneConfig,
    TemporalConfig,
    component_file,
    file_metadata,
    official_config,
    split_trained_state,
)
from .devices import resolve_device, resolve_dtype
from .files import write_atomic
from .layout import expected_shapes, folder_shapes
from .official_keys import (
    CLIP_MODEL_PREFIX,
    EMPTY_PROMPT_IDS,
    HF_REPO,
    OFFICIAL_FILES,
    REFERENCE_PREFIX,
    TEXT_ENCODER,
    Problems,
    WeightMismatchError,
    canonical_clip_key,
    check_map,
    compare_shapes,
    detect_kind,
    infer_config,
    map_official_keys,
)
from .options import MASK_MODES, PAIRINGS

__all__ = [
    "CheckpointFileError",
    "NonFiniteWeightError",
    "WeightDtypeError",
    "load_official_state_dict",
    "sidecar_config_path",
    "convert_official",
    "empty_prompt_embedding",
    "save_converted",
    "write_component_file",
    "writing_model_folder",
    "load_model",
    "load_style_module",
    "read_style_module_file",
    "StyleModuleFile",
    "sharing_copy",
    "convert_checkpoint",
]

_CONVERT_HINT = "convert the official checkpoint into it again (convert_checkpoint, or the `convert` command)"
_GET_OFFICIAL = (
    f"get {OFFICIAL_FILES[MAIN]} (main model) or {OFFICIAL_FILES[BACK_VIEW]} (back-view model) "
    f"from https://huggingface.co/{HF_REPO}"
)


# =========================================================================== #
# Errors
# =========================================================================== #
class CheckpointFileError(ValueError):
    """A weight file exists but cannot be used (corrupt, truncated, wrong format, unreadable)."""


class NonFiniteWeightError(CheckpointFileError):
    """A weight file reads fine but holds NaN or inf values (a damaged file or a diverged training run)."""


class WeightDtypeError(CheckpointFileError):
    """A weight file holds an integer, bool or complex tensor where the model has floating-point weights."""


#: Elements per finite check: small tensors are checked in batches of about this size (a few
#: thousand separate checks would cost more than the reading), large ones on their own.
_FINITE_BATCH = 1 << 22


def _first_non_finite(tensors: Mapping[str, torch.Tensor], cast: Optional[torch.dtype] = None) -> Optional[str]:
    """Name of the first floating tensor holding NaN/inf, or None.

    Checked in the stored dtype, on the tensors' device; with ``cast``, in that
    dtype instead (finds values beyond its range), one batch at a time.
    """
    batch: List[tuple] = []

    def finite(t: torch.Tensor) -> bool:
        return bool(torch.isfinite(t if cast is None else t.to(cast)).all())

    def flush() -> Optional[str]:
        if not batch:
            return None
        flat = torch.cat([t.reshape(-1) for _, t in batch]) if len(batch) > 1 else batch[0][1]
        found = None if finite(flat) else next((k for k, t in batch if not finite(t)), None)
        batch.clear()
        return found

    for key, t in tensors.items():
        if not t.is_floating_point():
            continue
        if batch and (t.dtype != batch[0][1].dtype or t.device != batch[0][1].device
                      or sum(b.numel() for _, b in batch) + t.numel() > _FINITE_BATCH):
            found = flush()
            if found is not None:
                return found
        batch.append((key, t))
    return flush()


def _check_finite(tensors: Mapping[str, torch.Tensor], where: str, hint: str) -> None:
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteWeightError(f"{where}: weight {bad!r} holds NaN or inf values; the file is damaged: {hint}")


#: Keys whose tensors are integer by nature (CLIP's ``position_ids`` in official checkpoints; never loaded).
_INTEGER_KEYS = ("position_ids",)


def _check_dtypes(tensors: Mapping[str, torch.Tensor], where: str, hint: str) -> None:
    """Every weight of our model is floating point: an integer, bool or complex tensor is refused like a bad shape.

    (Cast silently, an int64 tensor would load as whole numbers and a bool one as 0/1: a broken model
    that runs.)
    """
    bad = [(k, t.dtype) for k, t in tensors.items()
           if not t.is_floating_point() and not k.endswith(_INTEGER_KEYS)]
    if bad:
        key, dtype = bad[0]
        more = f" (and {len(bad) - 1} more non-float tensors)" if len(bad) > 1 else ""
        raise WeightDtypeError(
            f"{where}: weight {key!r} is {str(dtype).removeprefix('torch.')}, but the model needs "
            f"floating-point weights{more}; the file is damaged or not a DiffStyle360 weight file: {hint}"
        )


def _check_tensors(tensors: Mapping[str, torch.Tensor], where: str, hint: str) -> None:
    """What a read weight file must hold besides the right keys and shapes: floating-point, finite values."""
    _check_dtypes(tensors, where, hint)
    _check_finite(tensors, where, hint)


# =========================================================================== #
# Reading official checkpoints
# =========================================================================== #
def _load_failure_reason(exc: BaseException) -> str:
    """A short, safe reason for a failed ``torch.load``; never PyTorch's advice to drop ``weights_only``."""
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds pickled Python objects, which a checkpoint of tensors never needs; such files are not loaded"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "weights_only" in text or "weights only" in text.lower():
        text = ""
    text = text.split(". ")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_official_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read an official ``.th`` checkpoint as a flat ``{key: tensor}`` dict (CPU).

    Uses ``torch.load(weights_only=True)`` (memory-mapped when the file format
    allows): tensors and plain containers only, never pickled code. Unwraps a
    ``{'state_dict': ...}`` wrapper and strips a ``module.`` / ``_orig_mod.``
    prefix (DDP / torch.compile) when every key has it. A file that is not a
    checkpoint of tensors raises :class:`CheckpointFileError`; OS errors
    (permissions, …) propagate as themselves.
    """
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give the .th file itself")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. Download the official DiffPortrait360 weights: "
                                f"{_GET_OFFICIAL}.")
    obj = None
    errors: List[Exception] = []
    for mmap in (True, False):  # mmap needs the zip format of torch>=1.6; fall back for legacy files
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
            errors.append(exc)
    if obj is None:
        error = errors[-1]
        if isinstance(error, OSError):  # permissions, I/O errors: not the file's content
            raise error
        raise CheckpointFileError(
            f"cannot read checkpoint {path} ({_load_failure_reason(error)}). It is not a DiffPortrait360 "
            f"checkpoint, or it is corrupt or incompletely downloaded: {_GET_OFFICIAL}."
        ) from error
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors: {_GET_OFFICIAL}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad or not obj:
        what = f"non-tensor entries {bad[:5]!r}" if bad else "no entries"
        raise CheckpointFileError(f"{path} is not a DiffPortrait360 state dict of tensors ({what}); {_GET_OFFICIAL}")
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def sidecar_config_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """``foo.th`` → ``foo.config.json``: optional config next to a non-official (e.g. tiny) checkpoint."""
    p = Path(os.fspath(checkpoint))
    return p.with_name(p.stem + ".config.json")


# =========================================================================== #
# Official → ours (tensors)
# =========================================================================== #
def convert_official(
    state_dict: Mapping[str, torch.Tensor],
    config: BackboneConfig,
    *,
    source: str = "state dict",
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Official DiffPortrait360 state dict → ``{component: {our key: tensor}}``.

    Components: ``unet``, ``temporal`` (main only), ``appearance``,
    ``pose_controlnet``, ``vae``, ``text_encoder`` (CLIP, by the official
    ``text_model.*`` names). Strict: unknown, missing or mis-shaped keys
    raise one :class:`WeightMismatchError` grouped by component. Tensors are
    not copied (the VAE's 1×1-conv attention weights become views).
    """
    keymap = map_official_keys(state_dict, config)
    check_map(keymap, expected_shapes(config), config, source=source)
    _check_dtypes({tag.key: state_dict[tag.key] for entries in keymap.mapping.values() for tag in entries.values()},
                  source, _GET_OFFICIAL)
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for comp, entries in keymap.mapping.items():
        if comp == "temporal" and config.temporal is None:
            continue
        comp_out = {}
        for our_key, tag in entries.items():
            tensor = state_dict[tag.key]
            if tag.squeezed:
                tensor = tensor.reshape(tag.shape)
            comp_out[our_key] = tensor
        out[comp] = comp_out
    return out


# =========================================================================== #
# Empty-prompt embedding
# =========================================================================== #
def empty_prompt_embedding(
    text_state_dict: Mapping[str, torch.Tensor], config: BackboneConfig
) -> torch.Tensor:
    """CLIP embedding of the empty prompt, ``[1, 77, context_dim]``, float32.

    What LDM's ``FrozenCLIPEmbedder`` returns for ``""`` (the only prompt
    DiffPortrait360 ever uses, facts §5): ``last_hidden_state`` (after the
    final layer norm) of ``CLIPTextModel`` on the 77 token ids SD1.5's
    tokenizer gives (:data:`EMPTY_PROMPT_IDS`: BOS, EOS, 75 × pad = EOS), no
    attention mask (causal only). No tokenizer files are needed. Keys may use
    the official (transformers 4, ``text_model.*``) or the transformers 5 names.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**config.text_encoder)
    if cfg.max_position_embeddings < len(EMPTY_PROMPT_IDS):
        raise ValueError(f"text encoder has {cfg.max_position_embeddings} positions, need {len(EMPTY_PROMPT_IDS)}")
    model = CLIPTextModel(cfg)
    # transformers 5 dropped the ``text_model.`` nesting of CLIPTextModel's keys; the official
    # names keep it (official_keys.CLIP_MODEL_PREFIX). Adapt to whichever is installed.
    nested = any(k.startswith(CLIP_MODEL_PREFIX) for k in model.state_dict())
    state = {}
    for key, value in text_state_dict.items():
        key = canonical_clip_key(key)
        if key.endswith("embeddings.position_ids"):  # non-persistent in current transformers
            continue
        state[key if nested else key[len(CLIP_MODEL_PREFIX):]] = value.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        problems = {TEXT_ENCODER: Problems(missing=list(missing), unknown=list(unexpected))}
        raise WeightMismatchError("CLIP text weights do not match the config's text encoder:", problems)
    ids = torch.tensor([EMPTY_PROMPT_IDS], dtype=torch.long)
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    return hidden.float().contiguous()


# =========================================================================== #
# Our folder format: writing
# =========================================================================== #
def _check_savable(comps: Mapping[str, Mapping[str, torch.Tensor]], dtype: Optional[torch.dtype]) -> None:
    """Refuse meta tensors and NaN/inf (also after a cast to ``dtype``) before anything is written."""
    for comp, tensors in comps.items():
        meta = next((k for k, t in tensors.items() if t.is_meta), None)
        if meta is not None:
            raise ValueError(f"cannot save: {comp} weight {meta!r} is on the meta device (no data)")
        bad = _first_non_finite(tensors)
        if bad is not None:
            raise NonFiniteWeightError(f"cannot save: {comp} weight {bad!r} holds NaN or inf values")
        bad = _first_non_finite(tensors, cast=dtype) if dtype is not None else None
        if bad is not None:
            raise ValueError(f"cannot save: {comp} weight {bad!r} has values beyond the range of {dtype}; "
                             "save without dtype=")


def _prepare(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    """CPU, contiguous, cast to ``dtype``; tensors sharing storage are unaliased.

    safetensors refuses tensors that overlap in memory (tied weights, one
    tensor under two keys). ``safetensors.torch.save_model`` would drop the
    duplicate keys, but our folders hold complete state dicts (strict loading,
    readable by any tool), so a tensor whose storage is already used by an
    earlier key is cloned instead.
    """
    out = {}
    seen = set()
    for k, t in tensors.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def write_component_file(
    tensors: Mapping[str, torch.Tensor],
    path: Union[str, os.PathLike],
    component: str,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write one component's tensors as a safetensors file, the way converted folders hold them.

    CPU, contiguous, floating tensors cast to ``dtype`` if given; tensors that
    share memory are unaliased (every key is kept). The write is atomic (a
    temporary file beside ``path``, then ``os.replace``) and the file is 0644
    like other model files. ``component`` is recorded in the metadata.
    """
    path = Path(os.fspath(path)).expanduser()
    _write_safetensors(_prepare(tensors, dtype), path, component)
    return path


def _write_safetensors(tensors: Dict[str, torch.Tensor], path: Path, component: str) -> None:
    """Atomic write (:func:`~.files.write_atomic`) with our metadata (:func:`~.config.file_metadata`)."""
    from safetensors.torch import save_file

    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=file_metadata(component)))


def _component_dicts(source, config: Optional[BackboneConfig]):
    if isinstance(source, nn.Module):
        config = source.config
        comps = {c: getattr(source, c).state_dict() for c in MODULE_COMPONENTS if getattr(source, c) is not None}
        comps[TEXT_EMBEDDING] = {TEXT_EMBEDDING: getattr(source, TEXT_EMBEDDING)}
        return comps, config
    if config is None:
        raise ValueError("save_converted needs config= when given a dict of components")
    comps = {c: dict(source[c]) for c in MODULE_COMPONENTS if c in source and source[c] is not None}
    if TEXT_EMBEDDING in source:
        emb = source[TEXT_EMBEDDING]
        comps[TEXT_EMBEDDING] = dict(emb) if isinstance(emb, Mapping) else {TEXT_EMBEDDING: emb}
    elif TEXT_ENCODER in source:
        clip = source[TEXT_ENCODER]
        emb = empty_prompt_embedding(clip, config)
        ref = next((v for v in clip.values() if v.is_floating_point()), None)
        comps[TEXT_EMBEDDING] = {TEXT_EMBEDDING: emb.to(ref.dtype) if ref is not None else emb}
    else:
        raise ValueError(f"components need {TEXT_ENCODER!r} (CLIP weights) or {TEXT_EMBEDDING!r}")
    return comps, config


def save_converted(
    source: Union[nn.Module, Mapping[str, Mapping[str, torch.Tensor]]],
    folder: Union[str, os.PathLike],
    config: Optional[BackboneConfig] = None,
    *,
    dtype: Union[str, torch.dtype, None] = None,
) -> Path:
    """Write a converted model folder.

    ``source``: a :class:`DiffStyle360Model`, or the component dicts of
    :func:`convert_official` (then ``config`` is required and the empty-prompt
    embedding is computed from ``text_encoder``). Writes ``config.json`` and
    ``<component>.safetensors``; floating tensors keep their dtype unless
    ``dtype`` (e.g. ``torch.float16`` or ``"fp16"`` to halve the size) is given. Keys,
    shapes and finiteness are checked before anything is written; each file
    is written atomically and ``config.json`` last, so a folder with a
    ``config.json`` is complete. An existing ``style_appearance.safetensors``
    in ``folder`` is kept unless ``source`` has its own style module.
    """
    dtype = None if dtype is None else resolve_dtype(dtype, "cpu")
    comps, config = _component_dicts(source, config)
    problems = compare_shapes(comps, folder_shapes(config, "style_appearance" in comps))
    if any(problems.values()):
        raise WeightMismatchError(f"cannot save: weights do not match the {config.kind!r} config:", problems)
    _check_savable(comps, dtype)  # before touching the folder
    with writing_model_folder(folder, config) as folder:
        for comp, tensors in comps.items():
            _write_safetensors(_prepare(tensors, dtype), folder / component_file(comp), comp)
    return folder


@contextlib.contextmanager
def writing_model_folder(folder: Union[str, os.PathLike], config: BackboneConfig):
    """Write a converted model folder: yields the folder to write the component files into.

    An existing ``config.json`` is removed first (an interrupted rewrite must
    not look complete) and the new one is written last, once the body has
    finished: a folder with it is complete. A back-view model written over an
    earlier main model loses the stale ``temporal.safetensors``.
    """
    folder = Path(os.fspath(folder)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} is a file; give a folder to write the converted model into")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).unlink(missing_ok=True)
    yield folder
    if config.temporal is None:
        (folder / component_file("temporal")).unlink(missing_ok=True)
    config.save(folder)


# =========================================================================== #
# Our folder format: reading
# =========================================================================== #
def _read_safetensors(path: Path, hint: str = _CONVERT_HINT) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU. Only a bad file is blamed on the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointFileError(
            f"cannot read {path} ({str(exc).strip()[:200]}); the file is corrupt or incomplete: {hint}"
        ) from exc
    except OSError as exc:
        raise CheckpointFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


#: Byte alignment of a freshly allocated CPU tensor (PyTorch's CPU allocator): what the kernels expect.
_ALIGNMENT = 64


def _needs_copy(t: torch.Tensor) -> bool:
    """Whether ``t`` must be copied before a CPU kernel gets it: not contiguous or not 64-byte aligned.

    Tensors read from a safetensors file are views of its memory map and start
    wherever the file puts them (8-byte offsets); a CPU kernel may then take a
    different (unaligned) code path than for the same values in freshly
    allocated memory, so the memory-saving load would not compute what the
    in-memory model computes (a 1e-6 difference was seen on an AMD EPYC).
    """
    return not t.is_contiguous() or t.data_ptr() % _ALIGNMENT != 0


def _place(tensors: Mapping[str, torch.Tensor], device: torch.device, dtype: Optional[torch.dtype]):
    """Move to ``device``; cast floating tensors to ``dtype`` (None: keep the stored dtype); contiguous and aligned.

    CPU copies go to :mod:`.returnable_memory`, so dropping the model gives the
    memory back to the system (a host's "unload models" shows in its RSS).
    """
    placed = {}
    for k, v in tensors.items():
        target = dtype if dtype is not None and v.is_floating_point() else v.dtype
        if device.type != "cpu":
            placed[k] = v.to(device=device, dtype=target)
        elif target != v.dtype or v.device.type != "cpu" or _needs_copy(v):
            placed[k] = returnable_memory.copy(v, target)
        else:
            placed[k] = v
    return placed


def _new_style_module(config: BackboneConfig, meta: bool = True) -> nn.Module:
    """An empty style appearance module (a reference UNet, §3.2), on the meta device unless ``meta=False``."""
    from .appearance import AppearanceModule

    with torch.device("meta") if meta else contextlib.nullcontext():
        return AppearanceModule(config.unet)


def _build_model(config: BackboneConfig, with_style: bool, meta: bool):
    from .model import DiffStyle360Model

    with torch.device("meta") if meta else contextlib.nullcontext():
        model = DiffStyle360Model(config)
    if with_style:
        model.style_appearance = _new_style_module(config, meta)
    return model


def _meta_leftovers(model: nn.Module) -> List[str]:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_meta]


def _fill(build, state: Mapping[str, torch.Tensor], low_memory: bool,
          device: torch.device, dtype: Optional[torch.dtype]) -> nn.Module:
    """``build(meta)`` a module and load ``state`` into it strictly.

    ``low_memory``: built on the meta device and the tensors assigned (no
    random init, no copy). Falls back to an ordinary build (weights copied in,
    then moved to ``device``/``dtype``) when something stays on the meta device.
    """
    if low_memory:
        try:
            module = build(True)
            module.load_state_dict(state, strict=True, assign=True)
            if not _meta_leftovers(module):
                return module
        except (NotImplementedError, RuntimeError):
            pass
    module = build(False)
    module.load_state_dict(state, strict=True)
    return module.to(device=device, dtype=dtype)


def load_model(
    folder: Union[str, os.PathLike],
    device: Union[str, torch.device, None] = "cpu",
    dtype: Union[str, torch.dtype, None] = None,
    *,
    style_module: Optional[Union[str, os.PathLike]] = None,
    low_memory: bool = True,
):
    """Load a converted folder as a :class:`DiffStyle360Model` (eval mode).

    ``device``: as :func:`~.devices.resolve_device` takes it (``"cpu"``,
    ``"cuda:1"``, ``"auto"``/None = the best available). ``dtype``: None keeps
    the stored dtype; ``"auto"``, ``"fp16"``, ``"bf16"``, ``"fp32"`` or a
    torch dtype casts floating weights (:func:`~.devices.resolve_dtype`). A bad
    device or dtype raises :class:`~.options.InputError` before any file is
    read. Files are read on the CPU, checked (keys, shapes, NaN/inf) and
    moved to ``device`` one component at a time.

    Strict: every file must match the config (one grouped
    :class:`WeightMismatchError`). A ``style_appearance.safetensors`` in the
    folder, or ``style_module`` (see :func:`load_style_module`), adds the
    DiffStyle360 style module; without one the model is training-free. With
    ``low_memory`` the model is built on the meta device and the loaded
    tensors are assigned (no random init, no second copy); it falls back to a
    normal CPU build if anything is left on the meta device.
    """
    device = resolve_device(device)
    dtype = None if dtype is None else resolve_dtype(dtype, device)
    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist: {_CONVERT_HINT}")
    config = BackboneConfig.load(folder)
    if style_module is not None:  # a trained file may also carry view-consistency modules: one loader for it
        base = load_model(folder, device, dtype, low_memory=low_memory)
        return load_style_module(base, style_module)
    style_path = folder / component_file("style_appearance")
    with_style = style_path.is_file()
    components = config.folder_components(with_style=False)
    missing_files = [component_file(c) for c in components if not (folder / component_file(c)).is_file()]
    if missing_files:
        raise FileNotFoundError(
            f"{folder} is incomplete: {', '.join(missing_files)} missing (conversion interrupted?); {_CONVERT_HINT}"
        )
    try:  # builds the model on the meta device: what diffusers refuses in config.json is named before any read
        expected = folder_shapes(config, with_style)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise ValueError(f"{folder / CONFIG_NAME}: the model it describes cannot be built ({str(err)[:200]}); "
                         f"fix config.json or {_CONVERT_HINT}") from None
    problems: Dict[str, Problems] = {}
    state: Dict[str, Dict[str, torch.Tensor]] = {}
    for comp in components + (("style_appearance",) if with_style else ()):
        if comp == "style_appearance":
            sd = _read_style_file(style_path, config)
        else:
            path = folder / component_file(comp)
            sd = _read_safetensors(path)
            _check_tensors(sd, str(path), _CONVERT_HINT)
        problems.update(compare_shapes({comp: sd}, {comp: expected[comp]}))
        # one component at a time: the CPU copy is released before the next file is read
        state[comp] = _place(sd, device, dtype) if not any(problems.values()) else sd
        del sd
    if any(problems.values()):
        raise WeightMismatchError(
            f"model folder {folder} does not match its config.json ({config.kind!r}); {_CONVERT_HINT}:", problems
        )
    flat = {}
    for comp, sd in state.items():
        if comp == TEXT_EMBEDDING:
            flat[TEXT_EMBEDDING] = sd[TEXT_EMBEDDING]
        else:
            flat.update({f"{comp}.{k}": v for k, v in sd.items()})
    del state
    model = _fill(lambda meta: _build_model(config, with_style, meta), flat, low_memory, device, dtype)
    return model.eval()


def _style_to_ours(sd: Mapping[str, torch.Tensor], config: BackboneConfig, source: str) -> Dict[str, torch.Tensor]:
    keys = list(sd)
    if keys and all(k.startswith(REFERENCE_PREFIX) for k in keys):
        keymap = map_official_keys(sd, config)
        problems = compare_shapes({"style_appearance": {k: t.shape for k, t in keymap.mapping["appearance"].items()}},
                                  {"style_appearance": expected_shapes(config)["appearance"]})
        for unknown in keymap.unknown.values():
            problems.setdefault("style_appearance", Problems()).unknown.extend(unknown)
        if any(problems.values()):
            raise WeightMismatchError(f"style module {source} does not match the reference UNet:", problems)
        out = {}
        for k, tag in keymap.mapping["appearance"].items():
            t = sd[tag.key]
            out[k] = t.reshape(tag.shape) if tag.squeezed else t
        return out
    if any(k.startswith(REFERENCE_PREFIX) for k in keys):
        others = sorted({k.split(".")[0] for k in keys if not k.startswith(REFERENCE_PREFIX)})
        raise WeightMismatchError(
            f"style module {source} mixes control_model.* keys with others:",
            {"style_appearance": Problems(unknown=[k for k in keys if not k.startswith(REFERENCE_PREFIX)])},
            [f"a style module holds only the reference UNet (control_model.*), found also {others}; "
             "is this a full checkpoint?"],
        )
    if keys and not any(k.startswith("unet.") for k in keys) and any(k.startswith("down_blocks.") for k in keys):
        return {"unet." + k: v for k, v in sd.items()}  # bare diffusers UNet keys
    return dict(sd)


def _read_style_file(path: Path, config: BackboneConfig) -> Dict[str, torch.Tensor]:
    """A style module file → our ``appearance`` keys, on the CPU, finite-checked (shapes: the caller)."""
    path = Path(os.fspath(path)).expanduser()
    what = ("a DiffStyle360 style module .safetensors with the reference UNet's keys, or an official-layout "
            ".th/.safetensors file with control_model.* keys")
    if path.is_dir():
        raise ValueError(f"style module {path} is a folder; give the style module file ({what})")
    if not path.is_file():
        raise FileNotFoundError(f"style module {path} not found ({what})")
    if path.suffix.lower() not in (".safetensors", ".th", ".pt", ".pth", ".ckpt"):
        raise ValueError(f"style module {path}: unsupported file type {path.suffix!r}; expected {what}")
    hint = "get a complete copy of the style module file"
    if path.suffix.lower() == ".safetensors":
        sd = _read_safetensors(path, hint=hint)
    else:
        sd = load_official_state_dict(path)
    _check_tensors(sd, str(path), hint)
    return _style_to_ours(sd, config, str(path))


def sharing_copy(model: nn.Module) -> nn.Module:
    """A second model object over the same parts as ``model`` (no weight copied).

    A shallow copy: every submodule, parameter and buffer is shared, but the
    copy has its own registries (``_modules``, ``_parameters``, ``_buffers``,
    hook tables …), so assigning a submodule on it (``new.style_appearance =
    …``) leaves ``model`` exactly as it was. It also gets its own attention slot
    and Style Fusion readers: each model binds its own readers into the shared
    UNet for its call (:meth:`~.attention.FusionSlot.bind`), so no reader or
    reference of one model is ever seen by the other. Both run the same UNet,
    so they must not run at the same time (a host runs one model at a time).
    """
    from .attention import FusionSlot, install_fusion_readers

    new = copy.copy(model)
    # registries and hook tables: own containers, shared contents
    new.__dict__.update({name: copy.copy(value) for name, value in vars(model).items()
                         if isinstance(value, (dict, list, set))})
    if isinstance(vars(model).get("fusion"), FusionSlot):
        new.fusion = FusionSlot()
        new.attention_layers = install_fusion_readers(new.unet, new.fusion)
        model.fusion.bind(None)  # the shared UNet keeps reading through ``model``'s readers until ``new`` runs
    return new


@dataclass
class StyleModuleFile:
    """What a style-module file holds: reference-UNet weights (ours), optional view-consistency weights,
    which module it replaces (``style_appearance``, or ``appearance`` for the fine-tune ablation) and the
    training settings stored with it (pairing, mask mode …; empty for files not made by ``train``)."""

    appearance: Dict[str, torch.Tensor]
    temporal: Dict[str, torch.Tensor]
    component: str = "style_appearance"
    settings: Dict[str, object] = dataclasses.field(default_factory=dict)


def _safetensors_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable files are reported by the tensor read
        return {}


#: Training settings stored in a style module that a run uses as its defaults, and the values they may take.
_TRAINED_SETTINGS = {"pairing": PAIRINGS, "mask_mode": MASK_MODES}


def _training_settings(path: Path, meta: Mapping[str, str]) -> Dict[str, object]:
    """The ``diffstyle360_training`` metadata of a style module, checked here so that a bad value is reported as
    the file's metadata (never as a ``pairing`` or ``--mask-mode`` the user did not pass)."""
    text = meta.get(META_TRAINING)
    if text is None:
        return {}
    try:
        settings = json.loads(text)
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise CheckpointFileError(
            f"style module {path}: its metadata 'diffstyle360_training' is not a JSON object of training settings "
            f"({text[:60]!r}); the file was damaged or edited: train it again or use an intact copy"
        )
    for key, allowed in _TRAINED_SETTINGS.items():
        if key in settings and settings[key] not in allowed:
            raise CheckpointFileError(
                f"style module {path}: its metadata says it was trained with {key}={settings[key]!r:.40}, which is "
                f"not one of {allowed}; the file was damaged or edited: train it again or use an intact copy"
            )
    return settings


def read_style_module_file(path: Union[str, os.PathLike], config: BackboneConfig) -> StyleModuleFile:
    """Read a style module: a DiffStyle360 ``.safetensors`` (``unet.*`` keys, plus ``temporal.*`` and
    metadata when written by ``train``) or an official-layout file (``control_model.*``)."""
    path = Path(os.fspath(path)).expanduser()
    state = _read_style_file(path, config)
    appearance, temporal = split_trained_state(state)
    meta = _safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    component = meta.get(META_COMPONENT, "style_appearance")
    if component not in TRAINED_COMPONENTS.values():
        raise ValueError(f"style module {path} holds a {component!r} component, not a style or appearance module")
    settings = _training_settings(path, meta)
    expected = expected_shapes(config)
    problems = compare_shapes({"style_appearance": appearance}, {"style_appearance": expected["appearance"]})
    if temporal:
        if config.temporal is None:
            raise ValueError(f"style module {path} carries view-consistency modules but this model has none")
        problems.update(compare_shapes({"temporal": temporal}, {"temporal": expected["temporal"]}))
    if any(problems.values()):
        raise WeightMismatchError(f"style module {path} does not match this model:", problems)
    return StyleModuleFile(appearance, temporal, component, settings)


def _new_temporal(config: BackboneConfig, meta: bool = True) -> nn.Module:
    from .temporal import build_view_consistency_modules

    with torch.device("meta") if meta else contextlib.nullcontext():
        down, up = build_view_consistency_modules(
            config.unet["block_out_channels"], layers_per_block=config.unet["layers_per_block"],
            num_heads=config.temporal.num_heads, max_views=config.temporal.max_views,
            norm_num_groups=config.temporal.norm_num_groups,
        )
        return nn.ModuleDict({"down": down, "up": up})


def load_style_module(model, path: Union[str, os.PathLike]):
    """A NEW model: ``model``'s frozen parts (shared, not copied) + the style module at ``path``.

    ``path``: a ``.safetensors`` with our ``appearance`` keys (``unet.*``), a file
    written by ``train`` (also ``temporal.*`` view-consistency weights, which then
    replace the model's on the new model, and metadata with the training
    settings, kept as ``new.style_module_settings``; the fine-tune-ablation file
    replaces the shared appearance module instead of adding a style module), or
    an official-layout file (``.th``/``.safetensors``) whose keys all start with
    ``control_model.``. Modules are built on the meta device and the file's
    tensors assigned (strict), on the content module's device and dtype.
    ``model`` itself is not changed (a host may cache it).
    """
    config = model.config
    trained = read_style_module_file(path, config)
    ref = next(model.appearance.parameters())
    module = _fill(lambda meta: _new_style_module(config, meta), _place(trained.appearance, ref.device, ref.dtype),
                   True, ref.device, ref.dtype)
    module.train(model.appearance.training)
    module.requires_grad_(ref.requires_grad)
    new = sharing_copy(model)
    if trained.component == "appearance":
        new.appearance, new.style_appearance = module, None
    else:
        new.style_appearance = module
    if trained.temporal:
        tref = next(model.temporal.parameters())
        temporal = _fill(lambda meta: _new_temporal(config, meta), _place(trained.temporal, tref.device, tref.dtype),
                         True, tref.device, tref.dtype)
        temporal.train(model.temporal.training)
        temporal.requires_grad_(tref.requires_grad)
        new.temporal = temporal
    new.style_module_settings = dict(trained.settings)
    return new


# =========================================================================== #
# One-call conversion
# =========================================================================== #
def convert_checkpoint(
    th_path: Union[str, os.PathLike],
    out_folder: Union[str, os.PathLike],
    kind: Optional[str] = None,
    dtype: Union[str, torch.dtype, None] = None,
    *,
    config: Optional[BackboneConfig] = None,
) -> Path:
    """Official ``.th`` → converted folder; returns the folder.

    ``kind`` (``"main"``/``"back_view"``) defaults to what the file holds
    (motion modules → main); when given it is checked, and a wrong kind raises
    the grouped error with a hint. Config: ``config=`` if given, else a
    ``<name>.config.json`` sidecar next to the file (written by ``make_tiny``
    for its tiny checkpoints), else inferred from the shapes
    (:func:`~.official_keys.infer_config`; the released checkpoints are
    SD1.5-sized and need nothing). Weights holding NaN/inf are refused.
    """
    th_path = Path(os.fspath(th_path)).expanduser()
    if kind is not None and kind not in (MAIN, BACK_VIEW):
        raise ValueError(f"kind must be 'main' or 'back_view', got {kind!r}")
    dtype = None if dtype is None else resolve_dtype(dtype, "cpu")  # a bad name fails before the long read
    state = load_official_state_dict(th_path)
    kind = kind or detect_kind(state)
    if config is None:
        sidecar = sidecar_config_path(th_path)
        if sidecar.is_file():
            try:
                config = BackboneConfig.from_dict(json.loads(sidecar.read_text()))
            except ValueError as err:
                raise ValueError(f"{sidecar}: {err}; delete or fix this sidecar (real checkpoints need none)") from None
        else:
            try:
                config = infer_config(state, kind)
            except ValueError:  # not even the UNet's first layer: let the grouped check say what is wrong
                config = official_config(kind)
    if config.kind != kind:
        temporal = None
        if kind == MAIN:
            temporal = config.temporal or TemporalConfig(norm_num_groups=config.unet["norm_num_groups"])
        config = dataclasses.replace(config, kind=kind, temporal=temporal)
    converted = convert_official(state, config, source=str(th_path))
    try:
        return save_converted(converted, out_folder, config, dtype=dtype)
    except NonFiniteWeightError as err:
        raise NonFiniteWeightError(f"{th_path}: {err}; the checkpoint is damaged: {_GET_OFFICIAL}") from None
