"""Weights: official DiffPortrait360 checkpoint files → DiffStyle360 model folders.

Reads the official ``.th`` checkpoints (``torch.load(weights_only=True)``,
memory-mapped where the file format allows, so a 10 GB checkpoint converts in
about its own memory) and writes and reads our converted folders. The key
layout itself (prefixes, the official ↔ ours name map, expected shapes, the
grouped :class:`WeightMismatchError`) lives in :mod:`.official_keys`
(``reference/dp360-keys-notes.md``).

A converted folder holds ``config.json`` plus one safetensors file per
component (``unet``, ``temporal`` (main only), ``appearance``,
``pose_controlnet``, ``vae``, ``text_embedding`` and optionally
``style_appearance``). The prompt is always "" (facts §5), so CLIP is run once
at conversion and only its output, the empty-prompt embedding, is kept.

Every mismatch (unknown, missing or mis-shaped keys) is reported at once,
grouped by component, in one :class:`WeightMismatchError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .config import BACK_VIEW, CONFIG_NAME, MAIN, BackboneConfig, TemporalConfig, official_config
from .official_keys import (
    EMPTY_PROMPT_IDS,
    HF_REPO,
    OFFICIAL_FILES,
    REFERENCE_PREFIX,
    WeightMismatchError,
    _check_map,
    _clip_key_to_ours,
    _clip_model_prefix,
    _order_key,
    _Problems,
    _shape_of,
    detect_kind,
    expected_shapes,
    infer_config,
    map_official_keys,
)

__all__ = [
    "FOLDER_COMPONENTS",
    "CheckpointFileError",
    "load_official_state_dict",
    "sidecar_config_path",
    "convert_official",
    "empty_prompt_embedding",
    "save_converted",
    "load_model",
    "load_style_module",
    "convert_checkpoint",
]

#: Files of a converted folder (``<name>.safetensors``); ``temporal`` only for main models,
#: ``style_appearance`` optional.
FOLDER_COMPONENTS = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae", "text_embedding")
_MODULE_COMPONENTS = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae")

_CONVERT_HINT = "re-run `python -m diffstyle360_core convert --checkpoint FILE --out FOLDER`"


# =========================================================================== #
# Errors
# =========================================================================== #
class CheckpointFileError(ValueError):
    """A weight file exists but cannot be read (corrupt, truncated, wrong format)."""


# =========================================================================== #
# Reading official checkpoints
# =========================================================================== #
def load_official_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read an official ``.th`` checkpoint as a flat ``{key: tensor}`` dict (CPU).

    Uses ``torch.load(weights_only=True)`` (memory-mapped when the file format
    allows): tensors and plain containers only, never pickled code. Unwraps a
    ``{'state_dict': ...}`` wrapper and strips a ``module.`` / ``_orig_mod.``
    prefix (DDP / torch.compile) when every key has it.
    """
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give the .th file itself")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found. Download the official DiffPortrait360 weights from "
            f"https://huggingface.co/{HF_REPO}: {OFFICIAL_FILES[MAIN]} (main model) and "
            f"{OFFICIAL_FILES[BACK_VIEW]} (back-view model)."
        )
    obj = None
    errors = []
    for mmap in (True, False):  # mmap needs the zip format of torch>=1.6; fall back for legacy files
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # noqa: BLE001 - re-raised below with the file name
            errors.append(exc)
    if obj is None:
        exc = errors[-1]
        raise CheckpointFileError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc).strip()[:300]}). The file is "
            f"probably corrupt or incompletely downloaded: re-download it from https://huggingface.co/{HF_REPO}. "
            "(It is read with torch.load(weights_only=True), which for safety refuses files that need "
            "arbitrary pickled code; the official checkpoints contain only tensors.)"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad or not obj:
        what = f"non-tensor entries {bad[:5]!r}" if bad else "no entries"
        raise CheckpointFileError(
            f"{path} is not a DiffPortrait360 state dict of tensors ({what}); expected the official "
            f"{OFFICIAL_FILES[MAIN]} / {OFFICIAL_FILES[BACK_VIEW]} from https://huggingface.co/{HF_REPO}"
        )
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
    ``pose_controlnet``, ``vae``, ``text_encoder`` (keys of the installed
    transformers' ``CLIPTextModel``: ``text_model.*`` before transformers 5,
    bare ``embeddings.*`` / ``encoder.*`` / ``final_layer_norm.*`` from 5 on).
    Strict: unknown, missing or mis-shaped keys raise one
    :class:`WeightMismatchError` grouped by component. Tensors are not copied
    (the VAE's 1×1-conv attention weights become views).
    """
    keymap = map_official_keys(state_dict, config)
    _check_map(keymap, config, detect_kind(state_dict) == MAIN, source)
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
    attention mask (causal only). No tokenizer files are needed.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**config.text_encoder)
    model = CLIPTextModel(cfg)
    prefix = _clip_model_prefix(config)
    state = {
        _clip_key_to_ours(k, prefix): v.float()
        for k, v in text_state_dict.items()
        if not k.endswith("embeddings.position_ids")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer in current transformers: never in the dict.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        problems = {"text_encoder": _Problems(missing=list(missing), unknown=list(unexpected))}
        raise WeightMismatchError("CLIP text weights do not match the config's text encoder:", problems)
    if cfg.max_position_embeddings < len(EMPTY_PROMPT_IDS):
        raise ValueError(f"text encoder has {cfg.max_position_embeddings} positions, need 77")
    ids = torch.tensor([EMPTY_PROMPT_IDS], dtype=torch.long)
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    return hidden.float().contiguous()


# =========================================================================== #
# Our folder format
# =========================================================================== #
def _metadata(component: str) -> Dict[str, str]:
    from .config import FORMAT_VERSION

    return {"format": "pt", "diffstyle360_component": component, "diffstyle360_format": str(FORMAT_VERSION)}


def _prepare(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, t in tensors.items():
        t = t.detach()
        if t.is_meta:
            raise ValueError(f"{k} is on the meta device (no data); cannot save it")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.to("cpu").contiguous()
    return out


def _write_safetensors(tensors: Dict[str, torch.Tensor], path: Path, component: str) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=_metadata(component))
    except RuntimeError as exc:
        if "share memory" not in str(exc):
            raise
        save_file({k: v.clone() for k, v in tensors.items()}, str(tmp), metadata=_metadata(component))
    _chmod_like_umask(tmp)
    os.replace(tmp, path)


def _chmod_like_umask(path: Path) -> None:
    """safetensors creates files 0600; make weights readable like other model files (0644)."""
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def _component_dicts(source, config: Optional[BackboneConfig]):
    if isinstance(source, nn.Module):
        config = source.config
        comps = {c: getattr(source, c).state_dict() for c in _MODULE_COMPONENTS if getattr(source, c) is not None}
        comps["text_embedding"] = {"text_embedding": source.text_embedding}
        return comps, config
    if config is None:
        raise ValueError("save_converted needs config= when given a dict of components")
    comps = {c: dict(source[c]) for c in _MODULE_COMPONENTS if c in source and source[c] is not None}
    if "text_embedding" in source:
        emb = source["text_embedding"]
        comps["text_embedding"] = dict(emb) if isinstance(emb, Mapping) else {"text_embedding": emb}
    elif "text_encoder" in source:
        clip = source["text_encoder"]
        emb = empty_prompt_embedding(clip, config)
        ref = next((v for v in clip.values() if v.is_floating_point()), None)
        comps["text_embedding"] = {"text_embedding": emb.to(ref.dtype) if ref is not None else emb}
    else:
        raise ValueError("components need 'text_encoder' (CLIP weights) or 'text_embedding'")
    return comps, config


def _expected_folder(config: BackboneConfig, with_style: bool) -> Dict[str, Dict[str, torch.Size]]:
    exp = expected_shapes(config)
    exp.pop("text_encoder")
    if with_style:
        exp["style_appearance"] = dict(exp["appearance"])
    return exp


def _compare(found: Mapping[str, Mapping[str, object]], expected: Mapping[str, Mapping[str, object]]):
    problems: Dict[str, _Problems] = {}
    for comp in sorted(set(found) | set(expected), key=_order_key):
        have = found.get(comp, {})
        want = expected.get(comp)
        p = problems.setdefault(comp, _Problems())
        if want is None:
            p.unknown.extend(have)
            continue
        for key, value in have.items():
            if key not in want:
                p.unknown.append(key)
            elif tuple(_shape_of(value)) != tuple(want[key]):
                p.shape.append((key, tuple(_shape_of(value)), tuple(want[key])))
        p.missing.extend(k for k in want if k not in have)
    return problems


def save_converted(
    source: Union[nn.Module, Mapping[str, Mapping[str, torch.Tensor]]],
    folder: Union[str, os.PathLike],
    config: Optional[BackboneConfig] = None,
    *,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write a converted model folder.

    ``source``: a :class:`DiffStyle360Model`, or the component dicts of
    :func:`convert_official` (then ``config`` is required and the empty-prompt
    embedding is computed from ``text_encoder``). Writes ``config.json`` and
    ``<component>.safetensors``; floating tensors keep their dtype unless
    ``dtype`` (e.g. ``torch.float16`` to halve the size) is given. Keys and
    shapes are checked before anything is written. An existing
    ``style_appearance.safetensors`` in ``folder`` is kept unless ``source``
    has its own style module.
    """
    comps, config = _component_dicts(source, config)
    problems = _compare(comps, _expected_folder(config, "style_appearance" in comps))
    if any(problems.values()):
        raise WeightMismatchError(f"cannot save: weights do not match the {config.kind!r} config:", problems)
    folder = Path(os.fspath(folder)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} is a file; give a folder to write the converted model into")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    for comp, tensors in comps.items():
        _write_safetensors(_prepare(tensors, dtype), folder / f"{comp}.safetensors", comp)
    if config.temporal is None:
        stale = folder / "temporal.safetensors"
        if stale.exists():
            stale.unlink()
    config.save(folder)  # last: a folder with config.json is complete
    return folder


def _read_safetensors(
    path: Path, device: Union[str, torch.device] = "cpu", hint: str = _CONVERT_HINT
) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointFileError(
            f"cannot read {path} ({type(exc).__name__}: {str(exc).strip()[:200]}); the file is corrupt or "
            f"incomplete: {hint}"
        ) from exc


def _build_model(config: BackboneConfig, with_style: bool, meta: bool):
    from .model import DiffStyle360Model

    with torch.device("meta") if meta else contextlib.nullcontext():
        model = DiffStyle360Model(config)
        if with_style:
            model.add_style_module()
    return model


def _meta_leftovers(model: nn.Module) -> List[str]:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_meta]


def load_model(
    folder: Union[str, os.PathLike],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    *,
    style_module: Optional[Union[str, os.PathLike]] = None,
    low_memory: bool = True,
):
    """Load a converted folder as a :class:`DiffStyle360Model` (eval mode).

    Strict: every file must match the config (one grouped
    :class:`WeightMismatchError`). A ``style_appearance.safetensors`` in the
    folder, or ``style_module`` (see :func:`load_style_module`), adds the
    DiffStyle360 style module; without one the model is training-free. With
    ``low_memory`` the model is built on the meta device and the loaded
    tensors are assigned (no random init, no second copy); it falls back to a
    normal CPU build if anything is left on the meta device.
    """
    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist: {_CONVERT_HINT}")
    config = BackboneConfig.load(folder)
    required = ["unet", "appearance", "pose_controlnet", "vae", "text_embedding"]
    if config.temporal is not None:
        required.insert(1, "temporal")
    missing_files = [f"{c}.safetensors" for c in required if not (folder / f"{c}.safetensors").is_file()]
    if missing_files:
        raise FileNotFoundError(
            f"{folder} is incomplete: {', '.join(missing_files)} missing (conversion interrupted?); {_CONVERT_HINT}"
        )
    state = {c: _read_safetensors(folder / f"{c}.safetensors", device) for c in required}
    style_path = Path(os.fspath(style_module)) if style_module is not None else folder / "style_appearance.safetensors"
    if style_module is not None or style_path.is_file():
        state["style_appearance"] = _read_style_file(style_path, config, device)
    problems = _compare(state, _expected_folder(config, "style_appearance" in state))
    if any(problems.values()):
        raise WeightMismatchError(
            f"model folder {folder} does not match its config.json ({config.kind!r}); {_CONVERT_HINT}:", problems
        )
    if dtype is not None:
        state = {c: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
                 for c, sd in state.items()}
    flat = {}
    for comp, sd in state.items():
        if comp == "text_embedding":
            flat["text_embedding"] = sd["text_embedding"]
        else:
            flat.update({f"{comp}.{k}": v for k, v in sd.items()})
    model = None
    if low_memory:
        try:
            model = _build_model(config, "style_appearance" in state, meta=True)
            model.load_state_dict(flat, strict=True, assign=True)
            if _meta_leftovers(model):
                model = None
        except (NotImplementedError, RuntimeError):
            model = None
    if model is None:  # fallback: ordinary build, weights copied in
        model = _build_model(config, "style_appearance" in state, meta=False)
        model.load_state_dict(flat, strict=True)
        model.to(device=device, dtype=dtype)
    return model.eval()


def _style_to_ours(sd: Mapping[str, torch.Tensor], config: BackboneConfig, source: str) -> Dict[str, torch.Tensor]:
    keys = list(sd)
    if keys and all(k.startswith(REFERENCE_PREFIX) for k in keys):
        keymap = map_official_keys(sd, config)
        problems = _compare({"style_appearance": {k: t.shape for k, t in keymap.mapping["appearance"].items()}},
                            {"style_appearance": expected_shapes(config)["appearance"]})
        for unknown in keymap.unknown.values():
            problems.setdefault("style_appearance", _Problems()).unknown.extend(unknown)
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
            {"style_appearance": _Problems(unknown=[k for k in keys if not k.startswith(REFERENCE_PREFIX)])},
            [f"a style module holds only the reference UNet (control_model.*), found also {others}; "
             "is this a full checkpoint?"],
        )
    if keys and not any(k.startswith("unet.") for k in keys) and any(k.startswith("down_blocks.") for k in keys):
        return {"unet." + k: v for k, v in sd.items()}  # bare diffusers UNet keys
    return dict(sd)


def _read_style_file(path: Path, config: BackboneConfig, device="cpu") -> Dict[str, torch.Tensor]:
    path = Path(os.fspath(path)).expanduser()
    what = ("a DiffStyle360 style module .safetensors with the reference UNet's keys, or an official-layout "
            ".th/.safetensors file with control_model.* keys")
    if path.is_dir():
        raise ValueError(f"style module {path} is a folder; give the style module file ({what})")
    if not path.is_file():
        raise FileNotFoundError(f"style module {path} not found ({what})")
    if path.suffix.lower() not in (".safetensors", ".th", ".pt", ".pth", ".ckpt"):
        raise ValueError(f"style module {path}: unsupported file type {path.suffix!r}; expected {what}")
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path, device, hint="get a complete copy of the style module file")
    else:
        sd = load_official_state_dict(path)
    sd = _style_to_ours(sd, config, str(path))
    return {k: v.to(device) for k, v in sd.items()}


def load_style_module(model, path: Union[str, os.PathLike]):
    """Load a DiffStyle360 style appearance module into ``model`` (strict) and return it.

    ``path``: a ``.safetensors`` with our ``appearance`` keys (``unet.*``), or an
    official-layout file (``.th``/``.safetensors``) whose keys all start with
    ``control_model.``, converted like the reference UNet. Calls
    ``model.add_style_module()`` first; tensors follow the content module's
    device and dtype.
    """
    config = model.config
    sd = _read_style_file(Path(os.fspath(path)), config)
    problems = _compare({"style_appearance": sd}, {"style_appearance": expected_shapes(config)["appearance"]})
    if any(problems.values()):
        raise WeightMismatchError(f"style module {path} does not match the reference UNet:", problems)
    ref = next(model.appearance.parameters())
    style = model.add_style_module()
    style.load_state_dict({k: v.to(device=ref.device, dtype=ref.dtype) for k, v in sd.items()}, strict=True)
    return style


# =========================================================================== #
# One-call conversion
# =========================================================================== #
def convert_checkpoint(
    th_path: Union[str, os.PathLike],
    out_folder: Union[str, os.PathLike],
    kind: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    *,
    config: Optional[BackboneConfig] = None,
) -> Path:
    """Official ``.th`` → converted folder; returns the folder.

    ``kind`` (``"main"``/``"back_view"``) defaults to what the file holds
    (motion modules → main); when given it is checked, and a wrong kind raises
    the grouped error with a hint. Config: ``config=`` if given, else a
    ``<name>.config.json`` sidecar next to the file (written by ``make-tiny``
    for its tiny checkpoints), else inferred from the shapes
    (:func:`infer_config`; the released checkpoints are SD1.5-sized and need
    nothing).
    """
    th_path = Path(os.fspath(th_path)).expanduser()
    if kind is not None and kind not in (MAIN, BACK_VIEW):
        raise ValueError(f"kind must be 'main' or 'back_view', got {kind!r}")
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
    return save_converted(converted, out_folder, config, dtype=dtype)
