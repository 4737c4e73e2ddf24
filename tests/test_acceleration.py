"""acceleration.py: regional compile, fp8 weight storage, sequential offload (CPU, tiny config).

Compile equality of the model runs with torch.compile's ``eager`` backend: it
exercises the wiring (dynamo traces every compiled region, graphs shared between
instances, no-op recompiles, undo, deep copies) in seconds. Inductor itself works
on a CPU but needs ~13 s per block shape on 2 cores, so one test compiles one
block with inductor (``DS360_SKIP_INDUCTOR=1`` skips it).
"""

import copy
import os

import pytest
import torch

from diffstyle360_core.acceleration import (
    COMPILE_ENV,
    SequentialOffload,
    compile_model,
    compile_regions,
    is_compiled,
    store_weights_fp8,
    uncompile_model,
    weight_bytes,
)
from diffstyle360_core.attention import FusionCall
from diffstyle360_core.config import MAIN
from diffstyle360_core.options import FusionSettings
from diffstyle360_core.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny_main():
    model, _ = build_tiny_model(MAIN, seed=3)
    return model.eval().requires_grad_(False)


def _inputs(model, views=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    size, latent = model.config.image_size, model.config.latent_size
    x = torch.randn(views, 4, latent, latent, generator=g)
    hints = torch.rand(views, 3, size, size, generator=g) * 2 - 1
    refs = torch.randn(2, 4, latent, latent, generator=g)
    style = torch.randn(2, 4, latent, latent, generator=g)
    return x, hints, refs, style


@torch.no_grad()
def _eps(model, x, hints, refs, style, t=421):
    content_bank, style_banks = model.reference_banks(refs, [style], t)
    from diffstyle360_core.attention import StyleEntry

    call = FusionCall(content_bank, [StyleEntry(banks=style_banks)], FusionSettings().checked())
    cond = model.predict_noise(x, t, hints, num_views=x.shape[0], references=call)
    uncond = model.predict_noise(x, t, None, num_views=x.shape[0], references=None)
    return cond, uncond


def test_regions_are_the_repeated_blocks_with_their_fusion_attention(tiny_main):
    regions = compile_regions(tiny_main)
    kinds = {type(m).__name__ for _, m in regions}
    assert kinds == {"ResnetBlock2D", "ViewConsistencyModule", "Transformer2DModel", "Downsample2D",
                     "Upsample2D", "TimestepEmbedding", "ControlNetConditioningEmbedding"}
    names = [n for n, _ in regions]
    # every attention layer sits inside a compiled transformer, the Style Fusion readers included
    attn1 = [n for n, _ in tiny_main.named_modules() if n.endswith("attn1") and not n.startswith("vae.")]
    assert attn1 and all(any(a.startswith(r + ".") for r in names) for a in attn1)
    for part in ("unet.", "appearance.", "pose_controlnet.", "temporal."):
        assert any(n.startswith(part) for n in names), part
    assert not any(n.startswith("vae.") for n in names)  # VAE is not compiled by default
    for a in names:  # outermost only: no region inside another
        assert not any(b != a and b.startswith(a + ".") for b in names)


PARTS = ("unet", "pose_controlnet", "temporal")  # the denoiser call; the appearance module stays eager


def _eager_baseline(model, monkeypatch):
    """(inputs, eager ε) with compiling switched on, and dynamo's (graphs, graph breaks) counts before compiling."""
    from torch._dynamo.utils import counters

    monkeypatch.delenv(COMPILE_ENV, raising=False)
    inputs = _inputs(model, views=2)
    return inputs, _eps(model, *inputs), counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def test_compiled_equals_eager_and_is_cached(tiny_main, monkeypatch):
    from torch._dynamo.utils import counters

    model = tiny_main
    inputs, eager, graphs_before, breaks_before = _eager_baseline(model, monkeypatch)
    record = compile_model(model, backend="eager", parts=PARTS)
    try:
        assert record.regions == len(compile_regions(model, PARTS)) > 20
        assert all(is_compiled(m) for m in record.modules)
        assert not is_compiled(model.appearance.unet.down_blocks[0].resnets[0])  # only the parts asked for
        compiled = _eps(model, *inputs)
        graphs = counters["stats"]["unique_graphs"] - graphs_before
        # dynamo really traced the regions, and one graph serves several instances of a block
        assert 0 < graphs < record.regions
        # the Style Fusion attention traces inside its transformer block without splitting the graph
        assert sum(counters["graph_break"].values()) == breaks_before
        for e, c in zip(eager, compiled):
            # the traced graph vs eager: two code paths, equal within float32 rounding (1e-5 relative)
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
        # compiling again with the same settings is a no-op; a second call builds no new graph
        assert compile_model(model, backend="eager", parts=PARTS) is record
        before = counters["stats"]["unique_graphs"]
        _eps(model, *inputs, t=21)
        assert counters["stats"]["unique_graphs"] == before
    finally:
        restored = uncompile_model(model)
    assert restored == record.regions
    assert not any(is_compiled(m) for _, m in compile_regions(model))
    # recompiling after an undo reuses the per-process cache: no new graphs
    before = counters["stats"]["unique_graphs"]
    compile_model(model, backend="eager", parts=PARTS)
    try:
        again = _eps(model, *inputs)
        assert counters["stats"]["unique_graphs"] == before
        torch.testing.assert_close(again[0], eager[0], rtol=1e-5, atol=1e-5)
    finally:
        uncompile_model(model)


def test_full_scope_traces_each_call_as_one_graph_equal_to_eager(tiny_main, monkeypatch):
    """scope="full": the appearance pass and the cond/uncond denoiser calls are one graph each, no breaks."""
    from torch._dynamo.utils import counters

    model = tiny_main
    inputs, eager, graphs_before, breaks_before = _eager_baseline(model, monkeypatch)
    record = compile_model(model, scope="full", backend="eager")
    try:
        assert [type(m).__name__ for m in record.modules] == ["DiffStyle360Model", "AppearanceModule"]
        assert is_compiled(model) and is_compiled(model.appearance)
        assert not any(is_compiled(m) for _, m in compile_regions(model))  # no regional wrappers as well
        compiled = _eps(model, *inputs)
        assert counters["stats"]["unique_graphs"] - graphs_before == 3  # appearance, cond, uncond
        assert sum(counters["graph_break"].values()) == breaks_before
        for e, c in zip(eager, compiled):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)  # traced vs eager: float32 rounding
        before = counters["stats"]["unique_graphs"]
        _eps(model, *inputs, t=21)  # another timestep is a graph input, not a recompile
        assert counters["stats"]["unique_graphs"] == before
        # a style module added later is compiled by compiling again (same settings: nothing else changes)
        model.add_style_module()
        try:
            assert compile_model(model, scope="full", backend="eager") is record
            assert is_compiled(model.style_appearance) and record.regions == 3
        finally:
            model.style_appearance = None
    finally:
        uncompile_model(model)
    assert not is_compiled(model) and not is_compiled(model.appearance)


def test_two_model_objects_over_the_same_modules_keep_their_own_compile_choice(tiny_main, monkeypatch):
    """E.g. two loader handles of one weight set: one compiled, one not; neither undoes the other's choice."""
    from diffstyle360_core.weights import sharing_copy

    graph_calls = []

    def counting_backend(gm, example_inputs):  # dynamo's eager backend, counting the graphs it runs
        def run(*args):
            graph_calls.append(1)
            return gm(*args)
        return run

    monkeypatch.delenv(COMPILE_ENV, raising=False)
    model = tiny_main
    twin = sharing_copy(model)
    inputs = _inputs(model, views=2)
    eager = _eps(model, *inputs)
    compile_model(model, backend=counting_backend, parts=PARTS)
    try:
        graph_calls.clear()
        for e, t in zip(eager, _eps(twin, *inputs)):
            torch.testing.assert_close(t, e, rtol=1e-5, atol=1e-6)
        assert not graph_calls  # the twin runs the shared blocks eagerly
        for e, c in zip(eager, _eps(model, *inputs)):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
        assert graph_calls  # the model runs its compiled blocks
        # the twin picks another scope, then turns compiling off: the model's choice stands throughout
        compile_model(twin, scope="full", backend=counting_backend)
        assert is_compiled(twin) and not is_compiled(model)
        uncompile_model(twin)
        assert all(is_compiled(m) for m in model._ds360_compile.modules)
        graph_calls.clear()
        _eps(model, *inputs)
        assert graph_calls
    finally:
        uncompile_model(twin)
        uncompile_model(model)
    assert not any(is_compiled(m) for m in model.modules())


def test_cuda_graph_outputs_are_copied_out_of_the_graph_pool():
    """With CUDA graphs a replay reuses its output memory: run_forward hands out copies."""
    from diffstyle360_core.unet_walk import CompiledForward, compiling_as, run_forward

    kept = torch.ones(3)
    graphs = {"graphs": CompiledForward(fn=lambda x: kept, cuda_graphs=True), "plain": CompiledForward(fn=lambda x: kept)}
    with compiling_as("graphs"):  # the running model's compile settings pick the graph
        out = run_forward(graphs, None, torch.zeros(1))
    assert torch.equal(out, kept) and out.data_ptr() != kept.data_ptr()
    with compiling_as("plain"):
        assert run_forward(graphs, None, torch.zeros(1)) is kept
    assert run_forward(graphs, lambda x: x + 1, torch.zeros(1)).item() == 1.0  # no settings running: eager


def test_recompile_caps_are_raised_only_inside_our_compiled_functions():
    """One graph per block shape needs more than dynamo's default 8; the process-wide caps stay as they are."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    from diffstyle360_core.acceleration import _compiled

    default = dynamo_config.recompile_limit

    def double(x):
        return x * 2

    def triple(x):
        return x * 3

    ours = _compiled(double, (None, False, "eager", "regional"))
    start = counters["stats"]["unique_graphs"]
    for n in range(1, default + 5):
        assert torch.equal(ours(torch.ones(n)), torch.full((n,), 2.0))
    assert counters["stats"]["unique_graphs"] - start == default + 4  # every shape compiled
    assert dynamo_config.recompile_limit == default  # unchanged outside our call
    plain = torch.compile(triple, backend="eager", dynamic=False)  # someone else's compiled function
    start = counters["stats"]["unique_graphs"]
    for n in range(1, default + 5):
        plain(torch.ones(n))
    assert counters["stats"]["unique_graphs"] - start == default  # still capped at the process default


def test_compile_scope_is_checked(tiny_main):
    with pytest.raises(ValueError, match="scope"):
        compile_model(tiny_main, scope="everything", backend="eager")


def test_deep_copy_of_a_compiled_module_runs_its_own_weights(tiny_main):
    # e.g. add_style_module() deep-copies a compiled content module
    net = copy.deepcopy(tiny_main.pose_controlnet)
    compile_model(net, backend="eager", parts=())
    x, hints, _, _ = _inputs(tiny_main, views=2)
    context = tiny_main.text_embedding
    with torch.no_grad():
        original = net(x, 421, context, hints).mid
        twin = copy.deepcopy(net)
        assert any(is_compiled(m) for m in twin.modules())
        for p in twin.parameters():
            p.mul_(1.5)
        copied = twin(x, 421, context, hints).mid
        again = net(x, 421, context, hints).mid
        uncompile_model(net)
        for m in twin.modules():
            m.__dict__.pop("forward", None)
        twin_eager = twin(x, 421, context, hints).mid
    assert not torch.allclose(copied, original)  # the copy used its own (scaled) weights …
    torch.testing.assert_close(copied, twin_eager, rtol=1e-5, atol=1e-5)  # … exactly as eager would
    torch.testing.assert_close(again, original, rtol=0, atol=0)  # the original is untouched


def test_compile_opt_out_switch(tiny_main, monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")
    record = compile_model(tiny_main, backend="eager")
    assert record.regions == 0
    assert not any(is_compiled(m) for _, m in compile_regions(tiny_main))


@pytest.mark.skipif(os.environ.get("DS360_SKIP_INDUCTOR") == "1", reason="DS360_SKIP_INDUCTOR=1")
def test_inductor_compiled_block_matches_eager(tiny_main):
    """Real inductor kernels (C++ on the CPU) on one block: ~13 s cold on 2 cores, so only one block."""
    block = copy.deepcopy(tiny_main.unet.down_blocks[0].resnets[0])
    x = torch.randn(2, block.in_channels, 8, 8)
    temb = torch.randn(2, block.time_emb_proj.in_features)
    with torch.no_grad():
        eager = block(x, temb)
        record = compile_model(block, parts=(), enabled=True)
        compiled = block(x, temb)
    assert record.regions == 1 and is_compiled(block)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- fp8
def test_fp8_storage_is_close_to_fp32_and_halves_fp16_weights(tiny_main):
    reference = copy.deepcopy(tiny_main)
    inputs = _inputs(reference, views=2)
    want = _eps(reference, *inputs)[0]

    fp8 = copy.deepcopy(tiny_main)
    count = store_weights_fp8(fp8, torch.float32)
    assert count > 100
    assert fp8.vae.dtype == torch.float32  # the pipeline reads the compute dtype from here
    assert fp8.unet.conv_in.weight_fp8.dtype == torch.float8_e4m3fn
    assert "weight" not in dict(fp8.unet.conv_in.named_parameters())
    got = _eps(fp8, *inputs)[0]
    rel = float((got - want).norm() / want.norm())
    # really quantised (3 mantissa bits), and still close: ~0.13 on this tiny random net (bf16 gives ~0.02)
    assert 1e-3 < rel < 0.25, rel

    fp16 = copy.deepcopy(tiny_main).half()
    fp8_half = copy.deepcopy(tiny_main).half()
    store_weights_fp8(fp8_half, torch.float16)
    ratio = weight_bytes(fp8_half) / weight_bytes(fp16)
    assert 0.45 < ratio < 0.6, ratio
    # the packed weights follow .to(device) and the unpacked copies do not stay resident
    fp8_half.to("cpu")
    assert all(getattr(m, "weight", None) is None for m in fp8_half.modules() if hasattr(m, "weight_fp8"))


def test_fp8_scales_keep_small_weights_out_of_subnormals():
    torch.manual_seed(0)
    layer = torch.nn.Linear(320, 320)
    with torch.no_grad():
        layer.weight.normal_(0, 0.004)  # SD-scale weights: many below fp8's smallest normal (2^-6)
    x = torch.randn(16, 320)
    want = layer(x)
    naive = copy.deepcopy(layer)
    with torch.no_grad():
        naive.weight.copy_(naive.weight.to(torch.float8_e4m3fn).float())
    scaled = copy.deepcopy(layer)
    store_weights_fp8(scaled, torch.float32)
    with torch.no_grad():
        err_naive = float((naive(x) - want).norm() / want.norm())
        err_scaled = float((scaled(x) - want).norm() / want.norm())
    assert err_scaled < 0.05 < err_naive, (err_scaled, err_naive)  # measured: 0.024 vs 0.127
    # diffusers' enable_layerwise_casting stores the same fp8 without a scale: as far off as the plain cast,
    # which is why store_weights_fp8 is ours
    hooks = pytest.importorskip("diffusers.hooks", reason="diffusers >= 0.32 has layerwise casting")
    layerwise = copy.deepcopy(layer)
    hooks.apply_layerwise_casting(layerwise, torch.float8_e4m3fn, torch.float32, skip_modules_pattern=())
    with torch.no_grad():
        err_layerwise = float((layerwise(x) - want).norm() / want.norm())
    assert err_scaled < 0.05 < err_layerwise, (err_scaled, err_layerwise)


# --------------------------------------------------------------------------- offload
class SpyOffload(SequentialOffload):
    """Records every move; "device" is tracked by the spy (CPU to CPU moves change nothing)."""

    def __init__(self, names):
        super().__init__("cpu")
        self.names = names
        self.moves = []
        self.where = {}

    def _load(self, model):
        self.moves.append((self.names[id(model)], "device"))
        super()._load(model)

    def _park(self, model):
        self.moves.append((self.names[id(model)], "offload"))
        super()._park(model)

    def activate(self, model):
        super().activate(model)
        for other in self.models:
            self.where[id(other)] = "device" if other is model else "offload"


def test_sequential_offload_keeps_one_model_resident_and_outputs_unchanged(tiny_weights):
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    plain = DiffStyle360Pipeline.from_pretrained(tiny_weights, device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(5)
    content = torch.rand(1, 64, 64, 3, generator=g)
    style = torch.rand(1, 64, 64, 3, generator=g)
    kwargs = dict(views=2, steps=1, seed=7, windows_per_batch=1)
    want = plain.stylize(content, style, **kwargs)

    names = {id(plain.main): "main", id(plain.back_view_model): "back"}
    spy = SpyOffload(names)
    offloaded = DiffStyle360Pipeline(plain.main, plain.back_view_model, plain.cameras, placement=spy)
    violations = []

    def guard(name):
        model = plain.main if name == "main" else plain.back_view_model

        def hook(module, args):
            if spy.where.get(id(model)) != "device":
                violations.append(name)
            others = [n for i, n in names.items() if i != id(model) and spy.where.get(i) == "device"]
            if others:
                violations.append(f"{name} ran while {others} resident")

        return hook

    handles = [plain.main.unet.register_forward_pre_hook(guard("main")),
               plain.main.vae.register_forward_pre_hook(guard("main")),
               plain.back_view_model.unet.register_forward_pre_hook(guard("back"))]
    try:
        got = offloaded.stylize(content, style, **kwargs)
    finally:
        for h in handles:
            h.remove()
    assert not violations, violations[:3]
    # back views first (main parked), then the main model (back parked)
    activated = [n for n, where in spy.moves if where == "device"]
    assert activated[0] == "back" and "main" in activated
    first_main = spy.moves.index(("main", "device"))
    assert ("back", "offload") in spy.moves[:first_main]
    # two separately placed models: equal within float32 rounding (the reference noise is seeded from the
    # user's images, so a rounding change in the generated back view stays a rounding change)
    torch.testing.assert_close(got.views, want.views, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.content_back, want.content_back, rtol=0, atol=1e-5)
