"""``batch``: many stylize jobs from a manifest (or a contents × styles cross product), on one or many processes.

A job is one stylize run into ``OUT/jobs/<job>/``, written through :class:`RunOutput` together
with a ``job.json`` (its settings and files) in the same commit: a job folder with a matching
``job.json`` whose files are all there is complete and skipped by a rerun; anything else is
redone. A failing job records its error and the batch goes on. Under ``accelerate launch`` or
``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process takes one
contiguous block of the jobs, so no two processes write one job; each appends its results to
``OUT/results/rank-R-of-W.jsonl`` as it goes, and after a barrier rank 0 writes
``OUT/summary.csv``. Models load once per process; back views are generated once per
distinct front image and settings and kept in ``OUT/back_view_cache/`` for every job and rank.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import options as O
from ..files import write_atomic
from . import main as cli
from .outputs import RunOutput

JOB_FILE = "job.json"
JOBS_DIR, RESULTS_DIR, CACHE_DIR, SUMMARY = "jobs", "results", "back_view_cache", "summary.csv"
SUMMARY_COLUMNS = ("job", "status", "seconds", "peak_memory_mib", "error", "rank", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LIST_SEP = ";"
#: manifest columns: each one is the stylize flag of the same name (``style`` and ``style_back`` take
#: several files separated by ``;``, ``yaw_range`` two numbers); an empty cell means the batch's default.
JOB_COLUMNS = ("content", "content_back", "style", "style_back", "style_mask", "style_back_mask", "alpha", "tau",
               "pairing", "mask_mode", "seed", "views", "steps", "cfg", "eta", "scheduler", "crop", "transparent",
               "window", "window_mode", "overlap", "windows_per_batch", "yaw_range", "guide_frames", "fps")
PATH_COLUMNS = ("content", "content_back", "style", "style_back", "style_mask", "style_back_mask", "guide_frames")
#: batch-wide flags that are also every job's default (a manifest column overrides them per job)
JOB_DEFAULTS = ("seed", "steps", "cfg", "eta", "scheduler", "crop", "transparent", "views", "tau", "pairing",
                "mask_mode", "window", "window_mode", "overlap", "windows_per_batch", "fps")
#: a process-group barrier waits this long for the slowest rank's share of the jobs
BARRIER_TIMEOUT = timedelta(days=7)


# --------------------------------------------------------------------------- #
# jobs
# --------------------------------------------------------------------------- #
@dataclass
class Job:
    """One row of the batch: its folder name, its stylize flags and, once checked, its options."""

    name: str
    argv: List[str]
    row: int  # 1-based manifest line (0 for the cross product)
    args: Optional[argparse.Namespace] = None
    checked: Optional[dict] = None
    error: Optional[str] = None  # a problem found before any model loads: the job fails, the batch goes on
    spec: Dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "job"


def _default_name(argv: List[str]) -> str:
    content = styles = None
    values: Dict[str, List[str]] = {}
    for flag, value in zip(argv[::2], argv[1::2]):
        values.setdefault(flag, []).append(value)
    content = Path(values["--content"][0]).stem if "--content" in values else "job"
    styles = "+".join(Path(s).stem for s in values.get("--style", [])) or "plain"
    return _safe_name(f"{content}__{styles}")


def read_manifest(path: str) -> List[Job]:
    """The jobs of a CSV manifest (header row of :data:`JOB_COLUMNS` and an optional ``job`` name column).

    Relative paths are relative to the manifest's folder. Empty lines and lines starting with ``#`` are skipped.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"--manifest {manifest} not found")
    base = manifest.resolve().parent
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise O.InputError(f"--manifest {manifest} is empty; give a header row and one row per job")
    header = [c.strip().lower().replace("-", "_") for c in rows[0][1]]
    unknown = [c for c in header if c not in JOB_COLUMNS and c != "job"]
    if unknown:
        raise O.InputError(f"--manifest {manifest}: unknown column(s) {unknown}; use job and any of "
                           f"{', '.join(JOB_COLUMNS)} (device, dtype and weights are batch-wide flags)")
    if "content" not in header:
        raise O.InputError(f"--manifest {manifest}: a 'content' column is required (one portrait per job)")
    jobs = []
    for line, cells in rows[1:]:
        if len(cells) > len(header):
            raise O.InputError(f"--manifest {manifest} line {line}: {len(cells)} cells for {len(header)} columns")
        argv, name = [], None
        for column, cell in zip(header, cells):
            cell = cell.strip()
            if not cell:
                continue
            if column == "job":
                name = _safe_name(cell)
                continue
            values = cell.split(LIST_SEP) if column in ("style", "style_back") else (
                cell.split() if column == "yaw_range" else [cell])
            values = [v.strip() for v in values if v.strip()]
            if column in PATH_COLUMNS:
                values = [str(base / v) if not Path(v).expanduser().is_absolute() else str(Path(v).expanduser())
                          for v in values]
            flag = "--" + column.replace("_", "-")
            if column == "yaw_range":
                argv += [flag, *values]
            else:
                for v in values:
                    argv += [flag, v]
        jobs.append(Job(name or "", argv, line))
    return _name_jobs(jobs)


def cross_product(contents: str, styles: str) -> List[Job]:
    """One job per (content, style) image pair of two folders, content-major, in file-name order."""
    def images(folder: str, flag: str) -> List[Path]:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"{flag} folder {path} not found")
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise O.InputError(f"{flag} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found

    return _name_jobs([Job("", ["--content", str(c.resolve()), "--style", str(s.resolve())], 0)
                       for c in images(contents, "--contents") for s in images(styles, "--styles")])


def _name_jobs(jobs: List[Job]) -> List[Job]:
    """Give unnamed jobs ``<content>__<style>`` names, made unique with a hash of their flags."""
    named = {id(job) for job in jobs if job.name}
    for job in jobs:
        if not job.name:
            job.name = _default_name(job.argv)
    counts: Dict[str, int] = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    for job in jobs:
        if counts[job.name] > 1 and id(job) not in named:
            job.name += "-" + hashlib.sha256("\0".join(job.argv).encode()).hexdigest()[:8]
    seen: Dict[str, Job] = {}
    for job in jobs:
        if job.name in seen:
            raise O.InputError(f"manifest rows {seen[job.name].row} and {job.row} are the same job ({job.name}); "
                               "remove one or give them different 'job' names")
        seen[job.name] = job
    if not jobs:
        raise O.InputError("no jobs: the manifest has a header but no rows")
    return jobs


class _RowError(O.InputError):
    """argparse's complaint about one manifest row."""


def _job_parser(batch_args: argparse.Namespace) -> argparse.ArgumentParser:
    """The stylize command's own parser, with the batch's flags as defaults and errors raised, not exited."""
    parser = cli.build_parser(plugins=False)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    stylize = sub.choices["stylize"]
    stylize.set_defaults(**{k: getattr(batch_args, k) for k in JOB_DEFAULTS},
                         style_module=batch_args.style_module, conditions=batch_args.conditions,
                         device=batch_args.device, dtype=batch_args.dtype)

    def error(message):
        raise _RowError(message)

    stylize.error = error
    return stylize


def check_jobs(jobs: List[Job], batch_args: argparse.Namespace, out: Path) -> None:
    """Parse and check every job's options and files (no model code); a bad job keeps its error, the rest run."""
    parser = _job_parser(batch_args)
    for job in jobs:
        folder = out / JOBS_DIR / job.name
        try:
            job.args = parser.parse_args(["--weights", str(batch_args.weights), "--out", str(folder), *job.argv])
            job.checked = cli._check_stylize_options(job.args)
            for flag in ("content", "content_back", "style_mask", "style_back_mask"):
                _require_file(getattr(job.args, flag), flag)
            for flag in ("style", "style_back"):
                for path in getattr(job.args, flag) or ():
                    _require_file(path, flag)
        except (ValueError, OSError) as err:
            job.error = cli._flagged(str(err))
        job.spec = _spec(job, batch_args)


def _require_file(path: Optional[str], flag: str) -> None:
    if path and not Path(path).exists():
        raise FileNotFoundError(f"--{flag.replace('_', '-')} file {path} not found")


def _stamp(path: str) -> List:
    """(path, size, mtime) of an input file: a changed file makes its job run again (stat only, no read)."""
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None, None]


def _spec(job: Job, batch_args: argparse.Namespace) -> dict:
    """Everything that decides a job's result: its flags, input-file stamps and the batch-wide model settings."""
    paths = [v for flag, v in zip(job.argv[::2], job.argv[1::2]) if flag.lstrip("-").replace("-", "_") in PATH_COLUMNS]
    skip = ("out", "_commands", "command", "device")  # where it runs does not change what it makes
    options = {k: v for k, v in sorted(vars(job.args).items()) if k not in skip} \
        if job.args is not None else {"argv": job.argv}
    return {"options": json.loads(json.dumps(options, default=str)), "inputs": [_stamp(p) for p in paths],
            "weights": str(Path(batch_args.weights).resolve()),
            "fp8_weights": bool(batch_args.fp8_weights)}


# --------------------------------------------------------------------------- #
# completeness
# --------------------------------------------------------------------------- #
def read_job_record(folder: Path) -> Optional[dict]:
    """``folder/job.json`` when the job there is complete (every file it lists is present), else None."""
    try:
        record = json.loads((folder / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "done":
        return None
    if not all((folder / name).exists() for name in record.get("files", [])):
        return None  # a hard kill inside a commit's renames: redo it
    return record


def is_complete(job: Job, out: Path) -> Optional[dict]:
    record = read_job_record(out / JOBS_DIR / job.name)
    return record if record is not None and record.get("key") == job.key else None


# --------------------------------------------------------------------------- #
# processes
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def take(self, jobs: List[Job]) -> List[Job]:
        """This rank's contiguous block of the jobs (sizes differ by at most one; same content stays together)."""
        n = len(jobs)
        return jobs[self.rank * n // self.world:(self.rank + 1) * n // self.world]


def shard_from_env(env=os.environ) -> Shard:
    """Rank and world size as ``torchrun`` and ``accelerate launch`` set them (one process without them)."""
    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        try:
            return int(value) if value != "" else default
        except ValueError:
            raise O.InputError(f"environment variable {name}={value!r} is not a whole number; "
                               "start the batch with torchrun or accelerate launch") from None

    world, rank = number("WORLD_SIZE", 1), number("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise O.InputError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; "
                           "start the batch with torchrun or accelerate launch")
    return Shard(rank, world, number("LOCAL_RANK", rank))


class _Group:
    """The process group, used for one thing: every rank waits for all before rank 0 writes the summary."""

    def __init__(self, shard: Shard):
        self.shard, self.owned = shard, False
        if shard.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            if not os.environ.get("MASTER_ADDR"):
                raise O.InputError("WORLD_SIZE > 1 but MASTER_ADDR is not set; start the batch with torchrun "
                                   "or accelerate launch")
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)  # gloo: a barrier on CPUs and GPUs alike
            self.owned = True

    def barrier(self) -> None:
        if self.shard.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


# --------------------------------------------------------------------------- #
# back views, once per front image
# --------------------------------------------------------------------------- #
class BackViewCache:
    """Back views keyed by the front image (as the model sees it) and the back-view settings.

    Kept in memory for this process (the ``keep`` most recently used) and on disk
    (``folder/<key>.safetensors``, written atomically) for other processes and reruns.
    ``generate(fronts, sampler, crop)`` runs the back-view model.
    """

    def __init__(self, folder: Path, fingerprint: dict, generate: Callable, keep: int = 64):
        self.folder, self.fingerprint, self.generate, self.keep = folder, fingerprint, generate, keep
        self.memory: "OrderedDict[str, object]" = OrderedDict()
        self.generated = 0  # back views this process computed (for the summary line and tests)

    def key(self, front, size: int, sampler: "O.SamplerOptions", crop: str) -> str:
        from ..images import to_model_tensor

        x = to_model_tensor(front, size, crop=crop).contiguous()
        settings = json.dumps({**self.fingerprint, "seed": sampler.seed, "steps": sampler.steps, "cfg": sampler.cfg,
                               "eta": sampler.eta, "scheduler": sampler.scheduler}, sort_keys=True)
        return hashlib.sha256(x.numpy().tobytes() + settings.encode()).hexdigest()[:32]

    def backs(self, fronts: list, size: int, sampler: "O.SamplerOptions", crop: str) -> list:
        """The back view ``[1,3,H,W]`` in [-1,1] of each front; the missing ones in one batched run."""
        keys = [self.key(f, size, sampler, crop) for f in fronts]
        missing = [i for i, k in enumerate(keys) if k not in self.memory and not self._load(k)]
        todo = {keys[i]: fronts[i] for i in missing}  # one run per distinct image
        if todo:
            made = self.generate(list(todo.values()), sampler, crop)
            for k, back in zip(todo, made.float().cpu().split(1)):
                self.memory[k] = back
                self._save(k, back)
            self.generated += len(todo)
        backs = [self.memory[k] for k in keys]
        for k in keys:
            self.memory.move_to_end(k)
        while len(self.memory) > self.keep:  # a catalogue of heads: the disk copy stays
            self.memory.popitem(last=False)
        return backs

    def _load(self, key: str) -> bool:
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return False
        from safetensors.torch import load_file

        try:
            self.memory[key] = load_file(str(path))["back"]
        except Exception:  # a torn or foreign file: make it again
            return False
        return True

    def _save(self, key: str, back) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(self.folder / f"{key}.safetensors", lambda tmp: save_file({"back": back.contiguous()}, tmp))
        except OSError:
            pass  # the cache is an optimisation: a full disk shows up at the job's own write


# --------------------------------------------------------------------------- #
# running
# --------------------------------------------------------------------------- #
class JobProgress:
    """One text line over this process's jobs: done, skipped, failed and the time so far."""

    def __init__(self, total: int, shard: Shard, stream=None, width: int = 30):
        self.total, self.shard, self.stream, self.width = total, shard, stream or sys.stderr, width
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.start = time.time()

    def update(self, status: str, name: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        k = sum(self.counts.values())
        bar = "#" * int(self.width * k / max(1, self.total))
        who = f"rank {self.shard.rank}/{self.shard.world} " if self.shard.world > 1 else ""
        self.stream.write(f"\r{who}jobs [{bar:.<{self.width}}] {k}/{self.total} (done {self.counts['done']}, "
                          f"skipped {self.counts['skipped']}, failed {self.counts['failed']}) "
                          f"{time.time() - self.start:6.1f}s {name[:40]:<40}")
        cli.STATE.line_open = k < self.total
        if k >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _peak_memory_mib(device) -> Optional[float]:
    """GPU: the job's peak allocated memory; CPU: the process's peak resident memory so far."""
    import torch

    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except (ImportError, OSError):  # pragma: no cover - Windows
        return None


class BatchRunner:
    """Runs jobs in this process: the models load once, at the first job that needs them."""

    def __init__(self, args: argparse.Namespace, out: Path, shard: Shard, run_id: str):
        self.args, self.out, self.shard, self.run_id = args, out, shard, run_id
        self.device = self.dtype = self.pipe = self.full = None
        self.cache: Optional[BackViewCache] = None

    def setup(self) -> None:
        """Load the main model and cameras (once; errors here stop the batch: every job would fail alike)."""
        if self.pipe is not None:
            return
        from .. import loading
        from ..pipeline import DiffStyle360Pipeline

        device, dtype = cli._device_dtype(self.args)
        if device.type == "cuda" and device.index is None:
            import torch

            # one GPU per process; more processes than GPUs share them in turn
            device = torch.device("cuda", self.shard.local_rank % max(1, torch.cuda.device_count()))
        self.device, self.dtype = device, dtype
        self.size = loading.read_config(self.args.weights, "main").image_size
        self.full = loading.load_cameras(self.args.weights, self.size, conditions=self.args.conditions)
        load_device, placement = cli._placement(self.args, device)
        main = loading.load_main(self.args.weights, device=load_device, dtype=dtype,
                                 style_module=self.args.style_module)
        cli._prepare_models(self.args, dtype, main)
        self.pipe = DiffStyle360Pipeline(main, None, self.full, placement=placement)
        self.cache = BackViewCache(self.out / CACHE_DIR, {"weights": str(Path(self.args.weights).resolve()),
                                                         "dtype": str(dtype), "device": device.type,
                                                         "fp8": bool(self.args.fp8_weights)}, self._generate_backs)

    def _generate_backs(self, fronts: list, sampler, crop: str):
        if self.pipe.back_view_model is None:
            from .. import loading

            load_device, _ = cli._placement(self.args, self.device)
            back = loading.load_back_view(self.args.weights, device=load_device, dtype=self.dtype)
            cli._prepare_models(self.args, self.dtype, back)
            self.pipe.back_view_model = back
        return self.pipe.back_views(fronts, sampler=sampler, crop=crop)

    def run(self, job: Job) -> dict:
        """Stylize one job into its folder; returns its record (also written as the folder's job.json)."""
        import torch

        self.setup()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.time()
        args, checked = job.args, job.checked
        images = cli._read_images(args, self.size)
        cameras, guides = cli._select_cameras(args, self.full, self.size)
        sampler = checked["sampler"]
        fronts = ([images["content"]] if images["content_back"] is None else []) + (
            images["styles"] if args.style and not images["backs"] else [])
        made = self.cache.backs(fronts, self.size, sampler, args.crop) if fronts else []
        content_back = made.pop(0) if images["content_back"] is None else None
        style_backs = [(b + 1).clamp(0, 2) / 2 for b in made] or None  # images in 0..1, as the pipeline reads them
        if content_back is not None:
            content_back = (content_back + 1).clamp(0, 2) / 2
        result = cli._turntable(self.pipe, args, checked, images, cameras, guides, content_back=content_back,
                                style_backs=style_backs)
        record = {"status": "done", "job": job.name, "key": job.key, "run_id": self.run_id, "rank": self.shard.rank,
                  "content": args.content, "styles": list(args.style), "alpha": args.alpha,
                  "style_label": _style_label(args), "views": len(result.views),
                  "yaws_deg": [float(y) for y in result.yaws_deg], "spec": job.spec}
        with RunOutput(self.out / JOBS_DIR / job.name, kind="batch-job") as run:
            paths = cli._save_run(run, result, fps=args.fps)
            written = [*paths.get("png", []), *(paths[k] for k in ("gif", "webp") if k in paths)]
            record["files"] = sorted({Path(f).name for f in written} | {"back_views"})  # what must be there
            record["seconds"] = round(time.time() - start, 3)
            peak = _peak_memory_mib(self.device)
            record["peak_memory_mib"] = round(peak, 1) if peak is not None else None
            run.write(JOB_FILE, lambda p: p.write_text(json.dumps(record, indent=1)))
            run.commit()
        return record


def _style_label(args) -> str:
    """How evaluate groups jobs: the style file's name, or ``a+b@α`` for a blend, ``plain`` without style."""
    stems = [Path(s).stem for s in args.style or ()]
    if not stems:
        return "plain"
    return "+".join(stems) + (f"@{args.alpha:g}" if args.alpha is not None else "")


class _Results:
    """This rank's result lines, appended and flushed as each job ends (kept when the process is killed)."""

    def __init__(self, out: Path, shard: Shard):
        self.path = out / RESULTS_DIR / f"rank-{shard.rank}-of-{shard.world}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", encoding="utf-8")

    def add(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return cli._flagged(text) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def run_jobs(jobs: List[Job], args: argparse.Namespace, out: Path, shard: Shard,
             runner: Optional[BatchRunner] = None, stream=None) -> List[dict]:
    """This rank's share of ``jobs``: skip complete ones, run the rest, record each outcome as it ends."""
    mine = shard.take(jobs)
    runner = runner or BatchRunner(args, out, shard, uuid.uuid4().hex[:12])
    results, progress = _Results(out, shard), JobProgress(len(mine), shard, stream)
    rows = []
    try:
        for job in mine:
            folder = str(out / JOBS_DIR / job.name)
            row = {"job": job.name, "rank": shard.rank, "folder": folder, "seconds": None, "peak_memory_mib": None,
                   "error": ""}
            done = is_complete(job, out) if job.error is None else None
            if done is not None:
                row.update(status="skipped", seconds=done.get("seconds"), peak_memory_mib=done.get("peak_memory_mib"))
            elif job.error is not None:
                row.update(status="failed", error=job.error)
            else:
                runner.setup()
                start = time.time()
                try:
                    record = runner.run(job)
                    row.update(status="done", seconds=record["seconds"], peak_memory_mib=record["peak_memory_mib"])
                except Exception as err:  # the job fails, the batch goes on
                    if cli._is_cuda_oom(err):
                        import torch

                        torch.cuda.empty_cache()
                    row.update(status="failed", seconds=round(time.time() - start, 3), error=_one_line(err))
            if row["status"] == "failed":
                print(f"{chr(10) if cli.STATE.line_open else ''}job {job.name} failed: {row['error']}",
                      file=stream or sys.stderr)
                cli.STATE.line_open = False
            results.add(row)
            rows.append(row)
            progress.update(row["status"], job.name)
    finally:
        results.close()
    return rows


def write_summary(jobs: List[Job], out: Path, shard: Shard) -> Path:
    """``out/summary.csv`` in job order from every rank's result file of this run (rank 0, after the barrier)."""
    found: Dict[str, dict] = {}
    for rank in range(shard.world):
        path = out / RESULTS_DIR / f"rank-{rank}-of-{shard.world}.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            found[row["job"]] = row

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for job in jobs:
                row = found.get(job.name) or {"job": job.name, "status": "not run",
                                              "folder": str(out / JOBS_DIR / job.name),
                                              "error": "no rank reported this job"}
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})

    return write_atomic(out / SUMMARY, write)


# --------------------------------------------------------------------------- #
# command
# --------------------------------------------------------------------------- #
def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch", help="many stylize jobs: a manifest CSV or contents × styles folders (torchrun/accelerate: sharded)",
        description="Run one stylize job per manifest row (or per content × style pair) into OUT/jobs/<job>/. "
        "A rerun skips complete jobs and redoes the rest; a failing job is recorded and the batch goes on; "
        "OUT/summary.csv lists every job. Many GPUs: `accelerate launch --num_processes N -m diffstyle360_core "
        "batch ...` (or torchrun): each process takes its share. Manifest columns: job, "
        + ", ".join(JOB_COLUMNS) + " (each as the stylize flag of that name; several style files separated by ';').")
    cli._add_sampler_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV with a header row; one job per row (README, Batch over a manifest)")
    src.add_argument("--contents", help="folder of portraits: every one with every image of --styles")
    p.add_argument("--styles", help="folder of style images (with --contents)")
    p.add_argument("--views", type=int, default=None, help="views per job (default: every view of the set)")
    p.add_argument("--tau", type=float, default=O.TAU.default, help=O.TAU.hint)
    p.add_argument("--pairing", choices=list(O.PAIRINGS), default=None, help="as for stylize")
    p.add_argument("--mask-mode", choices=list(O.MASK_MODES), default=None, help="as for stylize")
    p.add_argument("--window", type=int, default=None, help="as for stylize")
    p.add_argument("--window-mode", choices=list(O.WINDOW_MODES), default=O.WINDOW_MODES[0])
    p.add_argument("--overlap", type=int, default=O.OVERLAP.default)
    p.add_argument("--windows-per-batch", type=int, default=O.WINDOWS_PER_BATCH.default)
    p.add_argument("--fps", type=int, default=O.FPS.default)
    p.add_argument("--style-module", default=None, help="style module .safetensors for every job (loaded once)")
    p.add_argument("--conditions", default=None, help="your own condition-image folder (default: from --weights)")


def run_batch(args: argparse.Namespace) -> int:
    if args.contents and not args.styles:
        raise O.InputError("--contents needs --styles (the folder of style images to pair with every portrait)")
    if args.styles and not args.contents:
        raise O.InputError("--styles goes with --contents; with a manifest, name the styles in its 'style' column")
    shard = shard_from_env()
    jobs = read_manifest(args.manifest) if args.manifest else cross_product(args.contents, args.styles)
    cli._require_folder(args.out, "--out", "--out batch_out/")  # Path("") would be the current folder
    out = Path(args.out).expanduser()
    from .outputs import check_writable

    check_writable(out)
    check_jobs(jobs, args, out)
    if args.style_module and not Path(args.style_module).is_file():
        raise FileNotFoundError(f"--style-module file {args.style_module} not found")
    from .. import loading

    loading.model_folder(args.weights, "main")  # a wrong --weights fails before any job starts
    group = _Group(shard)
    try:
        cli.STATE.interrupt_note = (f"interrupted; every complete job in {out / JOBS_DIR} is kept: run the same "
                                    "command again to finish the rest")
        rows = run_jobs(jobs, args, out, shard)
        group.barrier()  # every rank's results are written
        summary = write_summary(jobs, out, shard) if shard.rank == 0 else None
        group.barrier()  # no rank exits (and has the launcher stop the others) before the summary is written
    finally:
        group.close()
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    who = f"rank {shard.rank}: " if shard.world > 1 else ""
    print(f"{who}{len(rows)} jobs: {counts['done']} done, {counts['skipped']} skipped (complete already), "
          f"{counts['failed']} failed" + (f"; summary in {summary}" if summary else ""))
    return cli.EXIT_USER if counts["failed"] else cli.EXIT_OK


def register(subparsers) -> Dict[str, Callable]:
    """Add ``batch`` to the CLI's subparsers; return its handler."""
    _add_batch(subparsers)
    return {"batch": run_batch}
