"""Model configuration: plain dicts of each component's diffusers config (from_pretrained style).

One ``config.json`` describes a converted model folder; each component is
rebuilt from its dict (the kwargs of its diffusers / transformers class, as
``ConfigMixin`` writes them) and filled from ``<component>.safetensors``. The
SD1.5 numbers follow the official yamls (facts §2, §4, §5); ``tiny_config``
keeps the same topology (16 self-attention layers, 8 + 12 view-consistency
modules) at a size that runs in milliseconds on a CPU.

Also the one list of components (:data:`COMPONENTS`; the weight loader, the
layout, the official key map and the catalog derive theirs from it), the
weight-set folder names, and the seed-mixing rule :func:`mix_seed`.
"""

from __future__ import annotations

import copy
import json
import operator
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Tuple

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
#: CLIP text context length of SD1.5 (``openai/clip-vit-large-patch14``): the
#: empty-prompt embedding is ``[1, 77, context_dim]``.
CLIP_CONTEXT_LENGTH = 77


# --------------------------------------------------------------------------- #
# Seeds
# --------------------------------------------------------------------------- #
#: Sub-seeds from :func:`mix_seed` lie in ``[0, SEED_MODULUS)``, which every ``torch.Generator`` accepts.
SEED_MODULUS = 2**63
# A prime multiplier. Changing it would change every derived stream (seeds would no
# longer reproduce earlier results), so it is fixed.
_SEED_MULTIPLIER = 1_000_003


def mix_seed(seed: int, *parts: int) -> int:
    """One rule for deriving sub-seeds: ``h = (h * 1_000_003 + part) mod 2**63`` for each part.

    Folds integer ``parts`` (a CRC of a name, an image digest, an index) into
    ``seed`` so each gets its own reproducible generator stream. Integers only
    (Python or numpy); any seed of ComfyUI's range ``0 … 2**64 - 1`` gives a
    value in ``[0, 2**63)``; no parts gives ``seed mod 2**63``. Deterministic
    across runs and platforms (no ``hash()``).
    """
    h = operator.index(seed) % SEED_MODULUS
    for part in parts:
        h = (h * _SEED_MULTIPLIER + operator.index(part)) % SEED_MODULUS
    return h


def component_file(component: str) -> str:
    """``"unet"`` → ``"unet.safetensors"``: a component's file in a converted folder."""
    return component + WEIGHTS_SUFFIX


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file; the file ends up 0644 like other model files.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

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
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"{path}: {err}. This folder does not hold a model written by `python -m diffstyle360_core "
                "convert`; re-run convert into it"
            ) from None


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
