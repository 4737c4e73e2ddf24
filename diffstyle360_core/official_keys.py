"""The official DiffPortrait360 checkpoint layout, as names and shapes only.

The official key table is the weight-compatibility spec (facts §5,
``reference/dp360-keys-notes.md``): which LDM prefix feeds which of our
components, which keys are deliberately ignored, how every official key maps
to our (diffusers) name and back, and how mismatches are grouped and reported.
Kept apart from :mod:`.weights` so the spec reads on its own; no file I/O here.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import (
    BACK_VIEW,
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
    "UNET_PREFIX",
    "REFERENCE_PREFIX",
    "POSE_PREFIX",
    "VAE_PREFIX",
    "CLIP_PREFIX",
    "MOTION_MARK",
    "POSITION_IDS",
    "SCHEDULE_KEYS",
    "IGNORED_KEYS",
    "CONVERTED_COMPONENTS",
    "EMPTY_PROMPT_IDS",
    "WeightMismatchError",
    "detect_kind",
    "infer_config",
    "expected_shapes",
    "KeyMap",
    "map_official_keys",
    "to_official",
]

HF_REPO = "gym890/diffportrait360"
OFFICIAL_FILES = {MAIN: "model_state-340000.th", BACK_VIEW: "back_head-230000.th"}

#: The official release (HF ``gym890/diffportrait360``: ``model_state-340000.th``
#: for the main model, ``back_head-230000.th`` for the back-view model) is one
#: flat ``torch.save(state_dict)`` of the whole LDM module, with original LDM key
#: names. Official prefix → our component:
#:
#: * ``model.diffusion_model.*`` (main UNet) → ``unet`` (diffusers names);
#: * ``model.diffusion_model.*_motion_module*`` (view-consistency modules) → ``temporal``;
#: * ``control_model.*`` (reference UNet, no ``out.*``) → ``appearance`` (``unet.*``);
#: * ``pose_control_model.*`` (pose ControlNet) → ``pose_controlnet`` (``net.*``);
#: * ``first_stage_model.*`` (KL-f8 VAE) → ``vae``;
#: * ``cond_stage_model.transformer.*`` (CLIP ViT-L/14 text tower) → ``text_encoder``, used once;
#: * ``betas`` … ``logvar`` (schedule buffers) → ignored (:data:`IGNORED_KEYS`).
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


# =========================================================================== #
# Errors
# =========================================================================== #
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
# Layout detection
# =========================================================================== #
def detect_kind(state_dict: Iterable[str]) -> str:
    """``"main"`` when view-consistency (motion) modules are present, else ``"back_view"``."""
    return MAIN if any(MOTION_MARK in k for k in state_dict) else BACK_VIEW


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
# UNet, ControlNet and VAE keys go through diffusers' own single-file converters
# (``diffusers.loaders.single_file_utils``). They run on lightweight *key tags*
# instead of tensors, so conversion is a pure name map: every file key is either
# consumed, deliberately ignored, or reported as unknown, and the tensors
# themselves are never copied.
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
        elif key.startswith(CLIP_PREFIX):
            mapping["text_encoder"][_clip_key_to_ours(key[len(CLIP_PREFIX):], clip_prefix)] = _Tag(key, shp)
        else:
            comp = next((c for c in groups if key.startswith(_OFFICIAL_PREFIX_OF[c])), None)
            if comp is None:
                add_unknown("other", key)
            else:
                groups[comp][key[len(_OFFICIAL_PREFIX_OF[comp]):]] = (key, shp)

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


def _vae_resnet_rest(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


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
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        side, b, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        blocks, i = ("input_blocks", b * per + j + 1) if side == "down" else ("output_blocks", b * per + j)
        return f"{blocks}.{i}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"{blocks}.{i}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * per}.0.op.{m.group(2)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        if m.group(1) == "resnets":
            return f"middle_block.{2 * int(m.group(2))}.{_resnet_rest(m.group(3))}"
        return f"middle_block.{2 * int(m.group(2)) + 1}.{m.group(3)}"
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
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_vae_resnet_rest(m.group(3))}", False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.{_vae_resnet_rest(m.group(3))}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet_rest(m.group(3))}", False
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
