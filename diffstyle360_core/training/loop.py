"""``train(config)``: the accelerate training loop.

Runs the same on one CPU, one GPU or several (``accelerate launch -m
diffstyle360_core train --config C.yaml``): mixed precision, gradient
accumulation and DDP come from :class:`accelerate.Accelerator`. Output folder::

    OUT/style_module.safetensors (+ .json)   the trained module (appearance_module.* in finetune mode)
    OUT/config.yaml                          the resolved configuration
    OUT/run.json                             the run's fingerprint: weights, data, recipe (see .run_folder)
    OUT/checkpoints/step_000100/             resumable state, data only (see .resume)
    OUT/logs/                                TensorBoard event files (loss, lr, it/s, previews)
    OUT/previews/step_000100.png             top row: ground truth, bottom row: generated views

The data of step s is a function of (seed, s, process) only, so a resumed run
continues exactly where the interrupted one would have been. One folder holds one
run (:mod:`.run_folder`), and a run holds it (a lock) from before the model is loaded
to the final save; Ctrl-C, SIGTERM and SIGHUP save the current step (:mod:`.interrupt`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import torch

from ..devices import mixed_precision_dtype
from .checkpoint import FILE_NAMES, save_trained_module
from .config import ConfigError, TrainConfig
from .dataset import StepSampler, StylizationDataset, collate_one, validate_dataset
from .fingerprint import run_fingerprint
from .interrupt import StopSignals, TrainingInterrupted
from .recipe import (StyleTrainingStep, cast_frozen, draw_randomness, encode_batch, prepare_model, step_generator)
from .resume import apply_tensors, folder_step, load_tensors, save_checkpoint, step_folder_name, trainable_state
from .run_folder import (CHECKPOINT_DIR, RUN_FILE, locked_run_folder, plan_run, prune_checkpoints,
                         relative_to_out, write_run_record)


@dataclass
class TrainResult:
    module_path: Path  # the trained module file
    out: Path
    start_step: int  # 0, or the step a resumed run started from
    final_step: int
    losses: List[float] = field(default_factory=list)  # per optimizer step of this run (main process)
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # the trained DiffStyle360Model (on the training device)


def _as_config(config: Union[TrainConfig, Mapping[str, Any], str, os.PathLike]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.checked()
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    return TrainConfig.from_yaml(config)


def _tracker():
    """TensorBoard logs when ``tensorboard`` is installed (``pip install tensorboard``), else none."""
    import importlib.util

    return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None


def _main_model_folder(weights) -> Path:
    root = Path(os.fspath(weights)).expanduser()
    for cand in (root / "main", root):
        if (cand / "config.json").is_file():
            return cand
    raise ConfigError(
        f"weights {root}: no converted main model (expected {root / 'main' / 'config.json'}); convert the official "
        "checkpoint with `python -m diffstyle360_core convert` or make a demo set with `make-tiny`"
    )


def _mixed_precision(config: TrainConfig, device_type: str) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    return "fp16" if device_type == "cuda" else "no"


def training_device(config: TrainConfig) -> torch.device:
    """The device this run trains on; a device this torch cannot use, or fp16 on the CPU, is refused.

    ``None`` is accelerate's own choice (CUDA, then MPS, else the CPU), which
    :func:`~diffstyle360_core.devices.resolve_device` makes too.
    """
    from ..devices import resolve_device

    device = resolve_device(config.device)  # refuses a device this build or machine cannot compute on (xpu …)
    if _mixed_precision(config, device.type) == "fp16" and device.type == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU, and this run trains on the CPU; use mixed_precision "
                          "'no' (fp32) or 'bf16'")
    return device


def _use_device(device: torch.device, accelerator) -> None:
    """Refuse to go on if accelerate placed the run elsewhere than the device asked for (never train on the CPU
    silently)."""
    placed = accelerator.device
    if placed.type != device.type or (device.index is not None and placed.index not in (None, device.index)):
        raise ConfigError(f"device {str(device)!r} was asked for, but accelerate would train on {placed}; check the "
                          "accelerate config (accelerate env) or choose the device it offers")


def _hparams(config: TrainConfig) -> Dict[str, Any]:
    out = {}
    for k, v in config.to_dict().items():
        if k == "extra":
            continue
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class _Kept:
    """What a run has saved so far, for the message of an interrupted run (paths as the user named OUT)."""

    def __init__(self, out: Path, shown_out: str, resumed_from: Optional[Path]):
        self.out, self.shown_out, self.resumed_from = out, shown_out, resumed_from
        inside = resumed_from is not None and resumed_from.resolve().parent == (out / CHECKPOINT_DIR).resolve()
        self.checkpoint: Optional[Path] = resumed_from if inside else None  # what --resume latest would take
        self.module: Optional[Path] = None

    def show(self, path: Path) -> str:
        return relative_to_out(path, self.out, self.shown_out)

    def saved(self) -> str:
        files = [self.show(p) for p in (self.checkpoint, self.module) if p is not None]
        return " and ".join(files)

    def stopped_at(self, step: int) -> str:
        return f"interrupted at step {step}; saved {self.saved()}; resume with --resume latest"

    def forced(self, step: int) -> str:
        """A second signal stops at once: what was kept when ``step`` steps were complete."""
        if self.checkpoint is not None:
            return (f"interrupted again after step {step}; kept {self.saved()} (step {folder_step(self.checkpoint)}); "
                    "resume with --resume latest")
        if self.resumed_from is not None:
            return (f"interrupted again after step {step}, before any checkpoint in {self.shown_out}; resume again "
                    f"with --resume {self.resumed_from}")
        return (f"interrupted again after step {step}, before any checkpoint; {self.shown_out} holds only the run's "
                f"settings ({RUN_FILE}, config.yaml) and logs; run again with --resume latest")


@torch.no_grad()
def save_preview(model, item: dict, config: TrainConfig, path: Path, accelerator=None) -> torch.Tensor:
    """Turntable preview with the current weights: ``preview_views`` views, ``preview_steps`` DDIM steps.

    Saved as one PNG: the sample's ground-truth views on top, the generated ones below.
    Returns the grid [3,H,W] in [0,1].
    """
    from ..cameras import CameraSet
    from ..images import tensor_to_pil
    from ..pipeline import DiffStyle360Pipeline, Style

    views = min(config.preview_views, item["target"].shape[0])
    picks = [round(i * item["target"].shape[0] / views) % item["target"].shape[0] for i in range(views)]
    cams = CameraSet(images=item["cameras"][picks].float(), yaws_deg=[360.0 * i / views for i in range(views)],
                     source="training preview")
    content, style = (item["content"] + 1) / 2, (item["style"] + 1) / 2  # images in 0..1, as users pass them
    pipe = DiffStyle360Pipeline(model, None, cams)
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
    with autocast:
        result = pipe.stylize(
            content[:1], Style(images=[style[:1]], backs=[style[1:2]]), content_back=content[1:2], cameras=cams,
            tau=config.tau, pairing=config.pairing, mask_mode=config.mask_mode, seed=config.seed,
            steps=config.preview_steps, cfg=config.preview_cfg,
        )
    generated = result.views.float().cpu()
    truth = item["target"][picks].float().cpu()
    rows = [torch.cat(list(truth), dim=-1), torch.cat(list(generated), dim=-1)]
    grid = ((torch.cat(rows, dim=-2) + 1) / 2).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(grid[None] * 2 - 1).save(path)
    return grid


def train(config: Union[TrainConfig, Mapping[str, Any], str, os.PathLike], *, progress: bool = True) -> TrainResult:
    """Fine-tune per ``config`` (a :class:`TrainConfig`, a dict or a YAML path); see the module docstring.

    Ctrl-C, SIGTERM or SIGHUP during the loop finish the current step, save it and raise
    :class:`~.interrupt.TrainingInterrupted` saying what was kept.
    """
    started = time.time()
    config = _as_config(config)
    config.require_paths()
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; give a folder")
    with StopSignals() as stop:
        return _train(config, out, stop, progress, started)


def _train(config: TrainConfig, out: Path, stop: StopSignals, progress: bool, started: float) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    # Cheap checks first: a bad device, a broken dataset or weight folder is reported before any model is built.
    device = training_device(config)
    samples = validate_dataset(config.data, views_per_sample=config.views_per_sample, view_stride=config.view_stride)
    main_folder = _main_model_folder(config.weights)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)  # accelerate uses the current CUDA device in a one-process run

    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config, device.type),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=_tracker(),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        cpu=device.type == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.condition_dropout > 0)],
    )
    try:
        with _holding_run_folder(out, accelerator):  # before the model is loaded or anything is written
            return _run(config, out, stop, progress, started, accelerator, device, samples, main_folder)
    finally:
        _release_accelerate_state(accelerator)


@contextlib.contextmanager
def _holding_run_folder(out: Path, accelerator) -> Iterator[None]:
    """The main process holds ``out`` (:func:`.run_folder.locked_run_folder`) for the whole run.

    With several processes, all of them stop when the main one is refused (they agree, as on a stop signal).
    """
    with contextlib.ExitStack() as held:
        refused: Optional[ConfigError] = None
        if accelerator.is_main_process:
            try:
                held.enter_context(locked_run_folder(out))
            except ConfigError as err:
                refused = err
        if _max_over_processes(accelerator, int(refused is not None)) and refused is None:
            raise ConfigError(f"the main process could not take output folder {out} (see its message)")
        if refused is not None:
            raise refused
        yield


def _run(config: TrainConfig, out: Path, stop: StopSignals, progress: bool, started: float, accelerator,
         device: torch.device, samples, main_folder: Path) -> TrainResult:
    """Everything after accelerate is set up: plan the folder, load, resume, loop, save."""
    from tqdm.auto import tqdm

    from ..weights import load_model

    if config.device is not None:
        _use_device(device, accelerator)
    device = accelerator.device
    main = accelerator.is_main_process
    config = config.replace(mixed_precision=accelerator.mixed_precision)  # recorded as resolved
    fingerprint = run_fingerprint(config, main_folder, config.data, samples)
    plan = plan_run(config, out, fingerprint, accelerator.num_processes)  # refuses before anything is written

    model = load_model(main_folder, device="cpu", dtype=torch.float32)
    params = prepare_model(model, config.mode)
    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    cast_frozen(model, config.mode, weight_dtype)
    model.to(device)
    if config.gradient_checkpointing:
        from .grad_checkpoint import enable_gradient_checkpointing

        enable_gradient_checkpointing(model, config.mode)
    step_module = StyleTrainingStep(model, config)
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    trainable_owner = accelerator.unwrap_model(step_module)
    start_step = 0
    if plan.checkpoint is not None:
        tensors = load_tensors(plan.checkpoint, rank=accelerator.process_index,
                               trainable=trainable_state(trainable_owner),
                               param_shapes=[tuple(p.shape) for p in params])
        apply_tensors(tensors, trainable_owner, optimizer, accelerator.scaler, plan.checkpoint.scaler)
        start_step = plan.checkpoint.step
    for note in plan.notes:
        accelerator.print(note)
    if plan.checkpoint is not None:
        accelerator.print(f"resumed from {plan.checkpoint.folder} at step {start_step}")
    if start_step >= config.steps:
        accelerator.print(f"nothing to do: step {start_step} >= steps {config.steps}")

    kept = _Kept(out, config.out, plan.checkpoint.folder if plan.checkpoint is not None else None)
    stop.forced_message = kept.forced(start_step)
    stop.deferring = True  # from here on files are written: a signal finishes the step and saves it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out, fingerprint)
        config.to_yaml(out / "config.yaml")
    accelerator.wait_for_everyone()

    dataset = StylizationDataset(samples, model.config.image_size, config.views_per_sample, config.view_stride)
    sampler = StepSampler(samples, seed=config.seed, start_step=start_step, total_steps=config.steps,
                          rank=accelerator.process_index, micro_steps=config.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=config.num_workers,
                                         collate_fn=collate_one, pin_memory=device.type == "cuda")
    if main:
        accelerator.init_trackers("diffstyle360_training", config=_hparams(config))
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="it",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    preview_item = dataset[(0, 0)] if config.preview_every else None
    num_timesteps = model.config.schedule.num_train_timesteps
    losses: List[float] = []
    step, micro, running, tick = start_step, 0, 0.0, time.time()
    saved_step = start_step if plan.checkpoint is not None else None
    unwrapped = trainable_owner.model

    def save(at: int) -> None:
        nonlocal saved_step
        folder = out / CHECKPOINT_DIR / step_folder_name(at)
        try:
            save_checkpoint(accelerator, folder, step=at, fingerprint=fingerprint,
                            trainable=trainable_state(trainable_owner) if main else {}, optimizer=optimizer,
                            scaler=accelerator.scaler)
        except OSError as err:
            kept_now = f"kept {kept.saved()}" if kept.checkpoint is not None else "no checkpoint kept"
            raise OSError(f"cannot save the checkpoint of step {at} in {kept.show(folder.parent)} "
                          f"({err.strerror or err}); {kept_now}; free space or fix the folder, then resume with "
                          "--resume latest") from None
        kept.checkpoint, saved_step = folder, at
        stop.forced_message = kept.forced(at)  # before pruning: the message names only what exists
        if main:
            kept.module = save_trained_module(unwrapped, config, at, out)
            stop.forced_message = kept.forced(at)
            prune_checkpoints(out, fingerprint, config.keep_checkpoints)
        accelerator.wait_for_everyone()

    try:
        for item in loader:
            generator = step_generator(config.seed, step, micro, accelerator.process_index)
            with accelerator.accumulate(step_module):
                content, style, target, hints = encode_batch(unwrapped, item, generator, device)
                t, noise, drop = draw_randomness(generator, target.shape, num_timesteps, config.condition_dropout)
                loss = step_module(content, style, target, hints, t, noise.to(device), drop)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach()) / config.gradient_accumulation_steps
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            stop.forced_message = kept.forced(step)
            step_loss = float(accelerator.reduce(torch.tensor(running, device=device), "mean"))
            micro, running = 0, 0.0
            losses.append(step_loss)
            now = time.time()
            rate = 1.0 / max(now - tick, 1e-9)
            tick = now
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", t=t)
            if step % config.log_every == 0:
                accelerator.log({"loss": step_loss, "lr": optimizer.param_groups[0]["lr"], "it_per_s": rate}, step=step)
            last = step == config.steps
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
                save(step)
            signum = _stop_requested(stop, accelerator)
            if signum and not last:  # at the last step the run is complete and saved: it simply ends
                if saved_step != step:
                    save(step)
                bar.close()
                raise TrainingInterrupted(kept.stopped_at(step), signum)
            if main and config.preview_every and (step % config.preview_every == 0 or last) and not signum:
                grid = save_preview(unwrapped, preview_item, config, out / "previews" / f"step_{step:06d}.png",
                                    accelerator)
                try:
                    accelerator.get_tracker("tensorboard", unwrap=True).add_image("preview", grid, step)
                except Exception:  # noqa: BLE001 - a preview that cannot be logged is still on disk
                    pass
        bar.close()
        accelerator.wait_for_everyone()
        module_path = out / FILE_NAMES[config.mode]
        if main and not module_path.is_file():
            save_trained_module(unwrapped, config, step, out)
    finally:
        bar.close()
        accelerator.end_training()
    return TrainResult(module_path, out, start_step, step, losses, time.time() - started, unwrapped)


def _stop_requested(stop: StopSignals, accelerator) -> int:
    """The signal that asked to stop (0: none); every process agrees, so they all stop after the same step."""
    return _max_over_processes(accelerator, stop.requested or 0)


def _max_over_processes(accelerator, value: int) -> int:
    """The largest ``value`` of all processes (each one passes its own); the value itself with one process."""
    if accelerator.num_processes > 1:
        return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max())
    return value


def _release_accelerate_state(accelerator) -> None:
    """Let a later ``train`` in the same process (notebook, tests) choose other accelerate settings."""
    if accelerator.num_processes > 1:
        return
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 - private API; a stale state only matters for a second run
        pass
