"""Time and peak GPU memory of the training step at full size (SD1.5 widths, 512 px), random weights.

    python -m bench.gpu_probe                       # fp16, 16 views, checkpointing off and on
    python -m bench.gpu_probe --iters 10 --checkpointing on --mixed-precision bf16

Builds :func:`~diffstyle360_core.config.official_config` with random weights
directly on the GPU (no download, no weight files), then runs the same step as
``train`` (VAE encoding of 4 references + 16 targets, reference modules, pose
ControlNet, main UNet with view-consistency modules, backward, AdamW step;
accelerate autocast and gradient scaling) on random images, and prints one JSON
line per setting: seconds per iteration, seconds per 100 iterations and peak
memory (allocated and reserved by PyTorch). ``--size tiny`` runs the same on the
tiny config (a CPU smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _model(size: str, device: torch.device):
    from diffstyle360_core.config import MAIN, official_config, tiny_config
    from diffstyle360_core.model import DiffStyle360Model

    config = official_config(MAIN) if size == "full" else tiny_config(MAIN)
    with torch.device(device):
        model = DiffStyle360Model(config)
    return model


def probe(*, size: str = "full", iters: int = 5, warmup: int = 2, views: int = 16, mixed_precision: str = "fp16",
          gradient_checkpointing: bool = False, mode: str = "style_module", device=None) -> dict:
    """One setting: build, warm up, time ``iters`` optimizer steps; returns a dict of measurements."""
    from accelerate import Accelerator

    from diffstyle360_core.devices import mixed_precision_dtype
    from diffstyle360_core.training.config import TrainConfig
    from diffstyle360_core.training.loop import _release_accelerate_state
    from diffstyle360_core.training.recipe import StyleTrainingStep, cast_frozen, draw_randomness, encode_batch, prepare_model, step_generator

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    accelerator = Accelerator(mixed_precision=mixed_precision if cuda else "no", cpu=not cuda)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    built = time.time()
    model = _model(size, device)
    params = prepare_model(model, mode)
    dtype = mixed_precision_dtype(accelerator.mixed_precision)
    cast_frozen(model, mode, dtype)
    if gradient_checkpointing:
        from diffstyle360_core.training.grad_checkpoint import enable_gradient_checkpointing

        enable_gradient_checkpointing(model, mode)
    config = TrainConfig(views_per_sample=views, mode=mode)
    step = StyleTrainingStep(model, config)
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    step, optimizer = accelerator.prepare(step, optimizer)
    build_s = time.time() - built
    s = model.config.image_size
    g = torch.Generator().manual_seed(0)
    item = {"content": torch.rand(2, 3, s, s, generator=g) * 2 - 1, "style": torch.rand(2, 3, s, s, generator=g) * 2 - 1,
            "target": torch.rand(views, 3, s, s, generator=g) * 2 - 1,
            "cameras": torch.rand(views, 3, s, s, generator=g) * 2 - 1}
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    times, losses = [], []
    for i in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.time()
        generator = step_generator(0, i)
        content, style, target, hints = encode_batch(model, item, generator, device)
        t, noise, drop = draw_randomness(generator, target.shape, model.config.schedule.num_train_timesteps, 0.0)
        loss = step(content, style, target, hints, t, noise.to(device), drop)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.time() - t0)
        losses.append(float(loss.detach()))
    per_it = statistics.mean(times)
    result = {
        "size": size, "mode": mode, "views": views, "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": gradient_checkpointing, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "params_total_M": round(total / 1e6, 1), "params_trainable_M": round(trainable / 1e6, 1),
        "build_s": round(build_s, 1), "s_per_it": round(per_it, 3), "s_per_it_min": round(min(times), 3),
        "s_per_100_it": round(100 * per_it, 1), "iters_timed": len(times),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }
    if cuda:
        result["peak_allocated_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_GiB"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    del step, optimizer, model, params
    _release_accelerate_state(accelerator)
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="fp16")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--mode", choices=["style_module", "finetune_appearance"], default="style_module")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for ckpt in settings:
        try:
            result = probe(size=args.size, iters=args.iters, warmup=args.warmup, views=args.views,
                           mixed_precision=args.mixed_precision, gradient_checkpointing=ckpt, mode=args.mode,
                           device=args.device)
        except torch.cuda.OutOfMemoryError as err:
            result = {"gradient_checkpointing": ckpt, "views": args.views, "error": "out of GPU memory",
                      "detail": str(err).splitlines()[0]}
            torch.cuda.empty_cache()
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
