"""CUDA checks a CPU-only CI cannot make (run on a lent GPU; tiny weights, about a minute).

    python bench/gpu_checks.py            # prints one line per check, PASS/FAIL, and exits 1 on a failure

1. the pipeline runs on CUDA in fp16 (auto device/dtype) and repeats itself for a seed;
2. an exception raised in the progress callback (a host's cancel) leaves no GPU memory held, even
   while the exception and its traceback are still alive;
3. sequential offload: only the model in use is on the GPU, and the result is unchanged;
4. the ComfyUI nodes (host fallback, DIFFSTYLE360_DEVICE=cuda) load, sample and return CPU images.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffstyle360_core.acceleration import SequentialOffload  # noqa: E402
from diffstyle360_core.pipeline import DiffStyle360Pipeline, Style  # noqa: E402
from diffstyle360_core.tiny import make_tiny  # noqa: E402

FAILED = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)


def allocated() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    weights = Path(tempfile.mkdtemp()) / "tiny"
    make_tiny(weights)
    g = torch.Generator().manual_seed(0)
    content, style, back = (torch.rand(1, 64, 64, 3, generator=g) for _ in range(3))
    spec = Style(images=[style], backs=[back])

    # 1. auto device/dtype, determinism
    pipe = DiffStyle360Pipeline.from_pretrained(weights)
    device, dtype = pipe.main.vae.device, pipe.main.vae.dtype
    check("auto device and dtype", device.type == "cuda" and dtype == torch.float16, f"{device} {dtype}")
    kw = dict(views=8, steps=3, seed=5)
    a = pipe.stylize(content, style, **kw)
    b = pipe.stylize(content, style, **kw)
    diff = float((a.views.float() - b.views.float()).abs().max())
    check("same seed, same views on CUDA", diff < 2e-2 and bool(torch.isfinite(a.views).all()), f"max|Δ| {diff:.2e}")

    # 2. cancel from the progress callback frees everything the run held
    base = allocated()

    def cancel(event):
        if event.phase == "turntable" and event.step == 2:
            raise KeyboardInterrupt("cancel")

    try:
        pipe.stylize(content, spec, content_back=back, **kw, progress=cancel)
    except KeyboardInterrupt as exc:
        kept = exc  # the traceback stays alive, as in a host that stores the error
        leak = allocated() - base
        owned = {id(t) for m in (pipe.main, pipe.back_view_model) for t in list(m.parameters()) + list(m.buffers())}
        stray = [tuple(o.shape) for o in gc.get_objects()
                 if torch.is_tensor(o) and o.is_cuda and id(o) not in owned and o.numel() > 0]
        # below the smallest tensor of the run (x_T of 8 tiny views: 8 KiB): allocator-granular leftovers only
        check("cancel leaves no run tensor on the GPU", leak < 4096, f"{leak} bytes above the loaded models; "
              f"other CUDA tensors alive: {stray[:6]}")
        del kept
    peak_resident = torch.cuda.max_memory_allocated()

    # 3. sequential offload
    del pipe, a, b
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    placement = SequentialOffload("cuda")
    off = DiffStyle360Pipeline.from_pretrained(weights, device="cpu", dtype="fp16", placement=placement)
    where = []
    real = placement.activate
    placement.activate = lambda model: (real(model), where.append(
        (model.config.kind, next(off.main.parameters()).device.type,
         next(off.back_view_model.parameters()).device.type)))[0]
    c = off.stylize(content, style, **kw)
    only_one = all((m == "cuda") != (bv == "cuda") for _, m, bv in where)
    check("offload: one model on the GPU at a time", only_one and len(where) >= 2, str(where[:3]))
    resident = DiffStyle360Pipeline.from_pretrained(weights).stylize(content, style, **kw).views
    d = float((c.views.float().cpu() - resident.float().cpu()).abs().max())
    check("offload: same result", d < 2e-2, f"max|Δ| {d:.2e}")

    # 4. nodes on CUDA through the host fallback
    os.environ["DIFFSTYLE360_DEVICE"] = "cuda"
    import nodes.host as host
    import nodes

    N = nodes.nodes_by_id()
    root = Path(tempfile.mkdtemp())
    os.symlink(weights, root / "tiny")
    host.set_fallback_models_dir(root)
    from nodes import loader

    model = N["DiffStyle360LoadAppearanceModules"].EXECUTE_NORMALIZED(
        weight_set="tiny", style_module=loader.TRAINING_FREE, dtype="auto")[0]
    cams = N["DiffStyle360TurntableCamera"].EXECUTE_NORMALIZED(model=model, views=4, yaw_start=0.0, yaw_end=360.0)[0]
    sampler = N["DiffStyle360StyleFusionSampler"]
    inputs = sampler.GET_NODE_INFO_V1()["input"]
    defaults = {}
    for name, (kind, opts) in inputs["required"].items():  # widget defaults, as the frontend fills them
        if "default" in opts:
            defaults[name] = opts["default"]
        elif kind == "COMBO":
            defaults[name] = opts["options"][0]
    defaults.update(steps=2, model=model, cameras=cams, content=content)
    views, backs = sampler.EXECUTE_NORMALIZED(**defaults, style=style)[:2]
    check("nodes on CUDA return CPU IMAGE batches", views.device.type == "cpu" and tuple(views.shape) == (4, 64, 64, 3)
          and bool(torch.isfinite(views).all()), f"{tuple(views.shape)} on {views.device}")
    print(f"peak allocated (resident, tiny): {peak_resident / 2**20:.1f} MiB", flush=True)
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all CUDA checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
