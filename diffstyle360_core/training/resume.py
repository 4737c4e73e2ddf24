"""Resumable training state: one checkpoint folder per saved step, data only, checked before use.

``OUT/checkpoints/step_000022/`` holds::

    state.json              step, number of processes, the run's fingerprint (weights, data, recipe),
                            GradScaler numbers (fp16 runs) and each file's size and CRC-32
    trainable.safetensors   the trainable weights (style/appearance module, view-consistency modules)
    optimizer.safetensors   AdamW's per-parameter state: state.<i>.step / exp_avg / exp_avg_sq
    rng_<rank>.safetensors  random states of each process (torch CPU and CUDA, Python, NumPy) as tensors

Nothing in a checkpoint is unpickled: JSON and safetensors are read as data, never as code
(accelerate's ``save_state``/``load_state`` are not used: they store the step counter and the
random states as pickles and load custom states with ``weights_only=False``). Every file is
checked before anything is applied — present, regular, the size and CRC-32 that state.json
records, parseable, exactly the expected tensors with the expected shapes and dtypes, finite —
and a problem is one :class:`CheckpointError` sentence naming the file. A folder is written
under a hidden temporary name and renamed into place, so a kill leaves the old or the new
complete checkpoint, never a half one named ``step_*``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import fsync_dir, fsync_path
from .config import ConfigError
from .fingerprint import check_fingerprint, file_crc32

FORMAT, VERSION = "diffstyle360-training-checkpoint", 1
STATE_FILE, TRAINABLE_FILE, OPTIMIZER_FILE = "state.json", "trainable.safetensors", "optimizer.safetensors"
PARTIAL_PREFIX = ".partial-"
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_STEP_NAME = re.compile(r"step_(\d{6,})")
_MAX_STATE_BYTES = 1 << 20
_FIX = "resume from another checkpoint, or start a new run in an empty output folder"


class CheckpointError(ConfigError):
    """A checkpoint folder or file that cannot be resumed from; the message names the file."""


def rng_file(rank: int) -> str:
    return f"rng_{int(rank)}.safetensors"


def step_folder_name(step: int) -> str:
    return f"step_{int(step):06d}"


def folder_step(path: Path) -> Optional[int]:
    """The step in a ``step_NNNNNN`` folder name, or None for any other name."""
    match = _STEP_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def expected_files(processes: int) -> List[str]:
    return [TRAINABLE_FILE, OPTIMIZER_FILE] + [rng_file(r) for r in range(processes)]


# ----------------------------------------------------------------------------------------------
# capturing state as tensors
# ----------------------------------------------------------------------------------------------
def trainable_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The trainable tensors of ``module`` (parameters with ``requires_grad`` + the temporal position tables)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
            if k in names or k.endswith(".pos_encoder.pe")}


def optimizer_tensors(optimizer) -> Dict[str, torch.Tensor]:
    """AdamW's per-parameter state as ``state.<i>.<name>`` tensors (parameters never stepped have none)."""
    out = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for name in ADAM_STATE:
            value = entry[name]
            value = value if torch.is_tensor(value) else torch.tensor(float(value))
            out[f"state.{int(index)}.{name}"] = value.detach().cpu().contiguous()
    return out


def rng_tensors() -> Dict[str, torch.Tensor]:
    """This process's random states (torch CPU and CUDA, Python, NumPy) as tensors."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "torch_cpu": torch.get_rng_state(),
        "python_state": torch.tensor(list(words), dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else float(gauss)], dtype=torch.float64),
        "python_has_gauss": torch.tensor([0 if gauss is None else 1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": torch.tensor([int(pos)], dtype=torch.int64),
        "numpy_has_gauss": torch.tensor([int(has_gauss)], dtype=torch.int64),
        "numpy_gauss": torch.tensor([float(cached)], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda.{i}"] = state
    return out


def _python_state(t: Mapping[str, torch.Tensor]) -> tuple:
    gauss = float(t["python_gauss"][0]) if int(t["python_has_gauss"][0]) else None
    return 3, tuple(int(v) for v in t["python_state"].tolist()), gauss


def _numpy_state(t: Mapping[str, torch.Tensor]) -> tuple:
    return ("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(t["numpy_pos"][0]),
            int(t["numpy_has_gauss"][0]), float(t["numpy_gauss"][0]))


def restore_rng(t: Mapping[str, torch.Tensor]) -> None:
    """Set this process's random states from a checked :func:`rng_tensors` dict."""
    torch.set_rng_state(t["torch_cpu"])
    random.setstate(_python_state(t))
    np.random.set_state(_numpy_state(t))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda.{i}" in t:
                torch.cuda.set_rng_state(t[f"torch_cuda.{i}"], i)


# ----------------------------------------------------------------------------------------------
# writing (atomic: hidden temporary folder, then one rename)
# ----------------------------------------------------------------------------------------------
def save_checkpoint(accelerator, folder: Path, *, step: int, fingerprint: Mapping[str, Any],
                    trainable: Mapping[str, torch.Tensor], optimizer, scaler=None) -> Path:
    """Write ``folder`` (``…/checkpoints/step_NNNNNN``) from every process; returns it.

    The main process writes the weights, the optimizer state and state.json; each process
    writes its random states. Everything goes to ``.partial-step_NNNNNN`` first and is renamed
    into place when complete (an existing folder of the same step is replaced as a whole). If
    anything fails (a full disk, a second Ctrl-C) the temporary folder is removed.
    """
    folder = Path(folder)
    tmp = folder.with_name(PARTIAL_PREFIX + folder.name)
    try:
        _write_checkpoint(accelerator, folder, tmp, step, fingerprint, trainable, optimizer, scaler)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # ours alone; a full disk gets its space back
        raise
    return folder


def _write_checkpoint(accelerator, folder: Path, tmp: Path, step: int, fingerprint: Mapping[str, Any],
                      trainable: Mapping[str, torch.Tensor], optimizer, scaler) -> None:
    from safetensors.torch import save_file

    main = accelerator.is_main_process
    if main:
        if tmp.exists():  # left by a killed run; the name is ours alone
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file(rng_tensors(), str(tmp / rng_file(accelerator.process_index)))
    if main:
        save_file(dict(trainable), str(tmp / TRAINABLE_FILE))
        save_file(optimizer_tensors(optimizer), str(tmp / OPTIMIZER_FILE))
    accelerator.wait_for_everyone()
    if main:
        names = expected_files(accelerator.num_processes)
        files = {}
        for name in names:
            fsync_path(tmp / name, os.O_RDWR)  # writable: Windows flushes only such a handle
            files[name] = {"bytes": (tmp / name).stat().st_size, "crc32": file_crc32(tmp / name)}
        state = {"format": FORMAT, "version": VERSION, "step": int(step), "processes": accelerator.num_processes,
                 "fingerprint": dict(fingerprint), "scaler": None if scaler is None else _scaler_numbers(scaler),
                 "files": files}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        fsync_path(tmp / STATE_FILE, os.O_RDWR)
        fsync_dir(tmp)
        _replace_folder(tmp, folder)
    accelerator.wait_for_everyone()


def _replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` (same step, same run) is moved aside first."""
    old = target.with_name(PARTIAL_PREFIX + "old-" + target.name)
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def _scaler_numbers(scaler) -> Dict[str, float]:
    state = scaler.state_dict()
    return {k: (int(state[k]) if isinstance(state[k], int) else float(state[k])) for k in SCALER_KEYS if k in state}


# ----------------------------------------------------------------------------------------------
# reading: every file checked before anything is used
# ----------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checked checkpoint folder: its state.json fields, and (after :meth:`load_tensors`) its tensors."""

    folder: Path
    step: int
    processes: int
    fingerprint: Dict[str, Any]
    scaler: Optional[Dict[str, float]]
    files: Dict[str, Dict[str, Any]]


def _fail(path: Path, problem: str, fix: str = _FIX) -> CheckpointError:
    return CheckpointError(f"checkpoint file {path} {problem}; {fix}")


def read_state(folder) -> Checkpoint:
    """Read and check ``folder/state.json`` (JSON only: nothing else in the folder is opened)."""
    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder; give a "
                              "checkpoints/step_NNNNNN folder written by train")
    path = folder / STATE_FILE
    if path.exists() and not path.is_file():
        raise _fail(path, "is not a regular file")
    if not path.is_file():
        raise _fail(path, "is missing, so the folder is not a checkpoint of this version (checkpoints written "
                    "by accelerate's save_state are not loaded: loading them would unpickle)")
    if path.stat().st_size > _MAX_STATE_BYTES:
        raise _fail(path, f"is larger than {_MAX_STATE_BYTES} bytes, so it is not a checkpoint's state")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(path, "is not valid JSON (damaged or not written by train)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _fail(path, f"is not a training checkpoint's state (no \"format\": \"{FORMAT}\")")
    if state.get("version") != VERSION:
        raise _fail(path, f"has format version {state.get('version')!r}; this version reads {VERSION}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _fail(path, f"has step {step!r}, not a whole number >= 0")
    named = folder_step(folder)
    if named is not None and named != step:
        raise _fail(path, f"says step {step}, but its folder is named {folder.name}")
    processes = state.get("processes")
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 4096:
        raise _fail(path, f"has processes {processes!r}, not a whole number >= 1")
    problem = check_fingerprint(state.get("fingerprint"))
    if problem:
        raise _fail(path, f"is malformed ({problem})")
    scaler = state.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and set(scaler) <= set(SCALER_KEYS) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in scaler.values())):
        raise _fail(path, "has a malformed \"scaler\" entry (expected GradScaler numbers or null)")
    files = state.get("files")
    names = expected_files(processes)
    if not isinstance(files, dict) or sorted(files) != sorted(names):
        raise _fail(path, f"must list exactly the files {', '.join(names)}")
    for name, entry in files.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
              and entry["bytes"] >= 0 and isinstance(entry.get("crc32"), str)
              and re.fullmatch(r"[0-9a-f]{8}", entry["crc32"]) is not None)
        if not ok:
            raise _fail(path, f"has a malformed entry for {name} (expected its bytes and crc32)")
    return Checkpoint(folder, step, processes, state["fingerprint"], scaler, files)


def check_files(checkpoint: Checkpoint) -> None:
    """Every file state.json lists: present, a regular file, and the recorded size and CRC-32."""
    for name, entry in checkpoint.files.items():
        path = checkpoint.folder / name
        if not path.exists():
            raise _fail(path, "is missing")
        if not path.is_file():
            raise _fail(path, "is not a regular file")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise _fail(path, f"is {size} bytes, not the {entry['bytes']} that state.json records (truncated "
                        "or replaced)")
        if file_crc32(path) != entry["crc32"]:
            raise _fail(path, "is damaged (its CRC-32 differs from the one state.json records)")


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; all mean "not readable"
        raise _fail(path, f"is not a readable safetensors file ({type(err).__name__})") from None


def _expect(path: Path, tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, Tuple[Tuple[int, ...], torch.dtype]],
            what: str) -> None:
    missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing:
        raise _fail(path, f"lacks {len(missing)} {what} tensor(s) of this run (e.g. {missing[0]}); it was written "
                    "for another mode or model")
    if extra:
        raise _fail(path, f"holds {len(extra)} tensor(s) this run does not have (e.g. {extra[0]}); it was written "
                    "for another mode or model")
    for key, (shape, dtype) in shapes.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise _fail(path, f"has {key} as {t.dtype} {tuple(t.shape)}, this run needs {dtype} {tuple(shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _fail(path, f"has non-finite values in {key}")


def _check_optimizer(path: Path, tensors: Mapping[str, torch.Tensor], param_shapes: Sequence[Tuple[int, ...]]) -> None:
    indices = set()
    for key in tensors:
        match = re.fullmatch(r"state\.(\d+)\.(\w+)", key)
        if match is None or int(match.group(1)) >= len(param_shapes) or match.group(2) not in ADAM_STATE:
            raise _fail(path, f"holds {key!r}, not an AdamW state of this run's {len(param_shapes)} parameters")
        indices.add(int(match.group(1)))
    shapes = {}
    for i in indices:
        shapes[f"state.{i}.step"] = ((), torch.float32)
        shapes[f"state.{i}.exp_avg"] = (tuple(param_shapes[i]), torch.float32)
        shapes[f"state.{i}.exp_avg_sq"] = (tuple(param_shapes[i]), torch.float32)
    _expect(path, tensors, shapes, "optimizer")
    for i in indices:
        if float(tensors[f"state.{i}.step"]) < 0 or bool((tensors[f"state.{i}.exp_avg_sq"] < 0).any()):
            raise _fail(path, f"has a negative step or second moment for parameter {i}")


def _check_rng(path: Path, t: Mapping[str, torch.Tensor]) -> None:
    need = {"torch_cpu": torch.uint8, "python_state": torch.int64, "python_gauss": torch.float64,
            "python_has_gauss": torch.int64, "numpy_keys": torch.int64, "numpy_pos": torch.int64,
            "numpy_has_gauss": torch.int64, "numpy_gauss": torch.float64}
    for key, dtype in need.items():
        if key not in t or t[key].dtype != dtype or t[key].dim() != 1:
            raise _fail(path, f"lacks the random state {key} ({dtype}, one dimension)")
    extra = [k for k in t if k not in need and not (re.fullmatch(r"torch_cuda\.\d+", k) and t[k].dtype == torch.uint8)]
    if extra:
        raise _fail(path, f"holds {extra[0]!r}, not a random state")
    try:
        torch.Generator().set_state(t["torch_cpu"])
        random.Random().setstate(_python_state(t))
        if not (t["numpy_keys"].numel() == 624 and bool(((t["numpy_keys"] >= 0) & (t["numpy_keys"] < 2**32)).all())):
            raise ValueError("numpy keys")
        np.random.RandomState().set_state(_numpy_state(t))
    except (RuntimeError, ValueError, TypeError, OverflowError, IndexError):
        raise _fail(path, "holds random states that are not valid (damaged)") from None


@dataclass
class CheckpointTensors:
    trainable: Dict[str, torch.Tensor]
    optimizer: Dict[str, torch.Tensor]
    rng: Dict[str, torch.Tensor]


def load_tensors(checkpoint: Checkpoint, *, rank: int, trainable: Mapping[str, torch.Tensor],
                 param_shapes: Sequence[Tuple[int, ...]]) -> CheckpointTensors:
    """Read and check the tensors of a checkpoint whose files passed :func:`check_files`.

    ``trainable`` is this run's own trainable state (names, shapes, dtypes to match);
    ``param_shapes`` the optimizer's parameters in order.
    """
    folder = checkpoint.folder
    weights = _read_tensors(folder / TRAINABLE_FILE)
    _expect(folder / TRAINABLE_FILE, weights, {k: (tuple(v.shape), v.dtype) for k, v in trainable.items()},
            "trainable")
    moments = _read_tensors(folder / OPTIMIZER_FILE)
    _check_optimizer(folder / OPTIMIZER_FILE, moments, param_shapes)
    rng = _read_tensors(folder / rng_file(rank))
    _check_rng(folder / rng_file(rank), rng)
    return CheckpointTensors(weights, moments, rng)


def apply_tensors(tensors: CheckpointTensors, module: torch.nn.Module, optimizer, scaler=None,
                  scaler_numbers: Optional[Mapping[str, float]] = None) -> None:
    """Put checked state into the live objects: weights, AdamW state (this run's hyperparameters), scaler, RNG."""
    module.load_state_dict(tensors.trainable, strict=False)  # names, shapes and dtypes checked by load_tensors
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in tensors.optimizer.items():
        _, index, name = key.split(".")
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    if scaler is not None and scaler_numbers:
        scaler.load_state_dict({**scaler.state_dict(), **scaler_numbers})
    restore_rng(tensors.rng)
