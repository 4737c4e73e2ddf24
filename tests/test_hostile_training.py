"""Hostile and mistaken inputs to training (issue 14, items 1, 4 and the training part of 5).

A checkpoint folder is data: a pickle planted in any of its files never runs (a marker file its
``__reduce__`` would create never appears) and the run refuses in one sentence naming the file.
Damaged files, another run's checkpoints, a folder holding another run, signals during training,
unusable devices and a non-empty ``make-tiny-dataset`` folder each get one sentence and leave the
user's files as they were.
"""

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from diffstyle360_core.cli.main import main
from diffstyle360_core.folder_lock import LOCK_NAME, holder_pid
from diffstyle360_core.training import TrainConfig, make_tiny_dataset, train
from diffstyle360_core.training.fingerprint import RECIPE_KEYS, file_crc32
from diffstyle360_core.training.interrupt import StopSignals, TrainingInterrupted
from diffstyle360_core.training.resume import (CheckpointError, check_files, read_state, save_checkpoint,
                                               trainable_state)
from diffstyle360_core.training.run_folder import checkpoint_folders, locked_run_folder, plan_run, prune_checkpoints
from test_folder_lock import hold_in_another_process

VIEWS = 8
ROOT = Path(__file__).resolve().parents[1]
OUR_FILES = ("state.json", "trainable.safetensors", "optimizer.safetensors", "rng_0.safetensors")
ACCELERATE_FILES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "model.safetensors")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("hostile_data") / "data", samples=2, views=VIEWS)


@pytest.fixture(scope="module")
def source_run(tiny_weights, data, tmp_path_factory):
    """A finished 2-step run with a checkpoint at each step: the folder every test copies and tampers with."""
    out = tmp_path_factory.mktemp("hostile_source") / "run"
    train(TrainConfig(weights=str(tiny_weights), data=str(data), out=str(out), steps=2, views_per_sample=VIEWS,
                      learning_rate=1e-3, checkpoint_every=1, preview_every=0, device="cpu"), progress=False)
    return out


def _copy_run(source_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(source_run, out)
    return out


def _args(tiny_weights, data, out, *extra):
    return ["train", "--weights", str(tiny_weights), "--data", str(data), "--out", str(out), "--views", str(VIEWS),
            "--lr", "1e-3", "--preview-every", "0", "--device", "cpu", "--quiet", "--steps", "3", *extra]


def _run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err  # one line, no traceback
    return lines[0]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.is_dir())
            for p in sorted(root.rglob("*"))}


class _Hostile:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _hostile_bytes(marker: Path, kind: str = "torch") -> bytes:
    if kind == "torch":  # what accelerate's save_state writes (torch.save's zip of a pickle)
        buffer = io.BytesIO()
        torch.save({"state": _Hostile(marker)}, buffer)
        return buffer.getvalue()
    return pickle.dumps(_Hostile(marker))


def test_the_hostile_payload_is_live(tmp_path):
    """The planted files really run code when unpickled: the tests below would catch an unpickling loader."""
    for kind in ("torch", "pickle"):
        marker = tmp_path / f"ran-{kind}"
        payload = _hostile_bytes(marker, kind)
        if kind == "torch":
            torch.load(io.BytesIO(payload), weights_only=False)
        else:
            pickle.loads(payload)
        assert marker.exists()


def _rewrite_manifest(folder: Path, name: str) -> None:
    """Make state.json agree with a replaced file (size and CRC-32), as a forger would."""
    state = json.loads((folder / "state.json").read_text())
    state["files"][name] = {"bytes": (folder / name).stat().st_size, "crc32": file_crc32(folder / name)}
    (folder / "state.json").write_text(json.dumps(state))


# ---------------------------------------------------------------------------------- item 1: no unpickling
@pytest.mark.parametrize("name, forged", [(name, False) for name in OUR_FILES]
                         + [(name, True) for name in OUR_FILES if name != "state.json"],  # state.json: the manifest
                         ids=lambda v: v if isinstance(v, str) else ("manifest-forged" if v else "plain"))
def test_hostile_pickle_in_each_checkpoint_file_is_refused_and_never_runs(source_run, tiny_weights, data, tmp_path,
                                                                          capsys, name, forged):
    out = _copy_run(source_run, tmp_path)
    folder = out / "checkpoints" / "step_000002"
    marker = tmp_path / "marker"
    (folder / name).write_bytes(_hostile_bytes(marker, "pickle" if name == "state.json" else "torch"))
    if forged:
        _rewrite_manifest(folder, name)
    before = _snapshot(out)
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    line = _error_line(err)
    assert code == 2
    assert str(folder / name) in line, line
    assert not marker.exists(), "a pickle in the checkpoint was executed"
    assert _snapshot(out) == before  # refused before anything was written


def test_hostile_run_record_is_refused_and_never_runs(source_run, tiny_weights, data, tmp_path, capsys):
    out = _copy_run(source_run, tmp_path)
    marker = tmp_path / "marker"
    (out / "run.json").write_bytes(_hostile_bytes(marker, "pickle"))
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    line = _error_line(err)
    assert code == 2 and f"{out / 'run.json'} is not a training run record" in line, line
    assert not marker.exists()


def test_accelerate_format_checkpoint_is_refused_without_unpickling(source_run, tiny_weights, data, tmp_path, capsys):
    """A folder written by accelerate's save_state (pickles, no state.json) is never loaded."""
    out = _copy_run(source_run, tmp_path)
    shutil.rmtree(out / "checkpoints")
    folder = out / "checkpoints" / "step_000002"
    folder.mkdir(parents=True)
    marker = tmp_path / "marker"
    for name in ACCELERATE_FILES:
        (folder / name).write_bytes(_hostile_bytes(marker))
    for resume in ("latest", str(folder)):
        code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", resume), capsys)
        line = _error_line(err)
        assert code == 2 and str(folder / "state.json") in line and "unpickle" in line, line
    assert not marker.exists()


def test_resume_reads_no_pickle_and_ignores_planted_extra_files(source_run, tiny_weights, data, tmp_path, capsys,
                                                                monkeypatch):
    """A complete resume with every unpickling entry point disabled; pickles beside the files are never opened."""
    out = _copy_run(source_run, tmp_path)
    marker = tmp_path / "marker"
    for name in ACCELERATE_FILES:
        (out / "checkpoints" / "step_000002" / name).write_bytes(_hostile_bytes(marker))

    def refuse(*args, **kwargs):
        raise AssertionError("training unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    code, printed, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    assert code == 0, err
    assert "trained steps 2→3" in printed
    assert not marker.exists()
    assert (out / "checkpoints" / "step_000003" / "state.json").is_file()


def test_the_fingerprint_is_the_content_not_the_paths(tiny_weights, data, tmp_path):
    """A moved copy, or a folder of symbolic links, is the same data; one changed image is other data."""
    from diffstyle360_core.training import validate_dataset
    from diffstyle360_core.training.fingerprint import run_fingerprint

    config = TrainConfig(views_per_sample=VIEWS)

    def digest(root):
        samples = validate_dataset(root, views_per_sample=VIEWS)
        return run_fingerprint(config, tiny_weights / "main", root, samples)["data"]["digest"]

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    links = tmp_path / "links"
    for image in data.rglob("*.png"):
        target = links / image.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image)
    assert digest(data) == digest(copy) == digest(links)
    image = copy / "sample_001" / "target" / "003.png"
    shutil.copy(copy / "sample_001" / "target" / "004.png", image)
    assert digest(copy) != digest(data)


# ------------------------------------------------------------------------ item 1: damaged checkpoint files
_DROP = object()  # _edit_state: remove the key


def _edit_state(folder: Path, **changes) -> None:
    state = json.loads((folder / "state.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            state.pop(key)
        else:
            state[key] = value
    (folder / "state.json").write_text(json.dumps(state))


DAMAGE = {
    "trainable truncated": ("trainable.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                            "not the"),
    "optimizer garbage": ("optimizer.safetensors", lambda p: p.write_bytes(os.urandom(p.stat().st_size)), "damaged"),
    "rng missing": ("rng_0.safetensors", lambda p: p.unlink(), "is missing"),
    "rng is a folder": ("rng_0.safetensors", lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    "state garbage": ("state.json", lambda p: p.write_bytes(b"\x00\xff garbage"), "not valid JSON"),
    "state empty": ("state.json", lambda p: p.write_bytes(b""), "not valid JSON"),
    "state missing": ("state.json", lambda p: p.unlink(), "is missing"),
    "negative step": ("state.json", lambda p: _edit_state(p.parent, step=-3), "step -3"),
    "absent step": ("state.json", lambda p: _edit_state(p.parent, step=_DROP), "step None"),
    "step of the wrong type": ("state.json", lambda p: _edit_state(p.parent, step="2"), "step '2'"),
    "step not the folder's": ("state.json", lambda p: _edit_state(p.parent, step=7), "named step_000002"),
    "processes wrong type": ("state.json", lambda p: _edit_state(p.parent, processes=[1]), "processes"),
    "files list wrong": ("state.json", lambda p: _edit_state(p.parent, files={"a.bin": {}}), "exactly the files"),
    "fingerprint wrong type": ("state.json", lambda p: _edit_state(p.parent, fingerprint="x"), "malformed"),
    "other format": ("state.json", lambda p: _edit_state(p.parent, format="accelerate"), "not a training"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_file_is_named_before_use(source_run, tmp_path, damage):
    name, spoil, expected = DAMAGE[damage]
    out = _copy_run(source_run, tmp_path)
    folder = out / "checkpoints" / "step_000002"
    spoil(folder / name)
    with pytest.raises(CheckpointError) as err:
        check_files(read_state(folder))
    message = str(err.value)
    assert str(folder / name) in message and expected in message, message
    assert "\n" not in message


def test_garbage_rng_file_is_an_error_not_an_inexact_resume(source_run, tiny_weights, data, tmp_path, capsys):
    """A random-state file that parses but holds no valid state is refused (its CRC made to agree)."""
    from safetensors.torch import load_file, save_file

    out = _copy_run(source_run, tmp_path)
    folder = out / "checkpoints" / "step_000002"
    rng = load_file(str(folder / "rng_0.safetensors"))
    rng["torch_cpu"] = rng["torch_cpu"][:100]  # a torch generator state is 5056 bytes
    save_file(rng, str(folder / "rng_0.safetensors"))
    _rewrite_manifest(folder, "rng_0.safetensors")
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    line = _error_line(err)
    assert code == 2 and str(folder / "rng_0.safetensors") in line and "random states" in line, line
    assert not (out / "checkpoints" / "step_000003").exists()


# --------------------------------------------------------------------- item 1: another run's checkpoint
def test_another_runs_checkpoint_is_refused_saying_what_differs_and_accepted_anyway(source_run, tiny_weights, data,
                                                                                     tmp_path, capsys):
    out = _copy_run(source_run, tmp_path)
    other_data = make_tiny_dataset(tmp_path / "other_data", samples=2, views=VIEWS, seed=1)
    other_weights = tmp_path / "other_weights"
    shutil.copytree(tiny_weights / "main", other_weights / "main")
    with open(other_weights / "main" / "config.json", "a") as f:
        f.write("\n")  # one byte more: other weights, as far as anyone can prove
    before = _snapshot(out)
    for weights, dataset, extra, differs in (
            (tiny_weights, data, ["--seed", "1"], "--seed 1 here, 0 in"),
            (tiny_weights, data, ["--lr", "2e-3"], "--lr 0.002 here, 0.001 in"),
            (tiny_weights, other_data, [], "other data (this run: "),
            (other_weights, data, [], f"other weights (this run: {(other_weights / 'main').resolve()}")):
        code, _, err = _run_cli(_args(weights, dataset, out, "--resume", "latest", *extra), capsys)
        line = _error_line(err)
        assert code == 2 and differs in line and "--resume-anyway" in line, line
    checkpoint = out / "checkpoints" / "step_000002"
    code, _, err = _run_cli(_args(tiny_weights, data, tmp_path / "new", "--resume", str(checkpoint), "--seed", "1"),
                            capsys)
    assert code == 2 and f"checkpoint {checkpoint} belongs to another run (--seed 1 here" in _error_line(err)
    assert _snapshot(out) == before and not (tmp_path / "new").exists()

    code, printed, err = _run_cli(_args(tiny_weights, data, tmp_path / "new", "--resume", str(checkpoint),
                                        "--seed", "1", "--resume-anyway"), capsys)
    assert code == 0, err
    assert f"resuming {checkpoint} of another run anyway: seed 1 here, 0 in the checkpoint" in printed
    assert "trained steps 2→3" in printed
    assert json.loads((tmp_path / "new" / "run.json").read_text())["fingerprint"]["recipe"]["seed"] == 1
    assert _snapshot(out) == before  # the source folder is only read


def test_resume_latest_never_picks_up_another_runs_state(source_run, tiny_weights, data, tmp_path, capsys):
    out = _copy_run(source_run, tmp_path)
    newest = out / "checkpoints" / "step_000002"
    state = json.loads((newest / "state.json").read_text())
    state["fingerprint"]["recipe"]["seed"] = 7  # dropped in from a run with another seed
    (newest / "state.json").write_text(json.dumps(state))
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    line = _error_line(err)
    assert code == 2 and f"checkpoint {newest} belongs to another run" in line and "7 in the checkpoint" in line
    # a damaged newest checkpoint is an error too, not a silent fall-back to step_000001
    (newest / "optimizer.safetensors").write_bytes(b"junk")
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest", "--resume-anyway"), capsys)
    assert code == 2 and str(newest / "optimizer.safetensors") in _error_line(err)


# --------------------------------------------------------------------------------- item 4: folders
def test_new_run_into_a_folder_with_another_runs_checkpoints_refuses_and_touches_nothing(source_run, tiny_weights,
                                                                                         data, tmp_path, capsys):
    out = _copy_run(source_run, tmp_path)
    before = _snapshot(out)
    for extra in ([], ["--seed", "3"]):  # the same settings or others: a new run never mixes into an old folder
        code, _, err = _run_cli(_args(tiny_weights, data, out, *extra), capsys)
        line = _error_line(err)
        assert code == 2 and "already holds a training run" in line and "--resume latest" in line, line
    assert _snapshot(out) == before
    # a folder holding the user's own files is refused too
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine\n")
    before = _snapshot(mine)
    code, _, err = _run_cli(_args(tiny_weights, data, mine), capsys)
    assert code == 2 and "is not empty (it holds config.yaml)" in _error_line(err)
    code, _, err = _run_cli(_args(tiny_weights, data, mine, "--resume", "latest"), capsys)
    assert code == 2 and "holds no checkpoint and no training run" in _error_line(err)
    assert _snapshot(mine) == before


def test_resuming_an_older_checkpoint_would_overwrite_a_newer_one_so_it_refuses(source_run, tiny_weights, data,
                                                                                tmp_path, capsys):
    out = _copy_run(source_run, tmp_path)
    before = _snapshot(out)
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", str(out / "checkpoints" / "step_000001")),
                            capsys)
    assert code == 2 and "step_000002 is newer than the checkpoint to resume" in _error_line(err)
    assert _snapshot(out) == before


def _contents(root: Path) -> dict:
    """Every name under ``root`` with its bytes (None for a folder): what "nothing changed" means."""
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_a_folder_a_live_run_holds_is_refused_at_once_and_freed_when_that_run_is_killed(source_run, tiny_weights,
                                                                                       data, tmp_path, capsys,
                                                                                       monkeypatch):
    out = _copy_run(source_run, tmp_path)
    assert LOCK_NAME not in _contents(out)  # the finished source run left no lock file
    holder = hold_in_another_process(out)  # another run, in another process, holds the folder
    try:
        before, stamps = _contents(out), _snapshot(out)
        loads = []
        with monkeypatch.context() as patch:
            patch.setattr("diffstyle360_core.weights.load_model", lambda *a, **k: loads.append(a) or 1 / 0)
            code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
        assert code == 2 and _error_line(err) == (
            f"error: output folder {out} is in use by another DiffStyle360 run (process {holder.pid}); wait for it "
            "to finish or choose another --out folder (nothing was changed)")
        assert loads == []  # refused before the model was loaded
        assert _contents(out) == before and _snapshot(out) == stamps  # nothing written, not even the lock file
        holder.kill()  # SIGKILL: the holder cleans nothing up; the OS frees its lock, its lock file stays
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert LOCK_NAME in _contents(out)
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--resume", "latest"), capsys)
    assert code == 0, err
    assert read_state(out / "checkpoints" / "step_000003").step == 3
    assert LOCK_NAME not in _contents(out)  # a run that finished removes its lock file


def test_a_lock_file_left_by_a_killed_run_is_not_taken_for_a_run_file(tiny_weights, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = hold_in_another_process(out)
    holder.kill()  # a new run killed right after it took the folder: only its lock file is there
    holder.wait(10)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    config = TrainConfig(weights=str(tiny_weights), data=str(data), out=str(out))
    assert plan_run(config, out, {}).checkpoint is None  # an empty folder: a new run may start in it
    with locked_run_folder(out):
        assert holder_pid(out / LOCK_NAME) == os.getpid()  # taken over
    assert list(out.iterdir()) == []
    config = config.replace(resume="latest")
    assert plan_run(config, out, {}).notes == [f"no checkpoint in {out / 'checkpoints'}: starting at step 0"]


def test_a_refused_run_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="failed"), locked_run_folder(out):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
        raise RuntimeError("the run failed before writing anything")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    with locked_run_folder(tmp_path / "mine"):
        (tmp_path / "mine" / "run.json").write_text("{}")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["run.json"]  # what the run wrote stays


def test_rotation_deletes_only_checkpoints_proven_to_be_this_runs(source_run, tmp_path):
    out = _copy_run(source_run, tmp_path)
    ours = read_state(out / "checkpoints" / "step_000002").fingerprint
    foreign = out / "checkpoints" / "step_000001"
    state = json.loads((foreign / "state.json").read_text())
    state["fingerprint"]["recipe"]["learning_rate"] = 0.5
    (foreign / "state.json").write_text(json.dumps(state))
    (out / "checkpoints" / "step_000000").mkdir()  # not a checkpoint at all
    assert prune_checkpoints(out, ours, keep=1) == []
    assert foreign.is_dir() and (out / "checkpoints" / "step_000000").is_dir()
    shutil.rmtree(out)
    out = _copy_run(source_run, tmp_path)
    assert prune_checkpoints(out, ours, keep=1) == [out / "checkpoints" / "step_000001"]


def test_a_rotation_stopped_half_way_leaves_no_damaged_checkpoint(source_run, tmp_path, monkeypatch):
    """The old checkpoint is moved out of sight before it is deleted: a stop during the delete leaves the
    newest checkpoints complete and no step_* folder with files missing."""
    out = _copy_run(source_run, tmp_path)
    ours = read_state(out / "checkpoints" / "step_000002").fingerprint

    def stopped_half_way(path, ignore_errors=False):
        (Path(path) / "state.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", stopped_half_way)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(out, ours, keep=1)
    assert [p.name for p in checkpoint_folders(out)] == ["step_000002"]
    assert read_state(out / "checkpoints" / "step_000002").step == 2


class _OneProcess(types.SimpleNamespace):
    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self):
        pass


def test_checkpoint_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A failed write leaves no step folder (its hidden .partial folder is removed); a killed one leaves at most
    the hidden folder, which `latest` never picks and the next save of that step replaces."""
    import safetensors.torch as st

    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    out = tmp_path / "run"
    fingerprint = {"weights": {"digest": "w", "folder": "/w"}, "data": {"digest": "d", "folder": "/d"},
                   "recipe": dict.fromkeys(RECIPE_KEYS)}
    save_checkpoint(_OneProcess(), out / "checkpoints" / "step_000001", step=1, fingerprint=fingerprint,
                    trainable=trainable_state(module), optimizer=optimizer)
    real, calls = st.save_file, []

    def crash_on_second_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", crash_on_second_file)
    with pytest.raises(OSError):
        save_checkpoint(_OneProcess(), out / "checkpoints" / "step_000002", step=2, fingerprint=fingerprint,
                        trainable=trainable_state(module), optimizer=optimizer)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]
    (out / "checkpoints" / ".partial-step_000002").mkdir()  # what a SIGKILL during the write leaves
    (out / "checkpoints" / ".partial-step_000002" / "trainable.safetensors").write_bytes(b"half")
    assert [p.name for p in checkpoint_folders(out)] == ["step_000001"]
    monkeypatch.setattr(st, "save_file", real)
    save_checkpoint(_OneProcess(), out / "checkpoints" / "step_000002", step=2, fingerprint=fingerprint,
                    trainable=trainable_state(module), optimizer=optimizer)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert read_state(out / "checkpoints" / "step_000002").step == 2


def test_a_full_disk_while_saving_says_what_was_kept(source_run, tiny_weights, data, tmp_path, capsys, monkeypatch):
    import safetensors.torch as st

    real = st.save_file

    def disk_full_at_step_2(tensors, path, metadata=None):
        if ".partial-step_000002" in str(path):
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", disk_full_at_step_2)
    out = tmp_path / "run"
    code, _, err = _run_cli(_args(tiny_weights, data, out, "--checkpoint-every", "1"), capsys)
    assert code == 2
    assert _error_line(err) == (
        f"error: cannot save the checkpoint of step 2 in {out}/checkpoints (No space left on device); kept "
        f"{out}/checkpoints/step_000001 and {out}/style_module.safetensors; free space or fix the folder, then "
        "resume with --resume latest")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]


def test_state_round_trips_through_a_checkpoint_with_a_grad_scaler(tmp_path):
    """Weights, AdamW moments and GradScaler numbers come back exactly (state, same path); the optimizer keeps
    the hyperparameters of the run that loads it."""
    from diffstyle360_core.training.resume import apply_tensors, load_tensors

    def make(lr):
        torch.manual_seed(1)
        module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        return module, torch.optim.AdamW(module.parameters(), lr=lr), torch.amp.GradScaler("cpu", init_scale=64.0)

    module, optimizer, scaler = make(1e-2)
    for _ in range(3):
        scaler.scale(module(torch.randn(5, 3)).pow(2).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    fingerprint = {"weights": {"digest": "w", "folder": "/w"}, "data": {"digest": "d", "folder": "/d"},
                   "recipe": dict.fromkeys(RECIPE_KEYS)}
    folder = save_checkpoint(_OneProcess(), tmp_path / "checkpoints" / "step_000003", step=3, fingerprint=fingerprint,
                             trainable=trainable_state(module), optimizer=optimizer, scaler=scaler)
    checkpoint = read_state(folder)
    check_files(checkpoint)
    fresh, fresh_optimizer, fresh_scaler = make(5e-3)
    tensors = load_tensors(checkpoint, rank=0, trainable=trainable_state(fresh),
                           param_shapes=[tuple(p.shape) for p in fresh.parameters()])
    apply_tensors(tensors, fresh, fresh_optimizer, fresh_scaler, checkpoint.scaler)
    for a, b in zip(module.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for i, entry in optimizer.state_dict()["state"].items():
        loaded = fresh_optimizer.state_dict()["state"][i]
        assert all(torch.equal(entry[k], loaded[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert fresh_optimizer.param_groups[0]["lr"] == 5e-3
    assert fresh_scaler.state_dict() == scaler.state_dict()


# ---------------------------------------------------------------------------- item 4: signals
def _default_signals():  # the test runner may ignore some signals (nohup, background jobs); a user's shell does not
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _start_long_run(argv, out):
    """``train`` in a subprocess, returned once its loop has started (run.json written: signals are deferred)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "diffstyle360_core", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    deadline = time.time() + 240
    while not (out / "run.json").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"training did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_signal_during_training_saves_the_current_step_and_says_so(tiny_weights, data, tmp_path, signum):
    out = tmp_path / "run"
    argv = _args(tiny_weights, data, out, "--checkpoint-every", "0")
    argv[argv.index("--steps") + 1] = "1000"
    proc = _start_long_run(argv, out)
    try:
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    saved = checkpoint_folders(out)
    assert len(saved) == 1, (saved, err)
    step = read_state(saved[0]).step
    assert step >= 1
    check_files(read_state(saved[0]))
    assert last == (f"interrupted at step {step}; saved {out}/checkpoints/step_{step:06d} and "
                    f"{out}/style_module.safetensors; resume with --resume latest"), err
    assert "nothing written" not in err and "Traceback" not in err
    assert not list((out / "checkpoints").glob(".partial-*"))
    if signum == signal.SIGINT:  # the advice works: the run continues from the saved step
        argv[argv.index("--steps") + 1] = str(step + 1)
        assert main([*argv, "--resume", "latest"]) == 0
        assert read_state(out / "checkpoints" / f"step_{step + 1:06d}").step == step + 1


def test_second_ctrl_c_stops_at_once_and_says_truly_what_was_kept(tiny_weights, data, tmp_path):
    out = tmp_path / "run"
    argv = _args(tiny_weights, data, out, "--checkpoint-every", "0")
    argv[argv.index("--steps") + 1] = "1000"
    proc = _start_long_run(argv, out)
    try:
        proc.send_signal(signal.SIGINT)
        seen = []
        while "stopping after the current step" not in "".join(seen):  # the first one was noted
            line = proc.stderr.readline()
            assert line, seen
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    saved = checkpoint_folders(out)
    if last.startswith("interrupted again"):  # the usual case: the second Ctrl-C came during the step
        assert not saved and "before any checkpoint" in last and "--resume latest" in last, (last, saved)
    else:  # the step and its checkpoint were done before the second Ctrl-C arrived
        assert last.startswith("interrupted at step") and saved, last
    assert "Traceback" not in err and not list(out.rglob("step_*/*.tmp"))


def test_stop_signals_defer_in_the_loop_and_stop_at_once_before_it_or_when_repeated():
    placeholder = lambda signum, frame: None  # noqa: E731 - the runner may ignore SIGHUP (nohup); StopSignals would too
    previous = {s: signal.signal(s, placeholder) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        _stop_signals_round()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_signals_round():
    with StopSignals("interrupted before training started; nothing written") as stop:
        with pytest.raises(TrainingInterrupted) as early:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; this is only a bound
        assert early.value.exit_code == 143 and str(early.value).endswith("nothing written")
        stop.deferring, stop.forced_message = True, "interrupted again"
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested == signal.SIGHUP
        with pytest.raises(TrainingInterrupted) as forced:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert forced.value.exit_code == 130 and str(forced.value) == "interrupted again"
    assert signal.getsignal(signal.SIGTERM) != stop._handle  # handlers restored


# ------------------------------------------------------------------------- item 5: devices and precision
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "xpu", "tpu"])
def test_unusable_device_is_refused_in_one_sentence_and_nothing_is_written(tiny_weights, data, tmp_path, capsys,
                                                                           device):
    usable = {"cuda": torch.cuda.is_available(), "cuda:3": torch.cuda.device_count() > 3,
              "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
              "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(), "tpu": False}
    if usable[device]:
        pytest.skip(f"{device} is usable on this machine")
    argv = _args(tiny_weights, data, tmp_path / "out")
    argv[argv.index("--device") + 1] = device
    code, _, err = _run_cli(argv, capsys)
    line = _error_line(err)
    assert code == 2 and line.startswith(f"error: --device {device!r}"), line
    assert not (tmp_path / "out").exists()


def test_fp16_on_the_cpu_is_refused_in_one_sentence(tiny_weights, data, tmp_path, capsys):
    code, _, err = _run_cli(_args(tiny_weights, data, tmp_path / "out", "--mixed-precision", "fp16"), capsys)
    line = _error_line(err)
    assert code == 2 and "--mixed-precision fp16 needs a GPU" in line and "--mixed-precision 'no'" in line, line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ make-tiny-dataset
def test_make_tiny_dataset_refuses_a_non_empty_folder_and_names_only_its_own_flags(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    before = _snapshot(folder)
    code, _, err = _run_cli(["make-tiny-dataset", str(folder)], capsys)
    assert code == 2 and "is not empty" in _error_line(err)
    assert _snapshot(folder) == before
    own = {"--samples", "--views", "--size", "--seed"}
    for flag, value in (("--samples", "0"), ("--views", "-1"), ("--size", "100000"), ("--seed", "-1")):
        code, _, err = _run_cli(["make-tiny-dataset", str(tmp_path / "new"), flag, value], capsys)
        line = _error_line(err)
        named = {word.strip(",;:") for word in line.split() if word.startswith("--")}
        assert code == 2 and flag in named and named <= own, line
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, printed, _ = _run_cli(["make-tiny-dataset", str(empty), "--samples", "1", "--views", "2"], capsys)
    assert code == 0 and (empty / "sample_000" / "target" / "001.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left behind
