"""Model configuration: plain dicts of each component's diffusers config (from_pretrained style).

One ``config.json`` describes a converted model folder; each component is
rebuilt from its dict (the kwargs of its diffusers / transformers class, as
``ConfigMixin`` writes them) and filled from ``<component>.safetensors``. The
SD1.5 numbers follow the official yamls (facts §2, §4, §5); ``tiny_config``
keeps the same topology (16 self-attention layers, 8 + 12 view-consistency
modules) at a size that runs in milliseconds on a CPU.

Also the one list of components (:data:`COMPONENTS`; the weight loader, the
layout, the official key map, the catalog and the compiler derive theirs from
it), the weight-set folder names, and the one set of safetensors metadata keys
our files carry (:func:`file_metadata`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from .files import write_text_atomic

MAIN = "main"
BACK_VIEW = "back_view"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- #
# Folder layout: the one list of components (weights, layout, official_keys and
# catalog derive theirs from these names)
# --------------------------------------------------------------------------- #
#: Module-valued parts of a ``DiffStyle360Model`` (attribute names), in the order
#: reports list them. Each is also the stem of ``<name>.safetensors`` in a
#: converted folder.
MODULE_COMPONENTS = ("unet", "temporal", "appearance", "style_appearance", "pose_controlnet", "vae")
#: The constant empty-prompt embedding (a buffer, not a module): CLIP runs once, at conversion (facts §5).
TEXT_EMBEDDING = "text_embedding"
#: Every component of a converted folder / model.
COMPONENTS = MODULE_COMPONENTS + (TEXT_EMBEDDING,)
#: Components a complete folder may lack: the DiffStyle360 style module (without it the
#: model is training-free). ``temporal`` is required exactly when the config has one.
OPTIONAL_COMPONENTS = ("style_appearance",)
WEIGHTS_SUFFIX = ".safetensors"
#: Where a weight set keeps its camera-condition renders, searched in this order
#: (the official inference data has ``cam_condition/sphere32``).
CONDITION_SUBDIRS = ("cam_condition/sphere32", "cam_condition", "sphere32")
#: Views in the official sphere32 turntable (yaw 360°·k/32, k = 0 frontal, 16 the back).
OFFICIAL_VIEWS = 32
#: The component a trained module file holds, per training mode (``train --mode``).
TRAINED_COMPONENTS = {"style_module": "style_appearance", "finetune_appearance": "appearance"}
#: Key prefix of the view-consistency weights inside a trained module file (beside the ``unet.*`` keys).
TRAINED_TEMPORAL_PREFIX = "temporal."

# safetensors metadata of every file we write (weights.write_component_file, training.checkpoint)
META_COMPONENT = "diffstyle360_component"
META_FORMAT = "diffstyle360_format"
META_TRAINING = "diffstyle360_training"  # trained files: the JSON of the recipe (pairing, mask mode, τ, …)

#: CLIP text context length of SD1.5 (``openai/clip-vit-large-patch14``): the
#: empty-prompt embedding is ``[1, 77, context_dim]``.
CLIP_CONTEXT_LENGTH = 77


def component_file(component: str) -> str:
    """``"unet"`` → ``"unet.safetensors"``: a component's file in a converted folder."""
    return component + WEIGHTS_SUFFIX


def file_metadata(component: str, training: Optional[Mapping[str, object]] = None) -> Dict[str, str]:
    """The safetensors metadata of a file we write: its component, our format version, the training recipe."""
    meta = {"format": "pt", META_COMPONENT: component, META_FORMAT: str(FORMAT_VERSION)}
    if training is not None:
        meta[META_TRAINING] = json.dumps(training, sort_keys=True)
    return meta


def split_trained_state(state: Mapping[str, object]) -> Tuple[dict, dict]:
    """A trained module file's tensors → (appearance ``unet.*`` keys, view-consistency keys without the prefix)."""
    n = len(TRAINED_TEMPORAL_PREFIX)
    appearance = {k: v for k, v in state.items() if not k.startswith(TRAINED_TEMPORAL_PREFIX)}
    temporal = {k[n:]: v for k, v in state.items() if k.startswith(TRAINED_TEMPORAL_PREFIX)}
    return appearance, temporal



_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def sd15_unet(channels=(320, 640, 1280, 1280), context_dim=768, heads=8, groups=32, sample_size=64) -> dict:
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=list(_DOWN),
        up_block_types=list(_UP),
        block_out_channels=list(channels),
        layers_per_block=2,
        cross_attention_dim=context_dim,
        attention_head_dim=heads,
        norm_num_groups=groups,
    )


def sd15_controlnet(unet: dict, hint_channels=(16, 32, 96, 256)) -> dict:
    keys = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
            "cross_attention_dim", "attention_head_dim", "norm_num_groups")
    net = {k: copy.deepcopy(unet[k]) for k in keys}
    net.update(conditioning_channels=3, conditioning_embedding_out_channels=list(hint_channels))
    return net


def sd15_vae(channels=(128, 256, 512, 512), groups=32, sample_size=512) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(channels),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=sample_size,
        scaling_factor=0.18215,
    )


def clip_l_text(hidden=768, layers=12, heads=12, intermediate=3072) -> dict:
    """CLIP ViT-L/14 text tower (SD1.5's FrozenCLIPEmbedder), transformers CLIPTextConfig kwargs."""
    return dict(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=hidden,
    )


@dataclass
class TemporalConfig:
    """View-consistency modules (facts §4): AnimateDiff-v1 blocks, PE up to 24 views, trained on windows of 8."""

    num_heads: int = 8
    max_views: int = 24
    window: int = 8
    norm_num_groups: int = 32


@dataclass
class ScheduleConfig:
    """LDM schedule of the official yaml: scaled-linear betas, eps prediction (facts §1)."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    prediction: str = "epsilon"


@dataclass
class BackboneConfig:
    kind: str
    unet: dict
    controlnet: dict
    vae: dict
    text_encoder: dict
    temporal: Optional[TemporalConfig]
    image_size: int = 512
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    format_version: int = FORMAT_VERSION

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def context_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def folder_components(self, with_style: bool = False) -> Tuple[str, ...]:
        """Components a converted folder of this config holds (in :data:`COMPONENTS` order).

        ``temporal`` only for the main model; ``style_appearance`` only ``with_style``.
        """
        skip = {"temporal"} if self.temporal is None else set()
        if not with_style:
            skip.update(OPTIONAL_COMPONENTS)
        return tuple(c for c in COMPONENTS if c not in skip)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BackboneConfig":
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"config format {version} is newer than this DiffStyle360 ({FORMAT_VERSION}); update the pack")
        temporal = data.pop("temporal", None)
        schedule = data.pop("schedule", None) or {}
        try:
            config = cls(
                temporal=TemporalConfig(**temporal) if temporal else None,
                schedule=ScheduleConfig(**schedule),
                **data,
            )
        except TypeError as err:  # unknown or missing fields: not a DiffStyle360 config
            raise ValueError(f"not a DiffStyle360 model config ({err})") from None
        if config.kind not in (MAIN, BACK_VIEW):
            raise ValueError(f"not a DiffStyle360 model config (kind {config.kind!r})")
        check_config_values(config)
        return config

    def save(self, folder: Path) -> None:
        """Write ``folder/config.json`` atomically (a plain dict per component, like diffusers' configs)."""
        write_text_atomic(Path(folder, CONFIG_NAME), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "BackboneConfig":
        path = Path(folder, CONFIG_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a converted DiffStyle360 model folder")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ConfigValueError as err:
            raise ConfigValueError(
                f"{path}: {err}; fix that field, or convert the official checkpoint into this folder again"
            ) from None
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"{path}: {err}. This folder does not hold a model written by `python -m diffstyle360_core "
                "convert`; re-run convert into it"
            ) from None


# --------------------------------------------------------------------------- #
# Value checks: a config.json is read before any weight, so a wrong field is named there
# --------------------------------------------------------------------------- #
#: Prediction types the schedulers (diffusers) accept.
PREDICTIONS = ("epsilon", "v_prediction", "sample")


class ConfigValueError(ValueError):
    """A field of a model config has the wrong type or lies outside its range; the message names the field."""


def _field(where: str, value, want: str) -> ConfigValueError:
    return ConfigValueError(f"field {where!r} must be {want}, got {value!r:.80}")


def _positive_int(value, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _field(where, value, f"an integer >= {low}")
    return value


def _channels(section: dict, name: str, where: str) -> list:
    value = section.get(name)
    if not isinstance(value, list) or not value:
        raise _field(f"{where}.{name}", value, "a non-empty list of channel counts")
    for i, c in enumerate(value):
        _positive_int(c, f"{where}.{name}[{i}]")
    return value


def _groups(section: dict, where: str, channels: list) -> None:
    groups = _positive_int(section.get("norm_num_groups"), f"{where}.norm_num_groups")
    if any(c % groups for c in channels):
        raise _field(f"{where}.norm_num_groups", groups, f"a divisor of every channel count {channels}")


def _section(config: "BackboneConfig", name: str) -> dict:
    value = getattr(config, name)
    if not isinstance(value, dict):
        raise _field(name, value, "a JSON object (the component's diffusers / transformers config)")
    return value


def check_config_values(config: "BackboneConfig") -> None:
    """Types and ranges of the fields this package reads or builds from, before any weight is read.

    Refuses with :class:`ConfigValueError` naming the field (``unet.block_out_channels[2]``, …);
    whatever diffusers itself still refuses is reported by the loader as the config's fault.
    """
    unet, controlnet, vae, text = (_section(config, n) for n in ("unet", "controlnet", "vae", "text_encoder"))
    unet_channels = _channels(unet, "block_out_channels", "unet")
    _groups(unet, "unet", unet_channels)
    _positive_int(unet.get("layers_per_block"), "unet.layers_per_block")
    _positive_int(unet.get("cross_attention_dim"), "unet.cross_attention_dim")
    for name in ("in_channels", "out_channels"):
        if unet.get(name, 4) != 4:
            raise _field(f"unet.{name}", unet.get(name), "4 (the latent channels of SD1.5's VAE)")
    _channels(controlnet, "block_out_channels", "controlnet")
    _channels(controlnet, "conditioning_embedding_out_channels", "controlnet")
    vae_channels = _channels(vae, "block_out_channels", "vae")
    _groups(vae, "vae", vae_channels)
    if vae.get("latent_channels", 4) != 4:
        raise _field("vae.latent_channels", vae.get("latent_channels"), "4")
    scaling = vae.get("scaling_factor", 0.18215)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not 0 < scaling < float("inf"):
        raise _field("vae.scaling_factor", scaling, "a positive number")
    _positive_int(text.get("hidden_size"), "text_encoder.hidden_size")
    factor = 2 ** (len(vae_channels) - 1) * 2 ** (len(unet_channels) - 1)
    size = _positive_int(config.image_size, "image_size")
    if size % factor:
        raise _field("image_size", size, f"a multiple of {factor} (VAE and UNet downsampling)")
    if config.temporal is not None:
        t = config.temporal
        _positive_int(t.num_heads, "temporal.num_heads")
        _positive_int(t.norm_num_groups, "temporal.norm_num_groups")
        for c in unet_channels:
            if c % t.num_heads or c % t.norm_num_groups:
                raise _field("temporal.num_heads / norm_num_groups", (t.num_heads, t.norm_num_groups),
                             f"divisors of every UNet channel count {unet_channels}")
        max_views = _positive_int(t.max_views, "temporal.max_views")
        window = _positive_int(t.window, "temporal.window")
        if window > max_views:
            raise _field("temporal.window", window, f"at most temporal.max_views ({max_views})")
    sched = config.schedule
    for name in ("beta_start", "beta_end"):
        value = getattr(sched, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise _field(f"schedule.{name}", value, "a number between 0 and 1")
    if sched.beta_start >= sched.beta_end:
        raise _field("schedule.beta_start", sched.beta_start, f"below schedule.beta_end ({sched.beta_end})")
    _positive_int(sched.num_train_timesteps, "schedule.num_train_timesteps")
    if sched.prediction not in PREDICTIONS:
        raise _field("schedule.prediction", sched.prediction, f"one of {PREDICTIONS}")


def official_config(kind: str = MAIN) -> BackboneConfig:
    """The released DiffPortrait360 models: SD1.5 sizes; ``main`` has the 20 temporal modules."""
    unet = sd15_unet()
    return BackboneConfig(
        kind=kind,
        unet=unet,
        controlnet=sd15_controlnet(unet),
        vae=sd15_vae(),
        text_encoder=clip_l_text(),
        temporal=TemporalConfig() if kind == MAIN else None,
    )


def tiny_config(kind: str = MAIN) -> BackboneConfig:
    """Same topology as ``official_config`` with tiny widths: for tests, demos and CI."""
    unet = sd15_unet(channels=(32, 64, 64, 64), context_dim=32, heads=4, groups=8, sample_size=8)
    return BackboneConfig(
        kind=kind,
        unet=unet,
        controlnet=sd15_controlnet(unet, hint_channels=(8, 8, 16, 16)),
        vae=sd15_vae(channels=(16, 16, 32, 32), groups=8, sample_size=64),
        text_encoder=clip_l_text(hidden=32, layers=2, heads=4, intermediate=64),
        temporal=TemporalConfig(num_heads=4, norm_num_groups=8) if kind == MAIN else None,
        image_size=64,
    )


def small_config(kind: str = MAIN) -> BackboneConfig:
    """SD1.5 topology at widths 64/128/192/192, 128 px: a CPU-sized stand-in with real proportions."""
    config = tiny_config(kind)
    config.unet = sd15_unet(channels=(64, 128, 192, 192), context_dim=64, heads=8, groups=32, sample_size=16)
    config.controlnet = sd15_controlnet(config.unet, hint_channels=(16, 32, 64, 64))
    config.text_encoder["hidden_size"] = 64
    config.image_size = 128
    if config.temporal is not None:
        config.temporal.num_heads, config.temporal.norm_num_groups = 8, 32
    return config


#: Model sizes by name (``make-tiny --size``, ``python -m bench --size``): sd15 = the released models' shapes.
SIZES = {"tiny": tiny_config, "small": small_config, "sd15": official_config}
