"""Score stylized turntables like the paper's Table 1 and write the table (Markdown) and the numbers (JSON).

Per job (one portrait in one style) every metric gives one value; per style the table shows the mean ±
standard deviation over its jobs; FID and KID pool every view of a run (all styles) against the
reference set, as per-style sets of a few hundred images are too small for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import stats
from .extractors import MetricUnavailable

#: (key, table header); the order of the table's columns
COLUMNS = (("identity", "ID ↑"), ("face_rate", "face det."), ("clip_style", "CLIP-style ↑"),
           ("clip_ref", "CLIP-ref ↑"), ("fid", "FID ↓"), ("kid", "KID ↓"), ("depth_gt", "ΔD ↓"),
           ("depth", "ΔD-nb ↓"), ("met3r", "MEt3R ↓"))
POOLED = ("fid", "kid")


@dataclass
class RunJob:
    """One stylized turntable: its views (in camera order), their yaws, its inputs and matched references."""

    name: str
    style: str
    views: List[Path]
    yaws: List[float]
    content: Optional[Path] = None
    styles: List[Path] = field(default_factory=list)
    style_weights: Optional[List[float]] = None
    references: List[Optional[Path]] = field(default_factory=list)  # reference view per view (or None)
    ground_truth: List[Optional[Path]] = field(default_factory=list)  # unedited view per view (or None)


@dataclass
class Settings:
    max_yaw: float = 60.0
    id_against: str = "content"  # or "ground-truth": each view against the unedited view at its camera
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    clip_model: str = ""
    depth_model: str = ""
    arcface_pack: str = ""
    inception: str = "clean-fid 'clean' Inception-v3 pool3 (2048-d)"
    met3r: str = ""


@dataclass
class Backends:
    """Factories of the metric models, each called once, when its metric first runs (None: not wanted)."""

    clip: Optional[Callable] = None
    inception: Optional[Callable] = None
    face: Optional[Callable] = None
    depth: Optional[Callable] = None
    met3r: Optional[Callable] = None


def definitions(s: Settings) -> Dict[str, str]:
    """What each column means, printed under the table."""
    if s.id_against == "ground-truth":
        identity_text = (f"ArcFace cosine similarity ({s.arcface_pack}) between each view with |yaw| <= {s.max_yaw:g}° "
                         "and the unedited ground-truth view at the same camera, over the views whose ground truth "
                         "has a detected face (the largest face; images padded 25%); a stylized view without a "
                         "detected face is excluded from the mean and counted in 'face det.'. Mean over views, then "
                         "mean ± std over the style's jobs.")
        rate_text = "share of those views (ground truth has a face) in which the stylized view has a face too."
    else:
        identity_text = (
            f"ArcFace cosine similarity ({s.arcface_pack}) between the content portrait and each view with "
            f"|yaw| <= {s.max_yaw:g}° in which a face is detected (the largest face; images padded 25%); "
            "views beyond that yaw are excluded (no frontal face to detect); a view inside it without a "
            "detected face is excluded from the mean and counted in 'face det.'. Mean over views, then "
            "mean ± std over the style's jobs; a job whose content has no detected face is left out.")
        rate_text = f"share of the views with |yaw| <= {s.max_yaw:g}° in which a face was detected."
    return {
        "identity": identity_text,
        "face_rate": rate_text,
        "clip_style": f"CLIP image-image cosine ({s.clip_model}, projected embeddings) between each view and the "
                      "style image (a blend of two styles: the (1-α, α)-weighted mean of the cosines to both); "
                      "mean over views, then mean ± std over jobs.",
        "clip_ref": f"CLIP image-image cosine ({s.clip_model}) between each view and the reference image of the same "
                    "job and view (REFERENCE/<job>/<view file>); mean over the views that have one.",
        "fid": f"Fréchet distance between Gaussian fits of {s.inception} features of every view of the run (all "
               "styles and portraits pooled) and every image of the reference set; float64, Tr((Σ1Σ2)^½) from the "
               "eigenvalues of Σ1^½Σ2Σ1^½. Biased in N: runs are compared only at equal N.",
        "kid": f"Kernel Inception Distance on the same features: unbiased MMD² with k(x,y) = (x·y/d + 1)³, mean ± "
               f"std over {s.kid_subsets} random subsets of min({s.kid_subset_size}, N_run, N_ref) images each side.",
        "depth_gt": f"ΔD as in the paper: relative depth ({s.depth_model}) of each view and of the unedited "
                    "ground-truth view at the same camera (GROUND_TRUTH/<job>/<view file>, resized to the view); "
                    "the ground truth's map min-max normalised to [0, 1], the view's map least-squares "
                    "scale-and-shift aligned to it, then the mean squared difference over all pixels; mean over "
                    "the views that have one, then over jobs.",
        "depth": f"ΔD-nb, view consistency without ground truth: relative depth ({s.depth_model}) of each pair of neighbouring views (i, i+1 "
                 "mod N, the loop closed); view i's map min-max normalised to [0, 1], view i+1's map least-squares "
                 "scale-and-shift aligned to it, then the mean squared difference over all pixels; mean over pairs, "
                 "then over jobs. Part of it is the true parallax between neighbours: compare at equal N and views.",
        "met3r": f"MEt3R ×100 ({s.met3r}) of each pair of neighbouring views (i, i+1 mod N), both directions "
                 "averaged; mean over pairs, then over jobs. Lower is more consistent.",
    }


class _Images:
    """PIL images by path, opened when asked (views are read once per metric, not kept)."""

    @staticmethod
    def open(paths):
        from PIL import Image

        out = []
        for p in paths:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        return out


class _OncePerImage:
    """A metric model with its outputs for one job's image files: a view that several metrics read (CLIP style
    and reference, ΔD and ΔD-nb) goes through the model once. Called directly, it is the model itself."""

    def __init__(self, model):
        self.model, self.done = model, {}

    def __call__(self, items):
        return self.model(items)

    def outputs(self, paths) -> list:
        new = [p for p in dict.fromkeys(paths) if p not in self.done]
        if new:
            self.done.update(zip(new, self.model(_Images.open(new))))
        return [self.done[p] for p in paths]


def _outputs(model, paths) -> list:
    """``model``'s output for each image file (once per job when :func:`evaluate` passes an :class:`_OncePerImage`)."""
    if isinstance(model, _OncePerImage):
        return model.outputs(paths)
    return list(model(_Images.open(paths)))


def _image_size(path) -> Tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def _pooled_features(paths: List[Path], model, batch: int = 64) -> np.ndarray:
    """Features of many images, opened a batch at a time (a run of thousands of views does not fit in memory)."""
    return np.concatenate([np.asarray(model(_Images.open(paths[i:i + batch])), dtype=np.float64)
                           for i in range(0, len(paths), batch)])


def _yaw_distance(yaw: float) -> float:
    y = abs(float(yaw)) % 360.0
    return min(y, 360.0 - y)


# --------------------------------------------------------------------------- #
# per-job metrics
# --------------------------------------------------------------------------- #
def identity_vs_ground_truth(job: RunJob, face, max_yaw: float) -> Dict[str, Optional[float]]:
    """Each view against the unedited view at its camera; a view counts where that ground truth has a face."""
    pairs = [(v, g) for v, g, y in zip(job.views, job.ground_truth, job.yaws)
             if g is not None and _yaw_distance(y) <= max_yaw]
    if not pairs:
        return {"identity": None, "face_rate": None}
    truth = _outputs(face, [g for _, g in pairs])
    valid = [(v, t) for (v, _), t in zip(pairs, truth) if t is not None]  # the valid set comes from the ground truth
    if not valid:
        return {"identity": None, "face_rate": None}
    found = _outputs(face, [v for v, _ in valid])
    scores = [float(stats.cosine(e, t)[0]) for e, (_, t) in zip(found, valid) if e is not None]
    return {"identity": float(np.mean(scores)) if scores else None, "face_rate": len(scores) / len(valid)}


def identity(job: RunJob, face, max_yaw: float) -> Dict[str, Optional[float]]:
    """{"identity": mean cosine over detected eligible views, "face_rate": detected / eligible}."""
    if job.content is None:
        return {"identity": None, "face_rate": None}
    reference = _outputs(face, [job.content])[0]
    eligible = [v for v, y in zip(job.views, job.yaws) if _yaw_distance(y) <= max_yaw]
    if not eligible:
        return {"identity": None, "face_rate": None}
    found = [e for e in _outputs(face, eligible) if e is not None]
    rate = len(found) / len(eligible)
    if reference is None or not found:
        return {"identity": None, "face_rate": rate}
    return {"identity": float(np.mean(stats.cosine(np.stack(found), reference))), "face_rate": rate}


def clip_style(job: RunJob, clip) -> Optional[float]:
    if not job.styles:
        return None
    views = np.stack(_outputs(clip, job.views))
    styles = np.stack(_outputs(clip, job.styles))
    weights = job.style_weights or [1.0 / len(job.styles)] * len(job.styles)
    per_view = sum(w * stats.cosine(views, s) for w, s in zip(weights, styles))
    return float(np.mean(per_view))


def clip_reference(job: RunJob, clip) -> Optional[float]:
    pairs = [(v, r) for v, r in zip(job.views, job.references) if r is not None]
    if not pairs:
        return None
    views = np.stack(_outputs(clip, [v for v, _ in pairs]))
    refs = np.stack(_outputs(clip, [r for _, r in pairs]))
    return float(np.mean(stats.cosine(views, refs)))


def depth_vs_ground_truth(job: RunJob, depth) -> Optional[float]:
    pairs = [(v, g) for v, g in zip(job.views, job.ground_truth) if g is not None]
    if not pairs:
        return None
    sizes = [_image_size(v) for v, _ in pairs]
    truth = [g.resize(size) if g.size != size else g for g, size in zip(_Images.open([g for _, g in pairs]), sizes)]
    maps_v, maps_g = _outputs(depth, [v for v, _ in pairs]), depth(truth)
    return float(np.mean([stats.depth_pair_error(g, v) for g, v in zip(maps_g, maps_v)]))


def depth_consistency(job: RunJob, depth) -> Optional[float]:
    pairs = stats.loop_pairs(len(job.views))
    if not pairs:
        return None
    maps = _outputs(depth, job.views)
    return float(np.mean([stats.depth_pair_error(maps[i], maps[j]) for i, j in pairs]))


def met3r(job: RunJob, scorer) -> Optional[float]:
    pairs = stats.loop_pairs(len(job.views))
    if not pairs:
        return None
    images = _Images.open(job.views)
    return 100.0 * float(np.mean(scorer([(images[i], images[j]) for i, j in pairs])))


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #
class _Models:
    """Builds each metric model once; remembers why one could not be built."""

    def __init__(self, backends: Backends):
        self.backends, self.built, self.why = backends, {}, {}

    def get(self, name: str):
        if name in self.built:
            return self.built[name]
        if name in self.why:
            return None
        factory = getattr(self.backends, name)
        if factory is None:
            self.why[name] = "not requested"
            return None
        try:
            self.built[name] = factory()
        except MetricUnavailable as err:
            self.why[name] = str(err)
            return None
        return self.built[name]


# the one-model, one-value columns of a job (identity gives two values, FID/KID are pooled over a run)
JOB_METRICS = (("clip_style", clip_style), ("clip_ref", clip_reference), ("depth_gt", depth_vs_ground_truth),
               ("depth", depth_consistency), ("met3r", met3r))


def evaluate(runs: Dict[str, List[RunJob]], backends: Backends, settings: Settings = Settings(),
             reference: Optional[List[Path]] = None, ground_truth: bool = False) -> dict:
    """Every metric of every job of every run, per-style means/stds, pooled FID/KID, column definitions."""
    models = _Models(backends)
    unavailable: Dict[str, str] = {}
    need_model = {"identity": "face", "face_rate": "face", "clip_style": "clip", "clip_ref": "clip",
                  "depth": "depth", "depth_gt": "depth", "met3r": "met3r", "fid": "inception", "kid": "inception"}
    if not reference:
        for key in ("clip_ref", "fid", "kid"):
            unavailable[key] = "needs --reference"
    if not ground_truth:
        unavailable["depth_gt"] = "needs --ground-truth (unedited views at the same cameras)"
    sizes = {run: sum(len(j.views) for j in jobs) for run, jobs in runs.items()}
    if len(set(sizes.values())) > 1 and "fid" not in unavailable:
        why = ("runs differ in N (" + ", ".join(f"{r}: {n}" for r, n in sizes.items())
               + "); FID/KID are biased in N: compare runs of equal N")
        unavailable["fid"] = unavailable["kid"] = why

    def model_for(key):
        if key in unavailable:
            return None
        model = models.get(need_model[key])
        if model is None:
            unavailable[key] = models.why[need_model[key]]
        return model

    per_job: Dict[str, Dict[str, dict]] = {}
    for run, jobs in runs.items():
        per_job[run] = {}
        for job in jobs:
            values: Dict[str, Optional[float]] = {k: None for k, _ in COLUMNS if k not in POOLED}
            once: Dict[int, _OncePerImage] = {}  # this job's images through each model at most once

            def job_model(key):
                model = model_for(key)
                return None if model is None else once.setdefault(id(model), _OncePerImage(model))

            face = job_model("identity")
            if face is not None:
                score = identity_vs_ground_truth if settings.id_against == "ground-truth" else identity
                values.update(score(job, face, settings.max_yaw))
            for key, metric in JOB_METRICS:
                model = job_model(key)
                if model is not None:
                    values[key] = metric(job, model)
            per_job[run][job.name] = {"style": job.style, "views": len(job.views), **values}
    pooled: Dict[str, dict] = {}
    inception = model_for("fid")
    for key, twin in (("identity", "face_rate"), ("fid", "kid")):  # one model, two columns
        if key in unavailable:
            unavailable.setdefault(twin, unavailable[key])
    if inception is not None:
        ref_features = _pooled_features(reference, inception)
        for run, jobs in runs.items():
            features = _pooled_features([v for j in jobs for v in j.views], inception)
            if len(features) < 2 or len(ref_features) < 2:
                pooled[run] = {"fid": None, "kid": None}
                continue
            mean, std = stats.kid(features, ref_features, subset_size=settings.kid_subset_size,
                                  subsets=settings.kid_subsets)
            pooled[run] = {"fid": {"mean": stats.fid(features, ref_features), "std": 0.0, "n": len(features)},
                           "kid": {"mean": mean, "std": std, "n": len(features)}}

    summary: Dict[str, dict] = {}
    for run, jobs in per_job.items():
        groups: Dict[str, List[dict]] = {}
        for values in jobs.values():
            groups.setdefault(values["style"], []).append(values)
        groups_all = {**{s: groups[s] for s in sorted(groups)}, "all styles": list(jobs.values())}
        summary[run] = {}
        for style, rows in groups_all.items():
            cell = {"jobs": len(rows), "views": sum(r["views"] for r in rows)}
            for key, _ in COLUMNS:
                if key in POOLED:
                    cell[key] = pooled.get(run, {}).get(key) if style == "all styles" else None
                else:
                    cell[key] = stats.mean_std([r[key] for r in rows])
            summary[run][style] = cell
    texts = definitions(settings)
    return {"columns": {k: {"header": h, "definition": texts[k], "unavailable": unavailable.get(k)}
                        for k, h in COLUMNS},
            "summary": summary, "jobs": per_job, "n_images": sizes,
            "reference_images": len(reference or []), "settings": settings.__dict__}


def _cell(value: Optional[dict], key: str, unavailable: Optional[str], pooled_row: bool) -> str:
    if unavailable:  # the short reason in the table, the full one under it
        return f"n/a ({unavailable.split(';')[0]})" if pooled_row else "n/a"
    if key in POOLED and not pooled_row:
        return "(pooled)"
    if value is None:
        return "—"
    digits = 2 if key == "fid" else (4 if key in ("kid", "depth", "depth_gt") else 3)
    mean, std = value["mean"], value["std"]
    if key == "face_rate":
        return f"{100 * mean:.0f}%"
    if key == "fid":
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def to_markdown(report: dict) -> str:
    """The table, then each column's definition (and why a column is n/a)."""
    columns = report["columns"]
    head = ["run", "style", "jobs", "views"] + [c["header"] for c in columns.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, styles in report["summary"].items():
        for style, cell in styles.items():
            row = [run, f"**{style}**" if style == "all styles" else style, str(cell["jobs"]), str(cell["views"])]
            row += [_cell(cell.get(k), k, c["unavailable"], style == "all styles") for k, c in columns.items()]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Mean ± standard deviation over the jobs (portraits) of each style; '—': no value for these "
              "jobs; FID and KID are computed once per run over all its styles (the **all styles** row).", ""]
    for key, c in columns.items():
        note = f" **n/a here: {c['unavailable'].rstrip('.')}.**" if c["unavailable"] else ""
        lines.append(f"- **{c['header']}** — {c['definition']}{note}")
    lines.append(f"\nImages per run (N): {report['n_images']}; reference images: {report['reference_images']}.")
    return "\n".join(lines) + "\n"
