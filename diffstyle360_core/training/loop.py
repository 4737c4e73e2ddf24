"""``train(config)``: the accelerate training loop.

Runs the same on one CPU, one GPU or several (``accelerate launch -m
diffstyle360_core train --config C.yaml``): mixed precision, gradient
accumulation and DDP come from :class:`accelerate.Accelerator`. Output folder::

    OUT/style_module.safetensors (+ .json)   the trained module (appearance_module.* in finetune mode)
    OUT/config.yaml                          the resolved configuration
    OUT/checkpoints/step_000100/             resumable states (trainable weights, optimizer, RNG, step)
    OUT/logs/                                TensorBoard event files (loss, lr, it/s, previews)
    OUT/previews/step_000100.png             top row: ground truth, bottom row: generated views

The data of step s is a function of (seed, s, process) only, so a resumed run
continues exactly where the interrupted one would have been.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ..devices import mixed_precision_dtype
from .checkpoint import save_trained_module
from .config import ConfigError, TrainConfig
from .dataset import StepSampler, StylizationDataset, collate_one, validate_dataset
from .recipe import (StyleTrainingStep, cast_frozen, draw_randomness, encode_batch, prepare_model, step_generator)

CHECKPOINT_DIR = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class TrainResult:
    module_path: Path  # the trained module file
    out: Path
    start_step: int  # 0, or the step a resumed run started from
    final_step: int
    losses: List[float] = field(default_factory=list)  # per optimizer step of this run (main process)
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # the trained DiffStyle360Model (on the training device)


class _StepCounter:
    """Saved with every accelerate state so a resumed run knows where it was."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> Dict[str, int]:
        return {"step": int(self.step)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


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


def _mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    on_cuda = torch.cuda.is_available() and (config.device is None or str(config.device).startswith("cuda"))
    return "fp16" if on_cuda else "no"


def _checkpoints(out: Path) -> List[Path]:
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_")),
                  key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)


def _resume_folder(config: TrainConfig, out: Path) -> Optional[Path]:
    if config.resume is None:
        return None
    if config.resume == "latest":
        found = _checkpoints(out)
        return found[-1] if found else None
    path = Path(config.resume).expanduser()
    if not (path / TRAINABLE_FILE).is_file():
        raise ConfigError(f"resume: {path} is not a checkpoint folder written by train (no {TRAINABLE_FILE})")
    return path


def _hparams(config: TrainConfig) -> Dict[str, Any]:
    out = {}
    for k, v in config.to_dict().items():
        if k == "extra":
            continue
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _register_hooks(accelerator, step_module) -> None:
    """accelerate states hold only the trainable weights (the frozen model is the weight set itself)."""
    from safetensors.torch import load_file, save_file

    def trainable_state(module) -> Dict[str, torch.Tensor]:
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
                if k in names or k.endswith(".pos_encoder.pe")}

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for module in models:
                save_file(trainable_state(accelerator.unwrap_model(module)), os.path.join(output_dir, TRAINABLE_FILE))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        state = load_file(os.path.join(input_dir, TRAINABLE_FILE))
        while models:
            module = accelerator.unwrap_model(models.pop())
            missing = set(trainable_state(module)) - set(state)
            if missing:
                raise ConfigError(f"resume: {input_dir} lacks {len(missing)} trainable tensors (e.g. "
                                  f"{sorted(missing)[0]}); was it written with another mode?")
            module.load_state_dict(state, strict=False)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_state(accelerator, out: Path, step: int, keep: int) -> None:
    folder = out / CHECKPOINT_DIR / f"step_{step:06d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


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
    """Fine-tune per ``config`` (a :class:`TrainConfig`, a dict or a YAML path); see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
    from tqdm.auto import tqdm

    from ..weights import load_model

    started = time.time()
    config = _as_config(config)
    config.require_paths()
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; give a folder")
    # Cheap checks first: a broken dataset or weight folder is reported before any model is built.
    samples = validate_dataset(config.data, views_per_sample=config.views_per_sample, view_stride=config.view_stride)
    main_folder = _main_model_folder(config.weights)

    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=_tracker(),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        cpu=config.device == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.condition_dropout > 0)],
    )
    device = accelerator.device
    config = config.replace(mixed_precision=accelerator.mixed_precision)  # recorded as resolved
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.to_yaml(out / "config.yaml")

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
    _register_hooks(accelerator, step_module)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    counter = _StepCounter()
    accelerator.register_for_checkpointing(counter)

    resume = _resume_folder(config, out)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resumed from {resume} at step {counter.step}")
    start_step = counter.step
    if start_step >= config.steps:
        accelerator.print(f"nothing to do: step {start_step} >= steps {config.steps}")

    dataset = StylizationDataset(samples, model.config.image_size, config.views_per_sample, config.view_stride)
    sampler = StepSampler(samples, seed=config.seed, start_step=start_step, total_steps=config.steps,
                          rank=accelerator.process_index, micro_steps=config.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=config.num_workers,
                                         collate_fn=collate_one, pin_memory=device.type == "cuda")
    if accelerator.is_main_process:
        accelerator.init_trackers("diffstyle360_training", config=_hparams(config))
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="it",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    preview_item = dataset[(0, 0)] if config.preview_every else None
    num_timesteps = model.config.schedule.num_train_timesteps
    losses: List[float] = []
    micro, running, tick = 0, 0.0, time.time()
    unwrapped = accelerator.unwrap_model(step_module).model
    for item in loader:
        step = counter.step
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
        counter.step += 1
        step_loss = float(accelerator.reduce(torch.tensor(running, device=device), "mean"))
        micro, running = 0, 0.0
        losses.append(step_loss)
        now = time.time()
        rate = 1.0 / max(now - tick, 1e-9)
        tick = now
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", t=t)
        if counter.step % config.log_every == 0:
            accelerator.log({"loss": step_loss, "lr": optimizer.param_groups[0]["lr"], "it_per_s": rate},
                            step=counter.step)
        last = counter.step == config.steps
        if (config.checkpoint_every and counter.step % config.checkpoint_every == 0) or last:
            _save_state(accelerator, out, counter.step, config.keep_checkpoints)
            if accelerator.is_main_process:
                save_trained_module(unwrapped, config, counter.step, out)
        if accelerator.is_main_process and config.preview_every and (counter.step % config.preview_every == 0
                                                                     or last):
            grid = save_preview(unwrapped, preview_item, config, out / "previews" / f"step_{counter.step:06d}.png",
                                accelerator)
            try:
                accelerator.get_tracker("tensorboard", unwrap=True).add_image("preview", grid, counter.step)
            except Exception:  # noqa: BLE001 - a preview that cannot be logged is still on disk
                pass
    bar.close()
    accelerator.wait_for_everyone()
    module_path = out / ("style_module.safetensors" if config.mode == "style_module" else "appearance_module.safetensors")
    if accelerator.is_main_process and not module_path.is_file():
        save_trained_module(unwrapped, config, counter.step, out)
    accelerator.end_training()
    _release_accelerate_state(accelerator)
    return TrainResult(module_path, out, start_step, counter.step, losses, time.time() - started, unwrapped)


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
