"""Which output folder a run may use, which checkpoint it resumes, and which old checkpoints it may delete.

One output folder holds one run. ``OUT/run.json`` records the run's fingerprint
(:mod:`.fingerprint`); each checkpoint records it too. The rules:

* a new run (no ``resume``) needs an empty or new folder: a folder with anything in it,
  another run's checkpoints above all, is refused and left untouched;
* ``resume: latest`` takes the newest ``checkpoints/step_*`` of the folder — only if its
  fingerprint is this run's (or ``resume_anyway``), never silently another run's state; a
  damaged newest checkpoint is an error, not a silent fall-back to an older one;
* a checkpoint from another run (other weights, data, seed, learning rate, …) is refused
  unless ``resume_anyway``, and the message lists what differs;
* old checkpoints are deleted (``keep_checkpoints``) only when their state.json proves they
  belong to this run (same fingerprint); anything else in ``checkpoints/`` stays;
* one run at a time: :func:`locked_run_folder` holds ``OUT/.ds360.lock``
  (:mod:`~diffstyle360_core.folder_lock`) for the whole run, so a second run into the folder
  is refused before it loads or writes anything; the OS frees it if the run is killed, and
  the lock file is never taken for a file of the run.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ..folder_lock import LOCK_NAME, FolderLock, LockBusy, LockUnavailable, NotALockFile
from .config import ConfigError, TrainConfig
from .fingerprint import check_fingerprint, differences
from .resume import PARTIAL_PREFIX, Checkpoint, CheckpointError, check_files, folder_step, read_state

CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "run.json"
RUN_FORMAT = "diffstyle360-training-run"
_NEW_FOLDER = "give an empty or new output folder for a new run"


def checkpoint_folders(out: Path) -> List[Path]:
    """``out/checkpoints/step_NNNNNN`` folders by step (hidden temporary folders are never listed)."""
    folder = Path(out) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and folder_step(p) is not None]
    return sorted(found, key=folder_step)


def _entries(out: Path) -> List[str]:
    """What ``out`` holds, less the lock file (the current run's own, or a killed run's that nobody holds)."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []


class RunFolderBusy(ConfigError):
    """Another run holds the output folder (its lock)."""


@contextmanager
def locked_run_folder(out: Path) -> Iterator[None]:
    """Hold ``out`` for one run: created if missing, locked, and on leaving unlocked (the lock file deleted).

    A second run is refused at once (:class:`RunFolderBusy`, one sentence naming the folder and the
    process that holds it). Folders created here that are still empty on leaving (a refused or failed
    run) are removed again.
    """
    out = Path(out)
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {out} ({err.strerror or err}); choose another --out "
                          "folder") from None
    lock = FolderLock(out, LOCK_NAME)
    try:
        try:
            lock.acquire()
        except LockBusy as busy:
            who = f"process {busy.pid}" if busy.pid is not None else f"lock file {busy.path}"
            raise RunFolderBusy(f"output folder {out} is in use by another DiffStyle360 run ({who}); wait for it "
                                "to finish or choose another --out folder (nothing was changed)") from None
        except NotALockFile as err:
            raise ConfigError(f"{err.path} is {err.what}, not a DiffStyle360 lock file; move it away or choose "
                              "another --out folder") from None
        except LockUnavailable as err:
            raise ConfigError(f"cannot lock output folder {out} ({err.cause.strerror or err.cause}); choose another "
                              "--out folder") from None
        yield
    finally:
        lock.release()
        for folder in made:
            try:
                folder.rmdir()  # only an empty one: a run that wrote nothing leaves no folder it created
            except OSError:
                break


def read_run_record(out: Path) -> Optional[Dict[str, Any]]:
    """The fingerprint in ``out/run.json``, None when there is no such file; a damaged one is an error."""
    path = Path(out) / RUN_FILE
    if not path.exists():
        return None
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            record = json.loads(f.read(1 << 20).decode("utf-8"))  # a run record is a few hundred bytes
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if (not isinstance(record, dict) or record.get("format") != RUN_FORMAT
            or check_fingerprint(record.get("fingerprint"))):
        raise ConfigError(f"{path} is not a training run record (damaged or not written by train); "
                          f"{_NEW_FOLDER}, or repair or remove that file")
    return record["fingerprint"]


def write_run_record(out: Path, fingerprint: Mapping[str, Any]) -> None:
    from ..files import write_text_atomic

    record = {"format": RUN_FORMAT, "version": 1, "fingerprint": dict(fingerprint)}
    write_text_atomic(Path(out) / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: the checked checkpoint to resume (None = step 0) and what to tell the user."""

    checkpoint: Optional[Checkpoint] = None
    notes: List[str] = field(default_factory=list)


def _refuse_other_run(what: str, diffs: List[str]) -> ConfigError:
    return ConfigError(f"{what} belongs to another run ({'; '.join(diffs)}); resume it anyway with --resume-anyway, "
                       f"or {_NEW_FOLDER}")


def plan_run(config: TrainConfig, out: Path, fingerprint: Mapping[str, Any], processes: int = 1) -> RunPlan:
    """Apply the module's rules to ``out`` and ``config.resume``; raises one sentence, changes nothing on disk."""
    out = Path(out)
    entries = _entries(out)
    if config.resume is None:
        if not entries:
            return RunPlan()
        found = checkpoint_folders(out)
        if found:
            raise ConfigError(f"output folder {out} already holds a training run (checkpoints up to {found[-1].name}); "
                              f"continue it with --resume latest, or {_NEW_FOLDER} (nothing was changed)")
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise ConfigError(f"output folder {out} is not empty (it holds {shown}); {_NEW_FOLDER}, or continue the "
                          "run there with --resume latest (nothing was changed)")

    record = read_run_record(out)
    notes: List[str] = []
    if record is not None:
        diffs = differences(fingerprint, record, f"its {RUN_FILE}")
        if diffs and not config.resume_anyway:
            raise _refuse_other_run(f"output folder {out}", diffs)
        if diffs:
            notes.append(f"continuing in {out}, which holds another run, anyway: {'; '.join(diffs)}")
    elif entries and config.resume != "latest":
        raise ConfigError(f"output folder {out} is not empty and holds no training run ({RUN_FILE}); give an "
                          "empty or new output folder to continue the checkpoint in (nothing was changed)")

    if config.resume == "latest":
        found = checkpoint_folders(out)
        if not found:
            if entries and record is None:
                raise ConfigError(f"output folder {out} holds no checkpoint and no training run ({RUN_FILE}); "
                                  f"{_NEW_FOLDER}, or give the checkpoint folder to resume")
            notes.append(f"no checkpoint in {out / CHECKPOINT_DIR}: starting at step 0")
            return RunPlan(None, notes)
        folder = found[-1]
    else:
        folder = Path(config.resume).expanduser()

    checkpoint = read_state(folder)
    diffs = differences(fingerprint, checkpoint.fingerprint)
    if diffs and not config.resume_anyway:
        raise _refuse_other_run(f"checkpoint {folder}", diffs)
    if diffs:
        notes.append(f"resuming {folder} of another run anyway: {'; '.join(diffs)}")
    if checkpoint.processes != processes:
        raise CheckpointError(f"checkpoint {folder} was written by {checkpoint.processes} process(es) and this run "
                              f"has {processes}; resume with the same number of processes")
    check_files(checkpoint)
    newer = [p for p in checkpoint_folders(out) if folder_step(p) > checkpoint.step]
    if newer:
        raise ConfigError(f"{newer[-1]} is newer than the checkpoint to resume ({folder.name}) and would be "
                          "written over; resume it (--resume latest), or give a new output folder to branch into")
    return RunPlan(checkpoint, notes)


def prune_checkpoints(out: Path, fingerprint: Mapping[str, Any], keep: int) -> List[Path]:
    """Delete all but the ``keep`` newest checkpoints that provably belong to this run; returns the deleted ones."""
    ours = []
    for folder in checkpoint_folders(out):
        try:
            recorded = read_state(folder).fingerprint
        except CheckpointError:
            continue  # not provably ours: left alone
        if not differences(fingerprint, recorded):
            ours.append(folder)
    doomed = ours[:-keep] if keep > 0 else []
    for folder in doomed:
        # out of sight first: a delete stopped half-way leaves a hidden folder, never a step_* checkpoint missing files
        hidden = folder.with_name(PARTIAL_PREFIX + "pruned-" + folder.name)
        os.replace(folder, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return doomed


def relative_to_out(path: Path, out: Path, shown_out: str) -> str:
    """``path`` as the user named the output folder (``OUT/checkpoints/step_000022``) for messages."""
    try:
        return os.path.join(shown_out, str(Path(path).relative_to(out)))
    except ValueError:
        return str(path)
