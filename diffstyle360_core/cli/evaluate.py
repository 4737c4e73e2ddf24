"""``evaluate``: Table 1 for batch runs — identity, style (CLIP), FID/KID, view consistency (ΔD, MEt3R).

Reads ``RUNS/jobs/<job>/`` folders written by ``batch`` (complete jobs only: those with their job.json),
computes the metrics of :mod:`diffstyle360_core.evaluation` and writes ``--out`` (Markdown table with each
column's definition) and the same numbers as JSON next to it. A metric whose model or package is missing
or cannot be downloaded shows "n/a (why)" in its column; the others are computed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List

from .. import options as O
from .batch import IMAGE_SUFFIXES, JOBS_DIR, read_job_record

METRICS = ("identity", "clip", "fid", "depth", "met3r")


def _add_evaluate(sub) -> None:
    from ..evaluation.extractors import ARCFACE_DEFAULT, CLIP_DEFAULT, DEPTH_DEFAULT

    p = sub.add_parser(
        "evaluate", help="score batch runs like the paper's Table 1 (Markdown + JSON)",
        description="Score the complete jobs of one or more batch output folders. Metric models download on "
        "first use (pip install -r requirements-eval.txt for clean-fid and insightface); a missing one "
        "shows n/a with the reason. Licences of the metric models: README, Reproduce Table 1.")
    p.add_argument("--runs", action="append", required=True,
                   help="a batch output folder (repeat to compare runs, e.g. methods; one table row group each)")
    p.add_argument("--reference", default=None,
                   help="reference images (e.g. SD img2img): every image under it is pooled for FID/KID; "
                        "REFERENCE/<job>/<view file> is the matched image for CLIP-ref")
    p.add_argument("--ground-truth", default=None,
                   help="unedited views at the same cameras (e.g. RenderMe360): GROUND_TRUTH/<job>/<view file>, "
                        "for the paper's ΔD")
    p.add_argument("--out", default=None, help="Markdown report (default: the first RUNS/report.md); JSON beside it")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {', '.join(METRICS)}")
    p.add_argument("--clip-model", default=CLIP_DEFAULT, help="transformers CLIP model id or folder")
    p.add_argument("--depth-model", default=DEPTH_DEFAULT,
                   help="transformers depth model id or folder (Small: Apache-2.0; Base/Large: CC-BY-NC-4.0)")
    p.add_argument("--arcface-pack", default=ARCFACE_DEFAULT,
                   help="insightface model pack name or folder (non-commercial research licence)")
    p.add_argument("--det-thresh", type=float, default=0.5, help="face detection threshold (stylized faces: ~0.3)")
    p.add_argument("--id-against", choices=["content", "ground-truth"], default="content",
                   help="identity against the content portrait, or each view against its --ground-truth view")
    p.add_argument("--max-yaw", type=float, default=60.0, help="identity: views with |yaw| above this are excluded")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--met3r-backbone", choices=["mast3r", "dust3r"], default="mast3r")
    p.add_argument("--met3r-size", type=int, default=256, help="MEt3R input size (divisible by 16)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def collect_runs(folders: List[str], reference: "Path | None", ground_truth: "Path | None" = None) -> Dict[str, list]:
    """The complete jobs of each batch output folder as :class:`RunJob` lists, keyed by a unique run name."""
    from ..evaluation.report import RunJob

    runs: Dict[str, list] = {}
    for folder in folders:
        root = Path(folder).expanduser()
        jobs_dir = root / JOBS_DIR
        if not jobs_dir.is_dir():
            raise FileNotFoundError(f"--runs {root} has no {JOBS_DIR}/ folder; give a batch output folder")
        jobs = []
        for job_dir in sorted(p for p in jobs_dir.iterdir() if p.is_dir()):
            record = read_job_record(job_dir)
            if record is None:
                continue  # incomplete or failed: rerun the batch to finish it
            views = sorted(job_dir.glob("view_*.png"))
            yaws = record.get("yaws_deg") or [360.0 * i / max(1, len(views)) for i in range(len(views))]
            alpha = record.get("alpha")
            styles = [Path(s) for s in record.get("styles") or []]
            refs = [(reference / job_dir.name / v.name) if reference else None for v in views]
            truth = [(ground_truth / job_dir.name / v.name) if ground_truth else None for v in views]
            for path in [record.get("content"), *(record.get("styles") or [])]:
                if path and not Path(path).is_file():
                    raise FileNotFoundError(f"job {job_dir.name}: its input {path} (named in its job.json) is "
                                            "missing; evaluate where the batch's inputs are")
            jobs.append(RunJob(name=job_dir.name, style=record.get("style_label") or "plain", views=views, yaws=yaws,
                               content=Path(record["content"]) if record.get("content") else None, styles=styles,
                               style_weights=[1 - alpha, alpha] if alpha is not None and len(styles) == 2 else None,
                               references=[r if r is not None and r.is_file() else None for r in refs],
                               ground_truth=[t if t is not None and t.is_file() else None for t in truth]))
        if not jobs:
            raise O.InputError(f"--runs {root} holds no complete job; run (or finish) the batch first")
        name = root.resolve().name or str(root)
        while name in runs:
            name += "'"
        runs[name] = jobs
    return runs


def _reference_pool(folder: "Path | None") -> "List[Path] | None":
    if folder is None:
        return None
    if not folder.is_dir():
        raise FileNotFoundError(f"--reference folder {folder} not found")
    pool = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(pool) < 2:
        raise O.InputError(f"--reference {folder} holds {len(pool)} image(s); FID/KID need at least 2")
    return pool


def backends_from_args(args):
    """The real metric models, built on first use (tests pass stand-ins to ``evaluate`` instead)."""
    from ..evaluation import extractors as X
    from ..evaluation.report import Backends

    wanted = {m.strip() for m in args.metrics.split(",") if m.strip()}
    unknown = wanted - set(METRICS)
    if unknown:
        raise O.InputError(f"--metrics: unknown {sorted(unknown)}; choose from {', '.join(METRICS)}")
    pick = lambda name, factory: factory if name in wanted else None  # noqa: E731
    return Backends(
        clip=pick("clip", lambda: X.CLIPImageFeatures.load(args.clip_model, args.device)),
        inception=pick("fid", lambda: X.CleanFIDInception(args.device)),
        face=pick("identity", lambda: X.ArcFaceEmbedder(args.arcface_pack, args.det_thresh, device=args.device)),
        depth=pick("depth", lambda: X.TransformersDepth.load(args.depth_model, args.device)),
        met3r=pick("met3r", lambda: X.MEt3RScorer(args.met3r_backbone, args.met3r_size, args.device)))


def settings_from_args(args):
    from ..evaluation.report import Settings

    return Settings(max_yaw=args.max_yaw, id_against=args.id_against, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
                    clip_model=args.clip_model, depth_model=args.depth_model, arcface_pack=args.arcface_pack,
                    met3r=f"backbone {args.met3r_backbone}, {args.met3r_size}px")


def write_report(report: dict, markdown: str, out: Path) -> Path:
    """``out`` (the report's Markdown) and ``out`` with .json, each written atomically
    (:func:`~..files.write_text_atomic`)."""
    from ..files import write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, markdown), (out.with_suffix(".json"), json.dumps(report, indent=1))):
        write_text_atomic(path, text)
    return out


def run_evaluate(args: argparse.Namespace, backends=None) -> None:
    from ..evaluation.report import evaluate, to_markdown

    reference = Path(args.reference).expanduser() if args.reference else None
    pool = _reference_pool(reference)
    truth = Path(args.ground_truth).expanduser() if args.ground_truth else None
    if args.id_against == "ground-truth" and truth is None:
        raise O.InputError("--id-against ground-truth needs --ground-truth (the unedited views at the same cameras)")
    if truth is not None and not truth.is_dir():
        raise FileNotFoundError(f"--ground-truth folder {truth} not found")
    runs = collect_runs(args.runs, reference, truth)
    backends = backends or backends_from_args(args)
    report = evaluate(runs, backends, settings_from_args(args), reference=pool, ground_truth=truth is not None)
    out = Path(args.out).expanduser() if args.out else Path(args.runs[0]).expanduser() / "report.md"
    markdown = to_markdown(report)
    write_report(report, markdown, out)
    print(markdown, end="")
    print(f"wrote {out} and {out.with_suffix('.json')}")


def register(subparsers) -> Dict[str, Callable]:
    """Add ``evaluate`` to the CLI's subparsers; return its handler."""
    _add_evaluate(subparsers)
    return {"evaluate": run_evaluate}
