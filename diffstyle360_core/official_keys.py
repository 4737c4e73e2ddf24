"""The official DiffPortrait360 checkpoint layout, as names and shapes only.

The official key table is the weight-compatibility spec (facts §5,
``reference/dp360-keys-notes.md``): which LDM prefix feeds which of our
components, which keys are deliberately ignored, how every official key maps
to our (diffusers) name, and how mismatches are grouped and reported.
Kept apart from :mod:`.weights` so the spec reads on its own; no file I/O
here, and no model is built here: the shapes our model expects come from
:mod:`.layout`, the inverse map (ours → official, for test checkpoints) lives
with the tiny fixture writer in :mod:`.tiny`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import (
    BACK_VIEW,
    CLIP_CONTEXT_LENGTH,
    MAIN,
    MODULE_COMPONENTS,
    OPTIONAL_COMPONENTS,
    TEXT_EMBEDDING,
    BackboneConfig,
    TemporalConfig,
    clip_l_text,
    official_config,
    sd15_controlnet,
    sd15_unet,
    sd15_vae,
    tiny_config,
)
from .temporal import official_motion_key_to_ours

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
    "TEXT_ENCODER",
    "CONVERTED_COMPONENTS",
    "REPORT_ORDER",
    "CLIP_MODEL_PREFIX",
    "EMPTY_PROMPT_IDS",
    "Problems",
    "WeightMismatchError",
    "compare_shapes",
    "canonical_clip_key",
    "detect_kind",
    "infer_config",
    "KeyMap",
    "map_official_keys",
    "check_map",
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

#: The CLIP text weights of an official file. Not a component of ours: they are
#: only used once, at conversion, to compute ``text_embedding``.
TEXT_ENCODER = "text_encoder"
#: Components an official checkpoint provides (``weights.convert_official``'s output):
#: every required module component (the style module is never in an official file) plus CLIP.
CONVERTED_COMPONENTS = tuple(c for c in MODULE_COMPONENTS if c not in OPTIONAL_COMPONENTS) + (TEXT_ENCODER,)
#: Order of the groups in a :class:`WeightMismatchError`; ``"other"`` = keys of no component.
REPORT_ORDER = MODULE_COMPONENTS + (TEXT_ENCODER, TEXT_EMBEDDING, "other")
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
EMPTY_PROMPT_IDS = (BOS_TOKEN, EOS_TOKEN) + (EOS_TOKEN,) * (CLIP_CONTEXT_LENGTH - 2)

#: CLIP key names of the official files: transformers 4's ``CLIPTextModel`` nests
#: everything under ``text_model.``; transformers 5 does not (``embeddings.*``,
#: ``encoder.*``, ``final_layer_norm.*`` at the top). The key map and the
#: expected shapes use the official (nested) names, whatever is installed; only
#: the code that instantiates ``CLIPTextModel`` adapts (``weights.empty_prompt_embedding``).
CLIP_MODEL_PREFIX = "text_model."


def canonical_clip_key(key: str) -> str:
    """A ``CLIPTextModel`` key of any transformers version → the official (transformers 4) name."""
    return key if key.startswith(CLIP_MODEL_PREFIX) else CLIP_MODEL_PREFIX + key


# =========================================================================== #
# Errors
# =========================================================================== #
@dataclass
class Problems:
    """What is wrong with one component's keys; the building block of :class:`WeightMismatchError`.

    ``missing``: keys the model needs and the file lacks (our names);
    ``unknown``: keys of the file that map to nothing (as named in the file);
    ``shape``: ``(key, file shape, model shape)`` of keys present in both.
    """

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

    def __init__(self, title: str, problems: Mapping[str, Problems], hints: Sequence[str] = ()):
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
    return REPORT_ORDER.index(component) if component in REPORT_ORDER else len(REPORT_ORDER)


def compare_shapes(
    found: Mapping[str, Mapping[str, object]], expected: Mapping[str, Mapping[str, object]]
) -> Dict[str, Problems]:
    """Compare ``{component: {key: tensor or shape}}`` with what a model expects.

    Both sides use our names. A component of ``found`` absent from ``expected``
    has all its keys reported as unknown. Returns one :class:`Problems` per
    component (empty ones included; ``any(result.values())`` says whether
    anything is wrong).
    """
    problems: Dict[str, Problems] = {}
    for comp in sorted(set(found) | set(expected), key=_order_key):
        have = found.get(comp, {})
        want = expected.get(comp)
        p = problems.setdefault(comp, Problems())
        if want is None:
            p.unknown.extend(have)
            continue
        for key, value in have.items():
            if key not in want:
                p.unknown.append(key)
            elif _shape_of(value) != tuple(want[key]):
                p.shape.append((key, _shape_of(value), tuple(want[key])))
        p.missing.extend(k for k in want if k not in have)
    return problems


# =========================================================================== #
# Layout detection
# =========================================================================== #
def detect_kind(state_dict: Iterable[str]) -> str:
    """``"main"`` when view-consistency (motion) modules are present, else ``"back_view"``."""
    return MAIN if any(MOTION_MARK in k for k in state_dict) else BACK_VIEW


def infer_config(state_dict: Mapping[str, object], kind: Optional[str] = None) -> BackboneConfig:
    """Config of an official-layout checkpoint from its tensor shapes.

    UNets as wide as the released ones (first block 320 channels, SD1.5) →
    :func:`official_config`. Other widths are reconstructed from shapes (block widths, context dim, VAE
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

    released = official_config(kind)
    first = shape(UNET_PREFIX + "input_blocks.0.0.weight")
    if first[0] == released.unet["block_out_channels"][0]:
        return released
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


def map_official_keys(shapes: Mapping[str, object], config: BackboneConfig) -> KeyMap:
    """Name-level map of an official checkpoint (``{key: tensor or shape}``) onto our components.

    No tensors are touched; ``weights.convert_official`` applies the map.
    ``text_encoder`` keys are the official CLIP names (``text_model.*``, see
    :data:`CLIP_MODEL_PREFIX`) whatever transformers is installed.
    """
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    groups: Dict[str, Dict[str, tuple]] = {c: {} for c in ("unet", "appearance", "pose_controlnet", "vae")}
    mapping: Dict[str, Dict[str, _Tag]] = {c: {} for c in CONVERTED_COMPONENTS}
    unknown: Dict[str, List[str]] = {}
    ignored: List[str] = []

    def add_unknown(comp: str, key: str) -> None:
        unknown.setdefault(comp, []).append(key)

    clip: Dict[str, _Tag] = {}
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
            clip[key] = _Tag(key, shp)
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
    # diffusers' CLIP converter strips the LDM prefix and gives transformers-4 names
    # (``text_model.*``), which are also ours (see CLIP_MODEL_PREFIX); a file re-saved with
    # transformers-5 names (no ``text_model.``) is brought to the same names.
    for name, tag in convert_ldm_clip_checkpoint(clip).items():
        ours = canonical_clip_key(name)
        if ours in mapping[TEXT_ENCODER]:  # both spellings of one weight in the file
            add_unknown(TEXT_ENCODER, tag.key)
        else:
            mapping[TEXT_ENCODER][ours] = tag

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


def check_map(
    keymap: KeyMap,
    expected: Mapping[str, Mapping[str, Sequence[int]]],
    config: BackboneConfig,
    *,
    source: str,
) -> None:
    """Raise one grouped :class:`WeightMismatchError` unless ``keymap`` fills ``expected`` exactly.

    ``expected``: ``{component: {our key: shape}}`` of the model to fill
    (``layout.expected_shapes(config)``); ``source`` names the file in the
    message. Unknown, missing and mis-shaped keys of every component are
    reported together, with hints at the likely cause (wrong kind, wrong
    config, not a DiffPortrait360 file).
    """
    # every file key with the motion mark lands in "temporal" (mapped or unknown)
    has_motion = bool(keymap.mapping.get("temporal") or keymap.unknown.get("temporal"))
    problems: Dict[str, Problems] = {}
    for comp, keys in keymap.unknown.items():
        problems.setdefault(comp, Problems()).unknown.extend(keys)
    for comp in CONVERTED_COMPONENTS:
        want = expected.get(comp, {})
        got = keymap.mapping.get(comp, {})
        p = problems.setdefault(comp, Problems())
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
            f"({OFFICIAL_FILES[BACK_VIEW]}) but a main model was requested; convert it with kind='back_view'"
        )
    if config.temporal is None and has_motion:
        hints.append(
            "the file has view-consistency (motion) modules: this looks like a model_state checkpoint "
            f"({OFFICIAL_FILES[MAIN]}) given as the back-view model; convert it with kind='main'"
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

