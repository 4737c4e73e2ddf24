"""The batch command (issue 18): manifest and cross product, one complete folder per job, reruns that skip
complete jobs and redo the rest, failures recorded, Ctrl-C, back views once per front image, and sharding
over 2 CPU processes (gloo) with one rank killed mid-way and the batch resumed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffstyle360_core import loading
from diffstyle360_core.cli import batch as B
from diffstyle360_core.cli.main import main
from diffstyle360_core.pipeline import DiffStyle360Pipeline

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "workflows" / "images"
FAST = ["--steps", "1", "--views", "2"]


@pytest.fixture
def folders(tmp_path):
    """Two portraits (the astronaut and its mirror) and two styles."""
    contents, styles = tmp_path / "contents", tmp_path / "styles"
    contents.mkdir()
    styles.mkdir()
    face = Image.open(IMAGES / "astronaut.png").convert("RGB")
    face.save(contents / "a.png")
    face.transpose(Image.FLIP_LEFT_RIGHT).save(contents / "b.png")
    for name in ("style_ink.png", "style_posterized.png"):
        Image.open(IMAGES / name).convert("RGB").save(styles / name)
    return contents, styles


@pytest.fixture
def count_backs(monkeypatch):
    """How many front images went through the back-view model."""
    made = []
    original = DiffStyle360Pipeline.back_views

    def counting(self, fronts, **kwargs):
        made.extend(fronts)
        return original(self, fronts, **kwargs)

    monkeypatch.setattr(DiffStyle360Pipeline, "back_views", counting)
    return made


def _batch(weights, out, *source, extra=()):
    return ["batch", "--weights", str(weights), "--out", str(out), *source, *FAST, *extra]


def _summary(out):
    with open(Path(out) / "summary.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def _record(out, job):
    return json.loads((Path(out) / "jobs" / job / "job.json").read_text())


def test_cross_product_runs_every_pair_once_and_a_rerun_skips_them(tiny_weights, tmp_path, folders, count_backs,
                                                                     capsys):
    contents, styles = folders
    out = tmp_path / "out"
    assert main(_batch(tiny_weights, out, "--contents", str(contents), "--styles", str(styles))) == 0
    summary = _summary(out)
    names = ["a__style_ink", "a__style_posterized", "b__style_ink", "b__style_posterized"]
    assert list(summary) == names
    assert {row["status"] for row in summary.values()} == {"done"}
    for name in names:
        row = summary[name]
        assert float(row["seconds"]) > 0 and float(row["peak_memory_mib"]) > 0 and row["error"] == ""
        record = _record(out, name)
        assert record["views"] == 2 and len(sorted((out / "jobs" / name).glob("view_*.png"))) == 2
        assert all((out / "jobs" / name / f).exists() for f in record["files"])
    # 2 portraits + 2 styles: four distinct fronts, each given to the back-view model once for four jobs
    assert len(count_backs) == 4
    assert "jobs [" in capsys.readouterr().err  # the progress bar over jobs

    first = {n: _record(out, n)["run_id"] for n in names}
    (out / "jobs" / names[1] / "job.json").unlink()  # an incomplete job: its folder lacks the record
    count_backs.clear()
    assert main(_batch(tiny_weights, out, "--contents", str(contents), "--styles", str(styles))) == 0
    summary = _summary(out)
    assert [summary[n]["status"] for n in names] == ["skipped", "done", "skipped", "skipped"]
    assert count_backs == []  # its back views come from the on-disk cache
    assert _record(out, names[0])["run_id"] == first[names[0]]  # skipped jobs were not written again
    assert _record(out, names[1])["run_id"] != first[names[1]]


def test_a_batch_job_gives_what_stylize_gives(tiny_weights, tmp_path, folders):
    contents, styles = folders
    out, single = tmp_path / "out", tmp_path / "single"
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("job,content,style,tau,seed\none,contents/a.png,styles/style_ink.png,1.1,7\n")
    three = ["--steps", "1", "--views", "3"]  # 0°, 120°, 240°: the back view still comes from the set's 180° view
    assert main(["batch", "--weights", str(tiny_weights), "--out", str(out), "--manifest", str(manifest), *three]) == 0
    assert main(["stylize", "--weights", str(tiny_weights), "--content", str(contents / "a.png"), "--style",
                 str(styles / "style_ink.png"), "--tau", "1.1", "--seed", "7", *three, "--out", str(single)]) == 0
    for name in ("view_000.png", "view_002.png", "back_views/content_back_000.png"):
        ours = torch.from_numpy(np.asarray(Image.open(out / "jobs" / "one" / name), dtype=np.float32))
        ref = torch.from_numpy(np.asarray(Image.open(single / name), dtype=np.float32))
        # the cached back view goes in as an image clamped to [-1, 1]: at most a rounding step on 8 bits
        torch.testing.assert_close(ours, ref, atol=2.0, rtol=0.0)


def test_an_empty_out_is_refused_and_nothing_is_written_in_the_current_folder(tmp_path, folders, monkeypatch, capsys):
    contents, styles = folders
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    args = ["batch", "--weights", str(tmp_path / "weights"), "--out", "", "--contents", str(contents),
            "--styles", str(styles), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--out is empty; give an output folder" in err and len(err.splitlines()) == 1, err
    assert list(here.iterdir()) == []


def test_back_views_use_the_sets_180_degree_view_in_stylize_and_batch(tiny_weights, tmp_path, folders, monkeypatch):
    import diffstyle360_core.inputs as P  # where the pipeline picks the back-view camera

    chosen = []
    original = P.back_view_index

    def spy(cameras):
        index = original(cameras)
        chosen.append(cameras.yaws_deg[index])
        return index

    monkeypatch.setattr(P, "back_view_index", spy)
    contents, styles = folders
    three = ["--steps", "1", "--views", "3"]  # 0°, 112.5°, 225°: no 180° among the rendered views
    assert main(["stylize", "--weights", str(tiny_weights), "--content", str(contents / "a.png"), "--style",
                 str(styles / "style_ink.png"), *three, "--out", str(tmp_path / "single")]) == 0
    assert main(["batch", "--weights", str(tiny_weights), "--contents", str(contents), "--styles", str(styles),
                 *three, "--out", str(tmp_path / "out")]) == 0
    assert chosen and all(abs(yaw - 180.0) < 1e-6 for yaw in chosen), chosen


def test_a_failing_job_is_recorded_and_the_batch_goes_on(tiny_weights, tmp_path, folders, monkeypatch, capsys):
    contents, styles = folders
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "content,style,alpha,tau,views\n"
        "contents/a.png,styles/style_ink.png;styles/style_posterized.png,0.5,,\n"  # a blend, batch defaults
        "contents/missing.png,styles/style_ink.png,,,\n"                            # found before loading
        "contents/b.png,styles/style_ink.png,,3.5,\n"                               # tau out of range
        "contents/b.png,styles/style_posterized.png,,,\n")                          # fails while running
    original = B.BatchRunner.run

    def run(self, job):
        if job.name == "b__style_posterized":
            raise RuntimeError("simulated failure\nsecond line")
        return original(self, job)

    monkeypatch.setattr(B.BatchRunner, "run", run)
    out = tmp_path / "out"
    assert main(_batch(tiny_weights, out, "--manifest", str(manifest))) == 2
    summary = _summary(out)
    statuses = {name: (row["status"], row["error"]) for name, row in summary.items()}
    assert statuses["a__style_ink+style_posterized"] == ("done", "")
    assert statuses["missing__style_ink"][0] == "failed" and "--content file" in statuses["missing__style_ink"][1]
    assert statuses["b__style_ink"][0] == "failed" and statuses["b__style_ink"][1].startswith("--tau must be in")
    assert statuses["b__style_posterized"] == ("failed", "RuntimeError: simulated failure second line")
    assert _record(out, "a__style_ink+style_posterized")["style_label"] == "style_ink+style_posterized@0.5"
    assert not (out / "jobs" / "b__style_posterized").exists()
    assert "job b__style_posterized failed: RuntimeError: simulated failure" in capsys.readouterr().err


def test_ctrl_c_keeps_the_completed_jobs_and_a_rerun_finishes(tiny_weights, tmp_path, folders, monkeypatch, capsys):
    contents, styles = folders
    original = B.BatchRunner.run
    calls = []

    def run(self, job):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, job)

    monkeypatch.setattr(B.BatchRunner, "run", run)
    out = tmp_path / "out"
    args = _batch(tiny_weights, out, "--contents", str(contents), "--styles", str(styles))
    assert main(args) == 130
    assert "interrupted; every complete job" in capsys.readouterr().err
    assert B.read_job_record(out / "jobs" / calls[0]) is not None
    assert not (out / "jobs" / calls[1]).exists()
    monkeypatch.setattr(B.BatchRunner, "run", original)
    assert main(args) == 0
    summary = _summary(out)
    assert summary[calls[0]]["status"] == "skipped"
    assert sum(row["status"] == "done" for row in summary.values()) == 3


def test_a_changed_row_is_run_again(tiny_weights, tmp_path, folders):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("job,content,style,tau\nj,contents/a.png,styles/style_ink.png,1.0\n")
    out = tmp_path / "out"
    assert main(_batch(tiny_weights, out, "--manifest", str(manifest))) == 0
    manifest.write_text("job,content,style,tau\nj,contents/a.png,styles/style_ink.png,1.1\n")
    assert main(_batch(tiny_weights, out, "--manifest", str(manifest))) == 0
    assert _summary(out)["j"]["status"] == "done"
    assert _record(out, "j")["spec"]["options"]["tau"] == 1.1


@pytest.mark.parametrize("text, message", [
    ("content,colour\na.png,red\n", "unknown column(s) ['colour']"),
    ("style\ns.png\n", "a 'content' column is required"),
    ("job,content\nx,a.png\nx,b.png\n", "manifest rows 2 and 3 are the same job (x)"),
    ("content\n", "no jobs"),
])
def test_a_bad_manifest_exits_2_before_any_model_loads(tiny_weights, tmp_path, monkeypatch, capsys, text, message):
    monkeypatch.setattr(loading, "load_main", lambda *a, **k: pytest.fail("a model was loaded"))
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(text)
    assert main(_batch(tiny_weights, tmp_path / "out", "--manifest", str(manifest))) == 2
    assert message in capsys.readouterr().err


def test_shards_cover_every_job_once_in_balanced_blocks():
    jobs = [B.Job(f"j{i}", [], i) for i in range(11)]
    for world in (1, 2, 3, 4, 11, 16):
        blocks = [B.Shard(r, world).take(jobs) for r in range(world)]
        assert [j.name for block in blocks for j in block] == [j.name for j in jobs]
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert B.shard_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == B.Shard(1, 2, 1)
    assert B.shard_from_env({}) == B.Shard(0, 1, 0)
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        B.shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_back_view_cache_is_keyed_by_image_and_settings_and_outlives_memory(tmp_path):
    from diffstyle360_core.images import to_model_tensor
    from diffstyle360_core.options import SamplerOptions

    calls = []

    def generate(fronts, sampler, crop):
        calls.append(len(fronts))
        return torch.cat([-to_model_tensor(f, 16, crop=crop) for f in fronts])

    face = Image.open(IMAGES / "astronaut.png").convert("RGB")
    mirror = face.transpose(Image.FLIP_LEFT_RIGHT)
    seed1, seed2 = SamplerOptions(seed=1, steps=1), SamplerOptions(seed=2, steps=1)
    cache = B.BackViewCache(tmp_path, {"weights": "w"}, generate, keep=1)
    first = cache.backs([face, mirror, face], 16, seed1, "center")
    assert calls == [2]  # two distinct images, one batched run
    torch.testing.assert_close(first[0], first[2], rtol=0, atol=0)
    again = cache.backs([face, mirror], 16, seed1, "center")  # face was evicted from memory: read from disk
    assert calls == [2]
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    cache.backs([face], 16, seed2, "center")  # another seed: another back view
    assert calls == [2, 1]
    B.BackViewCache(tmp_path, {"weights": "w"}, generate).backs([mirror], 16, seed1, "center")  # a rerun
    assert calls == [2, 1]
    B.BackViewCache(tmp_path, {"weights": "other"}, generate).backs([mirror], 16, seed1, "center")
    assert calls == [2, 1, 1]


# --------------------------------------------------------------------------- #
# two processes (torchrun, gloo): one rank killed mid-way, then the batch resumed
# --------------------------------------------------------------------------- #
def _torchrun(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "diffstyle360_core", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _rank_pid(launcher: int, rank: int) -> int:
    """The worker process of ``rank`` among the launcher's children (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} among {children}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_two_processes_share_the_jobs_and_a_killed_rank_is_finished_by_the_rerun(tiny_weights, tmp_path, folders):
    contents, styles = folders
    blocker = contents / "blocker.png"
    os.mkfifo(blocker)  # opening it waits for a writer: rank 1's second job stops there, deterministically
    rows = ["job,content,style,seed"]
    for i in range(8):
        content = "contents/blocker.png" if i == 5 else f"contents/{'ab'[i % 2]}.png"
        rows.append(f"j{i},{content},styles/{('style_ink', 'style_posterized')[i // 4]}.png,{i}")
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = _batch(tiny_weights, out, "--manifest", str(manifest))

    proc = _torchrun(args)
    try:
        deadline = time.time() + 300
        marker = out / "results" / "rank-1-of-2.jsonl"  # a line per job, written once its folder is closed
        while '"j4"' not in (marker.read_text() if marker.exists() else ""):  # rank 1 (jobs 4-7) ended its first
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    first = {j: B.read_job_record(out / "jobs" / j) for j in (f"j{i}" for i in range(8))}
    done_first = {j for j, r in first.items() if r is not None}
    assert "j4" in done_first and not {"j5", "j6", "j7"} & done_first, err
    assert {first[j]["rank"] for j in done_first} <= {0, 1}

    blocker.unlink()
    Image.open(contents / "a.png").save(blocker)
    proc = _torchrun(args)
    out_text, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = _summary(out)
    assert list(summary) == [f"j{i}" for i in range(8)]
    for job, row in summary.items():
        record = B.read_job_record(out / "jobs" / job)
        assert record is not None and record["views"] == 2
        if job in done_first:  # complete before the kill: skipped, not written again
            assert row["status"] == "skipped" and record["run_id"] == first[job]["run_id"]
        else:
            assert row["status"] == "done" and record["rank"] == (0 if int(job[1:]) < 4 else 1)
    leftovers = [p for pattern in (".ds360-partial-*", ".ds360-old-*", ".ds360-journal.json")
                 for p in out.glob(f"jobs/*/{pattern}")]
    assert not leftovers  # no partial run, aside folder or unfinished commit left behind
    assert "summary in" in out_text
