"""Speed and memory switches for a built model: compile, fp8 weight storage, sequential offload.

None of these changes what the model computes beyond rounding; each is opt-in.

* :func:`compile_model` with ``scope="regional"`` (default) compiles the
  *repeated blocks* (diffusers ``ResnetBlock2D``, ``Transformer2DModel`` with
  its Style Fusion / bank-writer self-attention, norms and projections,
  ``Downsample2D``/``Upsample2D``, the time embedding, the ControlNet hint
  encoder and our :class:`~.temporal.ViewConsistencyModule`) of the main UNet,
  the appearance modules and the pose ControlNet. One compiled function per
  block class serves every instance of that class (weights are graph inputs),
  so compile time grows with the number of distinct *shapes*, not with depth.
  ``scope="full"`` compiles each whole model call instead (ControlNet + UNet
  walk of a denoiser call, one appearance-module pass) as one graph: longer to
  compile, fusion across blocks, and the shape of graph CUDA graphs need
  (``mode="reduce-overhead"``). Both rely on the attention layers reading
  their per-call reference slots as plain tensors (:class:`~.attention.FusionSlot`),
  so no Python state splits a graph. ``DIFFSTYLE360_COMPILE=0`` turns compiling off.
  Nothing process-wide changes: the compile choice is the model object's own
  (two models over the same modules keep theirs), and dynamo's recompile caps
  are raised only while our compiled functions run.
* :func:`store_weights_fp8` keeps Linear/Conv weights in ``torch.float8_e4m3fn``
  with one scale per output channel and casts them to the compute dtype on every call
  (as ComfyUI's fp8 weight dtypes and diffusers' layerwise casting do, plus the
  scales, which keep SD-size weights out of fp8's subnormals): half the weight
  memory of fp16.
* :class:`SequentialOffload` is a :class:`~.pipeline.ModelPlacement`: the model
  about to run is moved to the GPU and every other model it has seen goes back
  to the CPU, so only the model in use is resident. It is the placement
  diffusers' pipelines call ``enable_model_cpu_offload`` (a ``DiffusionPipeline``
  method, which our pipeline is not); diffusers' ``enable_group_offload`` is the
  other trade (blocks streamed in on every forward: a lower peak, the whole
  model copied per denoiser call).
"""

from __future__ import annotations

import os
import types
import weakref
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import MODULE_COMPONENTS
from .model import DiffStyle360Model
from .pipeline import ModelPlacement
from .unet_walk import _ACTIVE_COMPILE, CompiledForward, active_compile_key, compile_key_of


COMPILE_ENV = "DIFFSTYLE360_COMPILE"

#: Blocks compiled whole (matched by class name, so diffusers' module paths may move).
COMPILE_BLOCKS = frozenset({
    "ResnetBlock2D",
    "Transformer2DModel",
    "Downsample2D",
    "Upsample2D",
    "TimestepEmbedding",
    "ControlNetConditioningEmbedding",
    "ViewConsistencyModule",
})
#: ``regional``: the repeated blocks; ``full``: each whole model call as one graph.
SCOPES = ("regional", "full")
#: torch.compile modes that replay CUDA graphs (outputs must be copied out of the graph's memory pool).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: Parts of a DiffStyle360Model compiled by default (the VAE runs once per view: not worth its compile time).
DEFAULT_PARTS = tuple(c for c in MODULE_COMPONENTS if c != "vae")


def compile_enabled() -> bool:
    """False when ``DIFFSTYLE360_COMPILE`` is 0/false/off/no (the opt-out switch)."""
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@dataclass
class CompileRecord:
    """What :func:`compile_model` did to a model (kept on the model as ``_ds360_compile``)."""

    key: tuple
    modules: List[nn.Module] = field(default_factory=list)

    @property
    def regions(self) -> int:
        return len(self.modules)


_COMPILED_FORWARDS: Dict[tuple, object] = {}  # (function, key) -> compiled function: one per process


#: dynamo's caps on graphs per code object, while one of our compiled functions runs: each block class
#: gets one graph per distinct input shape (channels × resolution × batch), far more than the default 8.
RECOMPILE_LIMITS = {"recompile_limit": 256, "accumulated_recompile_limit": 4096}
#: The same caps under their names before torch 2.6.
_OLD_LIMIT_NAMES = {"recompile_limit": "cache_size_limit", "accumulated_recompile_limit": "accumulated_cache_size_limit"}


def _recompile_limits() -> Dict[str, int]:
    """:data:`RECOMPILE_LIMITS` under the names this torch's dynamo config has."""
    config = torch._dynamo.config
    out = {}
    for name, value in RECOMPILE_LIMITS.items():
        for candidate in (name, _OLD_LIMIT_NAMES[name]):
            if hasattr(config, candidate):
                out[candidate] = value
                break
    return out


def _compiled(fn, key: tuple):
    """``torch.compile(fn)`` made once per function and settings (the per-process cache).

    Its options live with it: dynamo's recompile caps are raised only while it
    runs (``torch._dynamo.config.patch`` around each call), so nothing else in
    the process (another node pack's compiled model) sees different limits.
    """
    if (fn, key) not in _COMPILED_FORWARDS:
        mode, dynamic, backend, _scope = key
        kwargs = dict(dynamic=dynamic, backend=backend)
        if mode is not None:
            kwargs["mode"] = mode
        _COMPILED_FORWARDS[(fn, key)] = torch._dynamo.config.patch(**_recompile_limits())(torch.compile(fn, **kwargs))
    return _COMPILED_FORWARDS[(fn, key)]


def compile_regions(model: nn.Module, parts: Sequence[str] = DEFAULT_PARTS) -> List[Tuple[str, nn.Module]]:
    """The ``(name, module)`` regions :func:`compile_model` compiles, outermost only, in model order.

    ``parts``: attribute names of ``model`` to search (``DEFAULT_PARTS`` for a
    DiffStyle360Model); any other module is searched whole when ``parts`` is empty.
    """
    roots = [(p, getattr(model, p, None)) for p in parts] if parts else [("", model)]
    found: List[Tuple[str, nn.Module]] = []
    seen = set()
    for root_name, root in roots:
        if root is None:
            continue
        taken: List[str] = []
        for name, module in root.named_modules():
            full = f"{root_name}.{name}" if root_name and name else (root_name or name)
            if any(t == "" or full == t or full.startswith(t + ".") for t in taken):  # inside a region
                continue
            if type(module).__name__ in COMPILE_BLOCKS:
                taken.append(full)
                if id(module) not in seen:
                    seen.add(id(module))
                    found.append((full, module))
    return found


def whole_call_targets(model: nn.Module) -> List[Tuple[str, nn.Module, object]]:
    """``(name, module, eager forward)`` of every whole model call ``scope="full"`` compiles.

    The denoiser call of a :class:`~.model.DiffStyle360Model` (ControlNet + UNet
    walk) and the pass of each appearance module it holds (content, style).
    """
    from .appearance import AppearanceModule, reference_walk
    from .model import DiffStyle360Model, denoiser_forward

    found = []
    for name, module in model.named_modules():
        if isinstance(module, DiffStyle360Model):
            found.append((name, module, denoiser_forward))
        elif isinstance(module, AppearanceModule):
            found.append((name, module, reference_walk))
    return found


def compile_model(
    model: nn.Module,
    *,
    scope: str = "regional",
    mode: Optional[str] = None,
    dynamic: Optional[bool] = False,
    backend: str = "inductor",
    parts: Sequence[str] = DEFAULT_PARTS,
    enabled: Optional[bool] = None,
) -> CompileRecord:
    """``torch.compile`` of ``model``'s repeated blocks (``scope="regional"``) or whole calls (``"full"``).

    The choice belongs to ``model`` (this object): the compiled functions are
    added to its modules as variants keyed by the settings, and a module runs
    the variant of the model whose call is running (:func:`~.unet_walk.compiling_as`),
    else its eager forward. So two model objects over the same modules (a
    styled model and its base, two loader handles of one weight set) keep their
    own choices; neither undoes the other's. Compiling again with the same
    settings is a no-op (it only compiles what was added since, e.g. a style
    module); other settings replace this model's earlier ones. Compiled code is
    cached per process by torch (per block class or forward function, and input
    shape), so a second model of the same architecture, or the same model after
    :func:`uncompile_model`, reuses it. ``dynamic=False`` specialises every shape
    (one graph per window-batch size, the fastest kernels); ``None`` lets torch
    generalise after a shape changes. ``mode="reduce-overhead"`` with
    ``scope="full"`` replays CUDA graphs (outputs are copied out of the graph
    pool). ``parts`` limits the regional scope. ``enabled=None`` follows
    ``DIFFSTYLE360_COMPILE``; when off nothing changes and the record has no
    regions. Deep copies of compiled modules (``add_style_module``) stay compiled
    and run their own weights.

    Why not diffusers' ``ModelMixin.compile_repeated_blocks``: it compiles the
    classes of one model class's ``_repeated_blocks`` list (``BasicTransformerBlock``
    for ``UNet2DConditionModel``), on diffusers models only. The regions here also
    cover the ResNet blocks, samplers and time embedding of the UNets, the
    ControlNet's hint encoder and our view-consistency modules (not a diffusers
    model), and they switch per model object as above. Counted on the tiny
    model, one conditional denoiser call runs 98 % of its 4,893 aten ops inside
    these regions and 37 % inside diffusers' repeated blocks.
    """
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {SCOPES}, got {scope!r}")
    if enabled is None:
        enabled = compile_enabled()
    key = (mode, dynamic, backend, scope)
    record = model.__dict__.get("_ds360_compile")
    if not enabled:
        return record if record is not None else CompileRecord(key)
    if record is not None and record.key != key:
        uncompile_model(model)
        record = None
    record = record or CompileRecord(key)
    known = {id(m) for m in record.modules}
    if scope == "regional":
        targets = [module for _, module in compile_regions(model, parts)]
        for module in targets:
            variants = module.__dict__.get(_VARIANTS)
            if variants is None:
                variants = {}
                object.__setattr__(module, _VARIANTS, variants)
                module.forward = types.MethodType(_run_variant, module)
            variants.setdefault(key, _compiled(type(module).forward, key))
    else:
        targets = []
        for _, module, forward in whole_call_targets(model):
            if key not in module.compiled_forwards:
                module.compiled_forwards[key] = CompiledForward(_compiled(forward, key), mode in CUDA_GRAPH_MODES)
            targets.append(module)
    record.modules += [m for m in targets if id(m) not in known]  # only what was added since (a style module)
    object.__setattr__(model, "_ds360_compile", record)  # plain attribute, not a submodule
    _ROOTS.add(model)
    if not isinstance(model, DiffStyle360Model) and _ROOT_HOOKS not in model.__dict__:
        # a model called directly (a ControlNet, one block): its own calls run its choice
        enter = model.register_forward_pre_hook(_enter_root)
        leave = model.register_forward_hook(_leave_root, always_call=True)
        object.__setattr__(model, _ROOT_HOOKS, (enter.id, leave.id))  # ids, not handles: deep copies keep working
    return record


#: The compiled variants of a regional block, ``{compile settings: compiled forward}``.
_VARIANTS = "_ds360_variants"
_ROOT_HOOKS = "_ds360_root_hooks"
#: Every model given its own compile choice (weakly: a dropped model lets its variants go).
_ROOTS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _run_variant(self, *args, **kwargs):
    """A regional block's forward: the running model's compiled variant, or the class's eager forward."""
    compiled = self.__dict__[_VARIANTS].get(active_compile_key())
    if compiled is None:
        return type(self).forward(self, *args, **kwargs)
    return compiled(self, *args, **kwargs)


def _enter_root(module: nn.Module, args) -> None:
    _ACTIVE_COMPILE.append(compile_key_of(module))


def _leave_root(module: nn.Module, args, output) -> None:
    _ACTIVE_COMPILE.pop()


def apply_compile_choice(model: nn.Module, choice: str) -> Optional[CompileRecord]:
    """Bring ``model`` to one of :data:`~.options.COMPILE_CHOICES` (``"off"`` undoes an earlier compile).

    The CLI's ``--compile`` and the loader node's ``compile`` widget both land
    here. The choice is ``model``'s own: give each loader handle its own model
    object (``weights.sharing_copy``) and their choices stay independent.
    """
    from .options import COMPILE_CHOICES, check_choice

    check_choice("compile", choice, COMPILE_CHOICES)
    if choice == "off":
        uncompile_model(model)
        return None
    scope, mode = ("full", CUDA_GRAPH_MODES[0]) if choice == "cudagraphs" else (choice, None)
    return compile_model(model, scope=scope, mode=mode)


def uncompile_model(model: nn.Module) -> int:
    """Undo :func:`compile_model` for ``model`` (it runs eagerly again); returns how many variants were dropped.

    Sweeps every submodule, so deep copies made after compiling (a style module)
    are restored too. Variants another compiled model still uses (a model over
    the same modules with the same settings) stay.
    """
    model.__dict__.pop("_ds360_compile", None)
    _ROOTS.discard(model)
    hooks = model.__dict__.pop(_ROOT_HOOKS, None)
    if hooks is not None:
        model._forward_pre_hooks.pop(hooks[0], None)
        model._forward_hooks.pop(hooks[1], None)
        model._forward_hooks_always_called.pop(hooks[1], None)
    in_use: Dict[int, set] = {}
    for root in list(_ROOTS):
        record = root.__dict__.get("_ds360_compile")
        for module in record.modules if record is not None else ():
            in_use.setdefault(id(module), set()).add(record.key)
    count = 0
    for module in model.modules():
        kept = in_use.get(id(module), set())
        for variants in (module.__dict__.get(_VARIANTS), getattr(module, "compiled_forwards", None)):
            for key in [k for k in (variants or {}) if k not in kept]:
                del variants[key]
                count += 1
        if _VARIANTS in module.__dict__ and not module.__dict__[_VARIANTS]:
            del module.__dict__[_VARIANTS]
            module.__dict__.pop("forward", None)
    return count


def is_compiled(module: nn.Module) -> bool:
    """True when ``module`` holds a forward compiled by :func:`compile_model` (a block, or a whole call)."""
    return bool(module.__dict__.get(_VARIANTS)) or bool(getattr(module, "compiled_forwards", None))


# --------------------------------------------------------------------------- #
# fp8 weight storage
# --------------------------------------------------------------------------- #
FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _fp8_pre_hook(module: nn.Module, args):
    dtype = module.fp8_compute_dtype
    module.weight = module.weight_fp8.to(dtype) * module.weight_scale.to(dtype)


def _fp8_post_hook(module: nn.Module, args, output):
    module.weight = None  # drop the unpacked copy: only the fp8 tensor stays resident
    return output


def store_weights_fp8(model: nn.Module, compute_dtype: torch.dtype = torch.float16, *,
                      skip: Iterable[str] = ()) -> int:
    """Keep every Linear/Conv2d weight of ``model`` in float8_e4m3fn (in place); returns how many.

    Each weight becomes a buffer ``weight_fp8`` with a scale per output
    channel ``weight_scale`` in ``compute_dtype`` (``amax / 448``, so small SD weights keep their
    mantissa instead of falling into fp8 subnormals); a forward pre-hook rebuilds the
    weight in ``compute_dtype`` for the call and a forward hook frees it again.
    Biases, norms and embeddings stay as they are: put the model in ``compute_dtype`` first. ``skip``: module-name
    prefixes to leave alone (e.g. ``("vae",)``). Moves with ``.to(device)`` work;
    ``.half()``/``.float()`` would widen the fp8 buffers (run them before).

    Why not diffusers' ``enable_layerwise_casting`` (same memory, storage in
    fp8): it casts weights (and biases) to fp8 as they are, with no scale, so
    SD-size weights (std ~0.004, below fp8's smallest normal 2^-6) land in
    subnormals. Measured on the CPU: an SD-scale Linear 320→320 is off by 2.4 %
    with the per-channel scale vs 12.7 % cast as is; the tiny random model's ε
    by 13.7 % vs 14.7 % (its weights are larger).
    """
    if FP8 is None:  # pragma: no cover - torch < 2.1
        raise RuntimeError("this PyTorch has no float8_e4m3fn dtype; update PyTorch to store weights in fp8")
    skip = tuple(skip)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or hasattr(module, "weight_fp8"):
            continue
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        weight = module.weight
        if not isinstance(weight, nn.Parameter):
            continue
        with torch.no_grad():
            w32 = weight.detach().float()
            amax = w32.abs().flatten(1).amax(1).clamp(min=1e-12)  # one scale per output channel
            # scales stay normal numbers of the compute dtype (fp16 flushes below 2^-14 lose bits)
            scale = (amax / FP8_MAX).clamp(min=torch.finfo(compute_dtype).tiny).view(-1, *([1] * (w32.ndim - 1)))
            scale = scale.to(compute_dtype)
            packed = (w32 / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        del module.weight  # removes the Parameter
        module.register_buffer("weight_fp8", packed)
        module.register_buffer("weight_scale", scale)
        module.fp8_compute_dtype = compute_dtype
        module.weight = None
        module.register_forward_pre_hook(_fp8_pre_hook)
        module.register_forward_hook(_fp8_post_hook)
        count += 1
    return count


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (what stays resident between calls)."""
    seen = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------- #
# sequential offload
# --------------------------------------------------------------------------- #
class SequentialOffload(ModelPlacement):
    """Only the model in use on ``device``; every other model it has activated waits on ``offload_device``.

    Pass it as ``DiffStyle360Pipeline(..., placement=SequentialOffload("cuda"))``:
    the pipeline calls :meth:`activate` before each model runs (back-view model,
    then main model). Models are remembered weakly. Others are moved off
    *before* the next one is moved on, so the peak holds one model.
    """

    def __init__(self, device: Union[str, torch.device], offload_device: Union[str, torch.device] = "cpu",
                 *, release_cache: bool = True):
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.release_cache = release_cache
        self._where: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()

    def register(self, *models: nn.Module) -> "SequentialOffload":
        """Models the placement manages besides those it activates (assumed on the device until moved)."""
        for model in models:
            if model is not None and model not in self._where:
                self._where[model] = True
        return self

    @property
    def models(self) -> List[nn.Module]:
        return list(self._where.keys())

    def activate(self, model: nn.Module) -> None:
        moved_off = False
        for other, on_device in list(self._where.items()):
            if other is not model and on_device:
                self._park(other)
                self._where[other] = False
                moved_off = True
        if moved_off and self.release_cache and self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._load(model)  # a no-op copy-wise when it is there already
        self._where[model] = True

    def _load(self, model: nn.Module) -> None:
        model.to(self.device)

    def _park(self, model: nn.Module) -> None:
        model.to(self.offload_device)


__all__ = [
    "COMPILE_ENV",
    "SCOPES",
    "CompileRecord",
    "SequentialOffload",
    "apply_compile_choice",
    "compile_enabled",
    "compile_model",
    "compile_regions",
    "is_compiled",
    "store_weights_fp8",
    "uncompile_model",
    "weight_bytes",
    "whole_call_targets",
]
