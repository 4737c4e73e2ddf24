"""The models behind the metrics, each behind a small interface, each imported only when it is built.

Interfaces (anything callable with this shape works, e.g. a tiny stand-in in the tests):

* ``ImageFeatures``: ``(images: list[PIL.Image]) -> np.ndarray [N, D]`` (CLIP embeddings, Inception features);
* ``FaceEmbedder``: ``(images) -> list[np.ndarray | None]``, one identity embedding per image, None without a face;
* ``DepthModel``: ``(images) -> list[np.ndarray [H, W]]``, relative depth at each image's size;
* ``PairScorer``: ``(pairs: list[(PIL.Image, PIL.Image)]) -> list[float]``, a multi-view inconsistency per pair.

Each real model downloads its weights on first use through its own library. A model that cannot be
built (package missing, offline, no GPU) raises :class:`MetricUnavailable` with a short reason; the
report prints that reason in its column instead of failing.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

CLIP_DEFAULT = "openai/clip-vit-base-patch32"
DEPTH_DEFAULT = "depth-anything/Depth-Anything-V2-Small-hf"
ARCFACE_DEFAULT = "buffalo_l"
INSTALL_EVAL = "pip install -r requirements-eval.txt"


class MetricUnavailable(RuntimeError):
    """A metric's model cannot be used here; ``str()`` says why in a few words."""


class ImageFeatures(Protocol):
    def __call__(self, images: Sequence[Any]) -> np.ndarray: ...


class FaceEmbedder(Protocol):
    def __call__(self, images: Sequence[Any]) -> List[Optional[np.ndarray]]: ...


class DepthModel(Protocol):
    def __call__(self, images: Sequence[Any]) -> List[np.ndarray]: ...


class PairScorer(Protocol):
    def __call__(self, pairs: Sequence[Tuple[Any, Any]]) -> List[float]: ...


def _require(module: str, package: str, hint: str = INSTALL_EVAL) -> None:
    if importlib.util.find_spec(module) is None:
        raise MetricUnavailable(f"{package} not installed; {hint}")


def _device(device: Optional[str]):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _from_pretrained(loader: Callable, name: str, **kwargs):
    """``loader(name)``, with a download or cache failure turned into a short reason."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:  # offline, no such model, no cached copy
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MetricUnavailable(f"could not load {name}; {first[:160]}") from None


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _TransformersModel:
    """A transformers model and its image processor in eval mode on one device (default: the model's own).

    Subclasses name their transformers classes and default checkpoint; :meth:`load` fetches both halves.
    """

    MODEL_CLASS = PROCESSOR_CLASS = DEFAULT = ""

    def __init__(self, model, processor, device=None):
        self.model, self.processor = model.eval(), processor
        self.device = next(model.parameters()).device if device is None else device
        self.model.to(self.device)

    @classmethod
    def load(cls, name: Optional[str] = None, device: Optional[str] = None):
        _require("transformers", "transformers")
        import transformers

        name = cls.DEFAULT if name is None else name
        model = _from_pretrained(getattr(transformers, cls.MODEL_CLASS).from_pretrained, name)
        processor = _from_pretrained(getattr(transformers, cls.PROCESSOR_CLASS).from_pretrained, name)
        return cls(model, processor, _device(device))


# --------------------------------------------------------------------------- #
# CLIP (transformers)
# --------------------------------------------------------------------------- #
class CLIPImageFeatures(_TransformersModel):
    """L2-normalised CLIP image embeddings (projected) from transformers' ``CLIPModel``."""

    MODEL_CLASS, PROCESSOR_CLASS, DEFAULT = "CLIPModel", "CLIPImageProcessor", CLIP_DEFAULT

    def __init__(self, model, processor, device=None, batch_size: int = 32):
        super().__init__(model, processor, device)
        self.batch_size = batch_size

    def __call__(self, images):
        import torch

        out = []
        with torch.no_grad():
            for batch in _batches([im.convert("RGB") for im in images], self.batch_size):
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                emb = self.model.get_image_features(pixel_values=pixels)
                emb = emb if torch.is_tensor(emb) else emb.pooler_output  # transformers 5 returns an output object
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


# --------------------------------------------------------------------------- #
# Inception features for FID/KID (clean-fid, "clean" mode)
# --------------------------------------------------------------------------- #
class CleanFIDInception:
    """clean-fid's Inception-v3 pool3 features (2048-d) after its antialiased "clean" resize to 299²."""

    def __init__(self, device: Optional[str] = None, batch_size: int = 32):
        _require("cleanfid", "clean-fid")
        try:
            from cleanfid.features import build_feature_extractor
            from cleanfid.resize import build_resizer
        except ImportError as err:  # clean-fid imports torchvision
            raise MetricUnavailable(f"clean-fid cannot be imported ({err}); {INSTALL_EVAL}") from None
        self.device, self.batch_size = _device(device), batch_size
        try:
            self.model = build_feature_extractor("clean", self.device, use_dataparallel=False)
        except Exception as err:  # the weights come from a CDN on first use
            raise MetricUnavailable(f"could not load clean-fid's Inception weights ({type(err).__name__})") from None
        self.resize = build_resizer("clean")

    def __call__(self, images):
        import torch

        out = []
        with torch.no_grad():
            for batch in _batches(list(images), self.batch_size):
                x = np.stack([self.resize(np.asarray(im.convert("RGB"))) for im in batch]).transpose(0, 3, 1, 2)
                out.append(self.model(torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device))
                           .detach().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


# --------------------------------------------------------------------------- #
# identity (insightface ArcFace)
# --------------------------------------------------------------------------- #
class ArcFaceEmbedder:
    """insightface: SCRFD detection + ArcFace embedding of the largest face (images padded 25%, BGR)."""

    def __init__(self, pack: str = ARCFACE_DEFAULT, det_thresh: float = 0.5, det_size: int = 640,
                 device: Optional[str] = None):
        _require("insightface", "insightface")
        _require("onnxruntime", "onnxruntime")
        from insightface.app import FaceAnalysis

        use_gpu = _device(device).type == "cuda"
        providers = (["CUDAExecutionProvider"] if use_gpu else []) + ["CPUExecutionProvider"]
        try:
            self.app = FaceAnalysis(name=pack, allowed_modules=["detection", "recognition"], providers=providers)
            self.app.prepare(ctx_id=0 if use_gpu else -1, det_thresh=det_thresh, det_size=(det_size, det_size))
        except Exception as err:  # the model pack downloads on first use
            raise MetricUnavailable(f"could not load insightface pack {pack} ({type(err).__name__})") from None

    def __call__(self, images):
        out = []
        for im in images:
            rgb = np.asarray(im.convert("RGB"))
            pad = int(round(0.25 * max(rgb.shape[:2])))
            bgr = np.pad(rgb[..., ::-1], ((pad, pad), (pad, pad), (0, 0)), mode="constant")
            faces = self.app.get(np.ascontiguousarray(bgr))
            if not faces:
                out.append(None)
                continue
            face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            out.append(np.asarray(face.normed_embedding, dtype=np.float64))
        return out


# --------------------------------------------------------------------------- #
# depth (transformers, Depth Anything V2)
# --------------------------------------------------------------------------- #
class TransformersDepth(_TransformersModel):
    """Relative (affine-invariant inverse) depth from a transformers depth model, at each image's size."""

    MODEL_CLASS, PROCESSOR_CLASS, DEFAULT = "AutoModelForDepthEstimation", "AutoImageProcessor", DEPTH_DEFAULT

    def __call__(self, images):
        import torch

        out = []
        with torch.no_grad():
            for im in images:
                im = im.convert("RGB")
                inputs = self.processor(images=[im], return_tensors="pt")
                pred = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth
                depth = torch.nn.functional.interpolate(pred[:, None].float(), size=(im.height, im.width),
                                                        mode="bicubic", align_corners=False)[0, 0]
                out.append(depth.cpu().numpy().astype(np.float64))
        return out


# --------------------------------------------------------------------------- #
# MEt3R (optional, CUDA)
# --------------------------------------------------------------------------- #
class MEt3RScorer:
    """MEt3R of each image pair, both directions averaged (its code scores in the first image's frame)."""

    def __init__(self, backbone: str = "mast3r", img_size: int = 256, device: Optional[str] = None,
                 batch_size: int = 4):
        _require("met3r", "met3r", "pip install git+https://github.com/mohammadasim98/met3r (CUDA; README)")
        dev = _device(device)
        if dev.type != "cuda":
            raise MetricUnavailable("MEt3R needs a CUDA GPU (FeatUp and PyTorch3D)")
        from met3r import MEt3R

        try:
            self.metric = MEt3R(img_size=img_size, use_norm=True, backbone=backbone, feature_backbone="dino16",
                                feature_backbone_weights="mhamilton723/FeatUp", upsampler="featup",
                                distance="cosine", freeze=True).to(dev)
        except Exception as err:  # DUSt3R/MASt3R and FeatUp download on first use
            raise MetricUnavailable(f"could not build MEt3R ({type(err).__name__})") from None
        self.device, self.size, self.batch_size = dev, img_size, batch_size

    def _tensor(self, im):
        import torch
        from PIL import Image

        x = np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
        return torch.from_numpy(x).permute(2, 0, 1)

    def __call__(self, pairs):
        import torch

        scores = []
        with torch.no_grad():
            for batch in _batches(list(pairs), self.batch_size):
                both = [(a, b) for a, b in batch] + [(b, a) for a, b in batch]
                x = torch.stack([torch.stack([self._tensor(a), self._tensor(b)]) for a, b in both]).to(self.device)
                score = self.metric(images=x, return_overlap_mask=False, return_score_map=False,
                                    return_projections=False)
                score = (score[0] if isinstance(score, (tuple, list)) else score).float().cpu().numpy()
                half = len(batch)
                scores += [float((score[i] + score[half + i]) / 2) for i in range(half)]
        return scores
