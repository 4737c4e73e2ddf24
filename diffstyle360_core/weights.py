"""Weights: official DiffPortrait360 checkpoints → DiffStyle360 model folders.

The official release (HF ``gym890/diffportrait360``: ``model_state-340000.th``
for the main model, ``back_head-230000.th`` for the back-view model) is one
flat ``torch.save(state_dict)`` of the whole LDM module, with original LDM key
names (``reference/dp360-keys-notes.md``):

official prefix → our component:

* ``model.diffusion_model.*`` (main UNet) → ``unet`` (diffusers names);
* ``model.diffusion_model.*_motion_module*`` (view-consistency modules) → ``temporal``;
* ``control_model.*`` (reference UNet, no ``out.*``) → ``appearance`` (``unet.*``);
* ``pose_control_model.*`` (pose ControlNet) → ``pose_controlnet`` (``net.*``);
* ``first_stage_model.*`` (KL-f8 VAE) → ``vae``;
* ``cond_stage_model.transformer.*`` (CLIP ViT-L/14 text tower) → ``text_encoder``, used once;
* ``betas`` … ``logvar`` (schedule buffers) → ignored (:data:`IGNORED_KEYS`).

UNet, ControlNet and VAE keys go through diffusers' own single-file converters
(``diffusers.loaders.single_file_utils``). They run on lightweight *key tags*
instead of tensors, so conversion is a pure name map: every file key is either
consumed, deliberately ignored, or reported as unknown, and the tensors
themselves are never copied (a 10 GB checkpoint converts in about its own
memory; ``torch.load(mmap=True)`` where the file format allows it).

A converted folder holds ``config.json`` plus one safetensors file per
component (``unet``, ``temporal`` (main only), ``appearance``,
``pose_controlnet``, ``vae``, ``text_embedding`` and optionally
``style_appearance``). The prompt is always "" (facts §5), so CLIP is run once
at conversion and only its output, the empty-prompt embedding, is kept.

Every mismatch (unknown, missing or mis-shaped keys) is reported at once,
grouped by component, in one :class:`WeightMismatchError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import (
    BACK_VIEW,
    CONFIG_NAME,
    MAIN,
    BackboneConfig,
    TemporalConfig,
    clip_l_text,
    official_config,
    sd15_controlnet,
    sd15_unet,
    sd15_vae,
    tiny_config,
)
from .temporal import official_motion_key_to_ours, our_motion_key_to_official

__all__ = [
    "HF_REPO",
    "OFFICIAL_FILES",
    "IGNORED_KEYS",
    "SCHEDULE_KEYS",
    "CONVERTED_COMPONENTS",
    "FOLDER_COMPONENTS",
    "WeightMismatchError",
    "CheckpointFileError",
    "load_official_state_dict",
    "detect_kind",
    "infer_config",
    "sidecar_config_path",
    "expected_shapes",
    "KeyMap",
    "map_official_keys",
    "convert_official",
    "to_official",
    "empty_prompt_embedding",
    "EMPTY_PROMPT_IDS",
    "save_converted",
    "load_model",
    "load_style_module",
    "convert_checkpoint",
]

HF_REPO = "gym890/diffportrait360"
OFFICIAL_FILES = {MAIN: "model_state-340000.th", BACK_VIEW: "back_head-230000.th"}

UNET_PREFIX = "model.diffusion_model."
REFERENCE_PREFIX = "control_model."
POSE_PREFIX = "pose_control_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
MOTION_MARK = "_motion_module"
POSITION_IDS = CLIP_PREFIX + "text_model.embeddings.position_ids"

#: LDM diffusion-schedule buffers (``DDPM.register_schedule``). They are pure
#: functions of the yaml's schedule (scaled-linear betas 0.00085…0.012, 1000
#: steps), which our ``ScheduleConfig`` recomputes, so they carry no weights.
#: The DP360 code stores them as float16 (facts §5), i.e. *less* precise than a
#: recomputation; they are ignored rather than loaded.
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

#: Keys of an official checkpoint that are deliberately not loaded:
#: * the schedule buffers above;
#: * ``logvar``: the learned-variance init of LDM training (``learn_logvar`` is
#:   off, it is a constant 0 vector and unused at inference);
#: * CLIP's ``position_ids``: ``arange(77)``, persistent only in the
#:   transformers 4.30 of the official env; newer transformers rebuild it as a
#:   non-persistent buffer, so loading it would be an "unexpected key".
IGNORED_KEYS = frozenset(SCHEDULE_KEYS + ("logvar", POSITION_IDS))

#: Components produced by :func:`convert_official`.
CONVERTED_COMPONENTS = ("unet", "temporal", "appearance", "pose_controlnet", "vae", "text_encoder")
#: Files of a converted folder (``<name>.safetensors``); ``temporal`` only for main models,
#: ``style_appearance`` optional.
FOLDER_COMPONENTS = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae", "text_embedding")
_MODULE_COMPONENTS = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae")
_ORDER = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae", "text_encoder",
          "text_embedding", "other")
_OFFICIAL_PREFIX_OF = {
    "unet": UNET_PREFIX,
    "temporal": UNET_PREFIX + "*" + MOTION_MARK + "*",
    "appearance": REFERENCE_PREFIX,
    "pose_controlnet": POSE_PREFIX,
    "vae": VAE_PREFIX,
    "text_encoder": CLIP_PREFIX,
}

#: The empty prompt as SD1.5's CLIP tokenizer (openai/clip-vit-large-patch14,
#: ``padding="max_length"``, 77 tokens) encodes it: BOS 49406, EOS 49407, then
#: 75 pad tokens, and that tokenizer's pad token *is* EOS (49407).
BOS_TOKEN, EOS_TOKEN = 49406, 49407
EMPTY_PROMPT_IDS = (BOS_TOKEN, EOS_TOKEN) + (EOS_TOKEN,) * 75

_CONVERT_HINT = "re-run `python -m diffstyle360_core convert --checkpoint FILE --out FOLDER`"


# =========================================================================== #
# Errors
# =========================================================================== #
class CheckpointFileError(ValueError):
    """A weight file exists but cannot be read (corrupt, truncated, wrong format)."""


@dataclass
class _Problems:
    missing: List[str] = field(default_factory=list)
    unknown: List[str] = field(default_factory=list)
    shape: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, model shape

    def __bool__(self) -> bool:
        return bool(self.missing or self.unknown or self.shape)


class WeightMismatchError(ValueError):
    """Unknown, missing and mis-shaped keys of a weight file, grouped by component.

    ``report`` maps component → ``{"missing": [...], "unknown": [...], "shape":
    [(key, file_shape, model_shape), ...]}``; ``hints`` lists likely causes.
    Missing/shape keys are our (diffusers) names; unknown keys are the names as
    they appear in the file.
    """

    MAX_EXAMPLES = 5

    def __init__(self, title: str, problems: Mapping[str, _Problems], hints: Sequence[str] = ()):
        self.title = title
        self.report = {
            c: {"missing": list(p.missing), "unknown": list(p.unknown), "shape": list(p.shape)}
            for c, p in problems.items()
            if p
        }
        self.hints = list(hints)
        super().__init__(self._format())

    @property
    def components(self) -> List[str]:
        return list(self.report)

    def _format(self) -> str:
        n = self.MAX_EXAMPLES

        def examples(items: List[str]) -> str:
            more = f", … (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(items[:n]) + more

        lines = [self.title]
        for comp in sorted(self.report, key=_order_key):
            rep = self.report[comp]
            counts = []
            if rep["missing"]:
                counts.append(f"{len(rep['missing'])} missing")
            if rep["unknown"]:
                counts.append(f"{len(rep['unknown'])} unknown")
            if rep["shape"]:
                counts.append(f"{len(rep['shape'])} wrong shape")
            label = "unrecognised keys" if comp == "other" else comp
            lines.append(f"  [{label}] " + ", ".join(counts))
            if rep["missing"]:
                lines.append("      missing: " + examples(rep["missing"]))
            if rep["unknown"]:
                lines.append("      unknown: " + examples(rep["unknown"]))
            if rep["shape"]:
                shapes = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in rep["shape"]]
                lines.append("      wrong shape: " + examples(shapes))
        for hint in self.hints:
            lines.append(f"Hint: {hint}")
        return "\n".join(lines)


def _order_key(component: str) -> int:
    return _ORDER.index(component) if component in _ORDER else len(_ORDER)


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


def detect_kind(state_dict: Iterable[str]) -> str:
    """``"main"`` when view-consistency (motion) modules are present, else ``"back_view"``."""
    return MAIN if any(MOTION_MARK in k for k in state_dict) else BACK_VIEW


def sidecar_config_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """``foo.th`` → ``foo.config.json``: optional config next to a non-official (e.g. tiny) checkpoint."""
    p = Path(os.fspath(checkpoint))
    return p.with_name(p.stem + ".config.json")


def infer_config(state_dict: Mapping[str, object], kind: Optional[str] = None) -> BackboneConfig:
    """Config of an official-layout checkpoint from its tensor shapes.

    320-wide UNets are the released SD1.5-sized models → :func:`official_config`.
    Other widths are reconstructed from shapes (block widths, context dim, VAE
    widths, CLIP size, ControlNet hint widths, PE length). Head counts and
    GroupNorm groups cannot be read from shapes: they are taken from
    :func:`tiny_config` when the widths equal it, else SD1.5's (8 heads, 32
    groups, CLIP head size 64). Values are tensors or shapes.
    """
    kind = kind or detect_kind(state_dict)

    def shape(key: str) -> tuple:
        if key not in state_dict:
            raise ValueError(
                f"cannot infer the model config: {key!r} is missing from the checkpoint; pass config= "
                "or put a <checkpoint>.config.json next to it"
            )
        v = state_dict[key]
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    first = shape(UNET_PREFIX + "input_blocks.0.0.weight")
    if first[0] == 320:
        return official_config(kind)
    channels = [shape(f"{UNET_PREFIX}input_blocks.{i}.0.in_layers.2.weight")[0] for i in (1, 4, 7, 10)]
    context = shape(f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")[1]
    vae_channels = [shape(f"{VAE_PREFIX}encoder.down.{i}.block.0.conv1.weight")[0] for i in range(4)]
    hidden = shape(CLIP_PREFIX + "text_model.embeddings.token_embedding.weight")[1]
    layer_re = re.compile(re.escape(CLIP_PREFIX) + r"text_model\.encoder\.layers\.(\d+)\.")
    layers = len({m.group(1) for m in map(layer_re.match, state_dict) if m})
    intermediate = shape(CLIP_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight")[0]
    hint = [shape(f"{POSE_PREFIX}input_hint_block.{i}.weight")[0] for i in (0, 4, 8, 12)]

    tiny = tiny_config(kind)
    is_tiny_unet = channels == list(tiny.unet["block_out_channels"]) and context == tiny.context_dim
    is_tiny_vae = vae_channels == list(tiny.vae["block_out_channels"])
    is_tiny_clip = hidden == tiny.text_encoder["hidden_size"]
    heads = tiny.unet["attention_head_dim"] if is_tiny_unet else 8
    groups = tiny.unet["norm_num_groups"] if is_tiny_unet else 32
    image_size = tiny.image_size if (is_tiny_unet and is_tiny_vae) else 512
    unet = sd15_unet(channels=channels, context_dim=context, heads=heads, groups=groups, sample_size=image_size // 8)
    temporal = None
    if kind == MAIN:
        pe_key = next((k for k in state_dict if MOTION_MARK in k and k.endswith("pos_encoder.pe")), None)
        max_views = shape(pe_key)[1] if pe_key else 24
        t_heads = tiny.temporal.num_heads if is_tiny_unet else 8
        temporal = TemporalConfig(num_heads=t_heads, max_views=max_views, norm_num_groups=groups)
    return BackboneConfig(
        kind=kind,
        unet=unet,
        controlnet=sd15_controlnet(unet, hint_channels=hint),
        vae=sd15_vae(channels=vae_channels,
                     groups=tiny.vae["norm_num_groups"] if is_tiny_vae else 32, sample_size=image_size),
        text_encoder=clip_l_text(
            hidden=hidden,
            layers=layers,
            heads=tiny.text_encoder["num_attention_heads"] if is_tiny_clip else max(1, hidden // 64),
            intermediate=intermediate,
        ),
        temporal=temporal,
        image_size=image_size,
    )


# =========================================================================== #
# Expected keys of our model
# =========================================================================== #
def _config_key(config: BackboneConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=8)
def _expected_shapes_cached(config_json: str) -> Dict[str, Dict[str, torch.Size]]:
    from transformers import CLIPTextConfig, CLIPTextModel

    from .model import DiffStyle360Model

    config = BackboneConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = DiffStyle360Model(config)
        clip = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
    out = {}
    for comp in ("unet", "temporal", "appearance", "pose_controlnet", "vae"):
        module = getattr(model, comp)
        if module is not None:
            out[comp] = {k: v.shape for k, v in module.state_dict().items()}
    out["text_encoder"] = {k: v.shape for k, v in clip.state_dict().items()}
    out["text_embedding"] = {"text_embedding": model.text_embedding.shape}
    return out


def expected_shapes(config: BackboneConfig) -> Dict[str, Dict[str, torch.Size]]:
    """``{component: {key: shape}}`` of our model for ``config`` (built on the meta device, no memory).

    Components: ``unet``, ``temporal`` (main only), ``appearance``,
    ``pose_controlnet``, ``vae``, ``text_encoder`` (transformers
    ``CLIPTextModel`` keys) and ``text_embedding``. A style module has the
    ``appearance`` keys.
    """
    return {c: dict(d) for c, d in _expected_shapes_cached(_config_key(config)).items()}


# =========================================================================== #
# Official → ours (name level)
# =========================================================================== #
class _Tag:
    """Stand-in for a tensor inside diffusers' converters: remembers the file key.

    The converters only move values between dict keys and, for the VAE's 1×1
    conv attention weights, index ``[:, :, 0, 0]``; a tag supports exactly that.
    """

    __slots__ = ("key", "shape", "source_shape")

    def __init__(self, key: str, shape: Sequence[int], source_shape: Optional[Sequence[int]] = None):
        self.key = key
        self.shape = torch.Size(shape)
        self.source_shape = torch.Size(source_shape if source_shape is not None else shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def squeezed(self) -> bool:
        return self.shape != self.source_shape

    def __getitem__(self, index) -> "_Tag":
        full = slice(None)
        if (
            not isinstance(index, tuple)
            or len(index) > len(self.shape)
            or any(i != full for i in index[:2])
            or any(not isinstance(i, int) or i != 0 for i in index[2:])
        ):
            raise TypeError(f"unexpected indexing {index!r} of {self.key} during conversion")
        return _Tag(self.key, tuple(self.shape[:2]) + tuple(self.shape[len(index):]), self.source_shape)

    # Other diffusers versions squeeze or reshape instead of indexing; same meaning.
    def squeeze(self, *dims) -> "_Tag":
        if not dims:
            dims = tuple(i for i, n in enumerate(self.shape) if n == 1)
        dims = {d % len(self.shape) for d in dims}
        return _Tag(self.key, [n for i, n in enumerate(self.shape) if i not in dims or n != 1], self.source_shape)

    def reshape(self, *shape) -> "_Tag":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        if math.prod(shape) != math.prod(self.shape) or -1 in shape:
            raise TypeError(f"unexpected reshape {shape} of {self.key} during conversion")
        return _Tag(self.key, shape, self.source_shape)

    view = reshape


@dataclass
class KeyMap:
    """Result of :func:`map_official_keys`.

    ``mapping[component][our_key]`` is the file key and shapes it comes from;
    ``unknown[component]`` lists file keys that map to nothing of ours;
    ``ignored`` the deliberately skipped keys (:data:`IGNORED_KEYS`).
    """

    mapping: Dict[str, Dict[str, _Tag]]
    unknown: Dict[str, List[str]]
    ignored: List[str]

    def official_key(self, component: str, key: str) -> str:
        return self.mapping[component][key].key


def _shape_of(value) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _run_converter(fn, prefix: str, entries: Mapping[str, tuple], config: dict, out_prefix: str = ""):
    """Run a diffusers converter on tags of ``{file_key: shape}`` re-prefixed as ``prefix``."""
    tagged = {prefix + k: _Tag(full, s) for k, (full, s) in entries.items()}
    converted = fn(tagged, config)
    result = {}
    for key, tag in converted.items():
        if tag is None:  # the converters emit None for keys absent from the file
            continue
        if not isinstance(tag, _Tag):
            raise TypeError(f"unexpected converter output for {key}")
        result[out_prefix + key] = tag
    return result


def _clip_model_prefix(config: BackboneConfig) -> str:
    """``"text_model."`` when the installed ``CLIPTextModel`` nests its weights under
    ``text_model`` (transformers < 5), ``""`` when it does not (transformers 5)."""
    keys = expected_shapes(config)["text_encoder"]
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def _clip_key_to_ours(key: str, model_prefix: str) -> str:
    """Official CLIP key (``text_model.*``, after the LDM prefix) → installed transformers' name."""
    bare = key[len("text_model."):] if key.startswith("text_model.") else key
    return model_prefix + bare


def map_official_keys(shapes: Mapping[str, object], config: BackboneConfig) -> KeyMap:
    """Name-level map of an official checkpoint (``{key: tensor or shape}``) onto our components.

    No tensors are touched; :func:`convert_official` applies the map.
    """
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    groups: Dict[str, Dict[str, tuple]] = {c: {} for c in ("unet", "appearance", "pose_controlnet", "vae")}
    mapping: Dict[str, Dict[str, _Tag]] = {c: {} for c in CONVERTED_COMPONENTS}
    unknown: Dict[str, List[str]] = {}
    ignored: List[str] = []

    def add_unknown(comp: str, key: str) -> None:
        unknown.setdefault(comp, []).append(key)

    clip_prefix = _clip_model_prefix(config)
    for key, value in shapes.items():
        shp = _shape_of(value)
        if key in IGNORED_KEYS:
            ignored.append(key)
        elif key.startswith(UNET_PREFIX) and MOTION_MARK in key:
            # Removed before the UNet converter: it counts blocks by substring
            # ("input_blocks" also matches "input_blocks_motion_module").
            try:
                mapping["temporal"][official_motion_key_to_ours(key, UNET_PREFIX)] = _Tag(key, shp)
            except ValueError:
                add_unknown("temporal", key)
        elif key.startswith(UNET_PREFIX):
            groups["unet"][key[len(UNET_PREFIX):]] = (key, shp)
        elif key.startswith(REFERENCE_PREFIX):
            groups["appearance"][key[len(REFERENCE_PREFIX):]] = (key, shp)
        elif key.startswith(POSE_PREFIX):
            groups["pose_controlnet"][key[len(POSE_PREFIX):]] = (key, shp)
        elif key.startswith(VAE_PREFIX):
            groups["vae"][key[len(VAE_PREFIX):]] = (key, shp)
        elif key.startswith(CLIP_PREFIX):
            mapping["text_encoder"][_clip_key_to_ours(key[len(CLIP_PREFIX):], clip_prefix)] = _Tag(key, shp)
        else:
            add_unknown("other", key)

    unet_cfg = config.unet
    if groups["unet"]:
        mapping["unet"] = _run_converter(convert_ldm_unet_checkpoint, UNET_PREFIX, groups["unet"], unet_cfg)
    if groups["appearance"]:
        # The reference UNet uses plain UNet key names: same converter, re-prefixed.
        mapping["appearance"] = _run_converter(
            convert_ldm_unet_checkpoint, UNET_PREFIX, groups["appearance"], unet_cfg, out_prefix="unet."
        )
    if groups["pose_controlnet"]:
        # The stock ControlNet converter expects the "control_model." prefix.
        mapping["pose_controlnet"] = _run_converter(
            convert_controlnet_checkpoint, "control_model.", groups["pose_controlnet"], config.controlnet,
            out_prefix="net.",
        )
    if groups["vae"]:
        mapping["vae"] = _run_converter(convert_ldm_vae_checkpoint, VAE_PREFIX, groups["vae"], config.vae)

    # File keys the converters silently dropped are unknown; a file key used twice is a converter bug.
    for comp, entries in groups.items():
        used: Dict[str, str] = {}
        for our_key, tag in mapping[comp].items():
            if tag.key in used:
                raise RuntimeError(f"converter mapped {tag.key} to both {used[tag.key]} and {our_key}")
            used[tag.key] = our_key
        for full, _ in entries.values():
            if full not in used:
                add_unknown(comp, full)
    return KeyMap(mapping=mapping, unknown=unknown, ignored=ignored)


def _check_map(keymap: KeyMap, config: BackboneConfig, has_motion: bool, source: str) -> None:
    expected = expected_shapes(config)
    problems: Dict[str, _Problems] = {}
    for comp, keys in keymap.unknown.items():
        problems.setdefault(comp, _Problems()).unknown.extend(keys)
    for comp in CONVERTED_COMPONENTS:
        want = expected.get(comp, {})
        got = keymap.mapping.get(comp, {})
        p = problems.setdefault(comp, _Problems())
        for our_key, tag in got.items():
            if our_key not in want:
                p.unknown.append(tag.key)
            elif tag.shape != want[our_key] or (tag.squeezed and math.prod(tag.source_shape[2:]) != 1):
                model_shape = tuple(want[our_key]) + tuple(tag.source_shape[2:]) if tag.squeezed else want[our_key]
                p.shape.append((our_key, tuple(tag.source_shape), tuple(model_shape)))
        p.missing.extend(k for k in want if k not in got)
    if any(problems.values()):
        hints = _hints(problems, keymap, config, has_motion, expected)
        raise WeightMismatchError(
            f"checkpoint {source} does not match the {config.kind!r} DiffStyle360 model "
            f"(UNet widths {list(config.unet['block_out_channels'])}):",
            problems,
            hints,
        )


def _hints(problems, keymap: KeyMap, config: BackboneConfig, has_motion: bool, expected) -> List[str]:
    hints = []
    if config.temporal is not None and not has_motion and keymap.mapping.get("unet"):
        hints.append(
            "the file has no view-consistency (motion) modules: this looks like a back_head checkpoint "
            f"({OFFICIAL_FILES[BACK_VIEW]}) but a main model was requested; convert it with kind='back_view' "
            "(CLI: --kind back_view)"
        )
    if config.temporal is None and has_motion:
        hints.append(
            "the file has view-consistency (motion) modules: this looks like a model_state checkpoint "
            f"({OFFICIAL_FILES[MAIN]}) given as the back-view model; convert it with kind='main' (CLI: --kind main)"
        )
    n_shape = sum(len(p.shape) for p in problems.values())
    if n_shape and n_shape >= 0.2 * sum(len(v) for v in keymap.mapping.values()):
        hints.append(
            "most shapes differ: the checkpoint's widths do not match the config (e.g. a tiny/test checkpoint "
            "read with the full-size config or the reverse); keep its <name>.config.json next to it or pass config="
        )
    absent = [
        _OFFICIAL_PREFIX_OF[c] for c in CONVERTED_COMPONENTS
        if c in expected and c != "temporal" and not keymap.mapping.get(c)
    ]
    if absent:
        hints.append(
            f"no {', '.join(repr(a + '*') for a in absent)} keys at all: this is not a complete DiffPortrait360 "
            f"checkpoint (a plain SD1.5 / ControlNet file?); use {OFFICIAL_FILES[MAIN]} or "
            f"{OFFICIAL_FILES[BACK_VIEW]} from https://huggingface.co/{HF_REPO}"
        )
    return hints


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
# Ours → official (the inverse, for exports and the tiny test checkpoints)
# =========================================================================== #
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def _unet_key_to_ldm(key: str, unet_cfg: dict) -> str:
    """diffusers UNet/ControlNet key → LDM key (inverse of diffusers' converters, SD1.5 layout)."""
    per = unet_cfg["layers_per_block"] + 1
    simple = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "controlnet_mid_block.": "middle_block_out.0.",
        "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
    }
    for ours, ldm in simple.items():
        if key.startswith(ours):
            return ldm + key[len(ours):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        i = b * per + j + 1
        return f"input_blocks.{i}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * per}.0.op.{m.group(2)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        if m.group(1) == "resnets":
            return f"middle_block.{2 * int(m.group(2))}.{_resnet_rest(m.group(3))}"
        return f"middle_block.{2 * int(m.group(2)) + 1}.{m.group(3)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        i = b * per + j
        return f"output_blocks.{i}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if m:
        b = int(m.group(1))
        has_attn = unet_cfg["up_block_types"][b].startswith("CrossAttn")
        return f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv.{m.group(2)}"
    m = re.match(r"controlnet_down_blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    m = re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"input_hint_block.{2 * (int(m.group(1)) + 1)}.{m.group(2)}"
    m = re.match(r"controlnet_cond_embedding\.conv_out\.(.+)$", key)
    if m:
        n_blocks = 2 * (len(unet_cfg.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1)
        return f"input_hint_block.{2 * (n_blocks + 1)}.{m.group(1)}"
    raise KeyError(f"no LDM name for UNet/ControlNet key {key!r}")


def _vae_key_to_ldm(key: str, vae_cfg: dict) -> Tuple[str, bool]:
    """diffusers VAE key → (LDM key, needs 1×1-conv unsqueeze)."""
    n_up = len(vae_cfg["up_block_types"])
    for part in ("encoder", "decoder"):
        if key.startswith(part + ".conv_norm_out."):
            return key.replace(".conv_norm_out.", ".norm_out.", 1), False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if m:
        rest = m.group(3).replace("conv_shortcut", "nin_shortcut")
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{rest}", False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if m:
        rest = m.group(3).replace("conv_shortcut", "nin_shortcut")
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.{rest}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if m:
        rest = m.group(3).replace("conv_shortcut", "nin_shortcut")
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{rest}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$",
                 key)
    if m:
        name = _VAE_ATTN_TO_LDM[m.group(2)]
        return f"{m.group(1)}.mid.attn_1.{name}.{m.group(3)}", m.group(2) != "group_norm" and m.group(3) == "weight"
    return key, False  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def to_official(
    components: Union[nn.Module, Mapping[str, Mapping[str, torch.Tensor]]],
    config: Optional[BackboneConfig] = None,
    text_encoder: Optional[Mapping[str, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Our weights → one flat official-layout state dict (LDM key names).

    ``components`` is a :class:`DiffStyle360Model` or ``{component: state
    dict}`` (any of ``unet``, ``temporal``, ``appearance``, ``pose_controlnet``,
    ``vae``, ``text_encoder``); ``text_encoder`` adds CLIP weights. The result
    is checked against the forward map: converting it back with diffusers'
    converters yields exactly the input keys (else RuntimeError). Schedule
    buffers and ``position_ids`` are not added.
    """
    if isinstance(components, nn.Module):
        config = components.config
        comps = {c: getattr(components, c).state_dict() for c in CONVERTED_COMPONENTS[:-1]
                 if getattr(components, c) is not None}
    else:
        if config is None:
            raise ValueError("to_official needs config= with a dict of components")
        comps = {c: v for c, v in components.items() if c in CONVERTED_COMPONENTS}
    if text_encoder is not None:
        comps["text_encoder"] = text_encoder
    flat: Dict[str, torch.Tensor] = {}
    origin: Dict[str, Tuple[str, str]] = {}
    for comp, sd in comps.items():
        for key, tensor in sd.items():
            if comp == "unet":
                name = UNET_PREFIX + _unet_key_to_ldm(key, config.unet)
            elif comp == "temporal":
                name = our_motion_key_to_official(key, UNET_PREFIX)
            elif comp == "appearance":
                if not key.startswith("unet."):
                    raise KeyError(f"appearance key {key!r} does not start with 'unet.'")
                name = REFERENCE_PREFIX + _unet_key_to_ldm(key[len("unet."):], config.unet)
            elif comp == "pose_controlnet":
                if not key.startswith("net."):
                    raise KeyError(f"pose_controlnet key {key!r} does not start with 'net.'")
                name = POSE_PREFIX + _unet_key_to_ldm(key[len("net."):], config.controlnet)
            elif comp == "vae":
                ldm, unsqueeze = _vae_key_to_ldm(key, config.vae)
                name = VAE_PREFIX + ldm
                if unsqueeze:
                    tensor = tensor.reshape(tuple(tensor.shape) + (1, 1))
            else:  # text_encoder: official files always use the transformers-4 "text_model." names
                name = CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)
            if name in flat:
                raise RuntimeError(f"{comp}.{key} and {origin[name]} both map to {name}")
            flat[name] = tensor
            origin[name] = (comp, key)
    # Self-check: the forward (diffusers) map must send every name back where it came from.
    keymap = map_official_keys(flat, config)
    back = {(c, k): tag.key for c, entries in keymap.mapping.items() for k, tag in entries.items()}
    lost = {n: o for n, o in origin.items() if back.get(o) != n}
    if lost or any(keymap.unknown.values()):
        example = next(iter(lost.items()), None)
        raise RuntimeError(f"inverse key map is not the inverse of the converters: {example} {keymap.unknown}")
    return flat


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


def _read_safetensors(path: Path, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointFileError(
            f"cannot read {path} ({type(exc).__name__}: {str(exc).strip()[:200]}); the file is corrupt or "
            f"incomplete: {_CONVERT_HINT}"
        ) from exc


def _build_model(config: BackboneConfig, with_style: bool, meta: bool):
    from .model import DiffStyle360Model

    if meta:
        with torch.device("meta"):
            model = DiffStyle360Model(config)
            if with_style:
                model.add_style_module()
    else:
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
        for comp, unknown in keymap.unknown.items():
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
    if not path.is_file():
        raise FileNotFoundError(
            f"style module {path} not found (a DiffStyle360 style module .safetensors with the reference "
            "UNet's keys, or an official-layout file with control_model.* keys)"
        )
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path, device)
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
            config = BackboneConfig.from_dict(json.loads(sidecar.read_text()))
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
