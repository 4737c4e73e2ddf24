"""View-consistency module (facts §4): forward against an independent float64
reference, zero-init identity, independence properties, positional encoding,
and key/shape parity with the official checkpoint layout."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diffstyle360_core.temporal import (
    MOTION_MODULE_PLACEMENT,
    OFFICIAL_MOTION_PREFIXES,
    ViewConsistencyModule,
    build_view_consistency_modules,
    motion_module_placement,
    official_motion_key_to_ours,
    our_motion_key_to_official,
)

KEYS_JSON = Path(__file__).resolve().parent / "data" / "dp360-keys-model_state.json"
UNET = "model.diffusion_model."


def _randomize(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Random non-zero parameters everywhere (overrides proj_out's zero init)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales: around 1
                p.copy_(1.0 + std * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return module


# --------------------------------------------------------------------------- #
# Independent reference, written from the equations (no submodule forwards)
# --------------------------------------------------------------------------- #
def _group_norm(x, groups, w, b, eps=1e-6):
    n, c, h, wd = x.shape
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(n, c, h, wd)
    return y * w[None, :, None, None] + b[None, :, None, None]


def _layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _ref_attention(seq, sd, pre, heads):
    """seq [F, C]: one spatial location's views."""
    nf, c = seq.shape
    hd = c // heads
    x = seq + sd[pre + "pos_encoder.pe"][0, :nf]
    q = x @ sd[pre + "to_q.weight"].T
    k = x @ sd[pre + "to_k.weight"].T
    v = x @ sd[pre + "to_v.weight"].T
    out = torch.zeros_like(x)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        for i in range(nf):
            scores = torch.stack([(q[i, sl] * k[j, sl]).sum() / math.sqrt(hd) for j in range(nf)])
            e = torch.exp(scores - scores.max())
            p = e / e.sum()
            acc = torch.zeros(hd, dtype=x.dtype)
            for j in range(nf):
                acc = acc + p[j] * v[j, sl]
            out[i, sl] = acc
    return out @ sd[pre + "to_out.0.weight"].T + sd[pre + "to_out.0.bias"]


def _reference_forward(sd, x, num_views, heads, groups):
    t = "temporal_transformer."
    blk = t + "transformer_blocks.0."
    bf, c, h, w = x.shape
    nb = bf // num_views
    y = _group_norm(x, groups, sd[t + "norm.weight"], sd[t + "norm.bias"])
    tok = y.permute(0, 2, 3, 1).reshape(bf, h * w, c)
    tok = tok @ sd[t + "proj_in.weight"].T + sd[t + "proj_in.bias"]
    for a in range(2):
        n = _layer_norm(tok, sd[blk + f"norms.{a}.weight"], sd[blk + f"norms.{a}.bias"])
        upd = torch.zeros_like(tok)
        for b in range(nb):
            frames = list(range(b * num_views, (b + 1) * num_views))
            for d in range(h * w):
                upd[frames, d] = _ref_attention(n[frames, d], sd, blk + f"attention_blocks.{a}.", heads)
        tok = tok + upd
    n = _layer_norm(tok, sd[blk + "ff_norm.weight"], sd[blk + "ff_norm.bias"])
    proj = n @ sd[blk + "ff.net.0.proj.weight"].T + sd[blk + "ff.net.0.proj.bias"]
    hidden, gate = proj[..., : 4 * c], proj[..., 4 * c :]
    tok = tok + (hidden * _gelu(gate)) @ sd[blk + "ff.net.2.weight"].T + sd[blk + "ff.net.2.bias"]
    tok = tok @ sd[t + "proj_out.weight"].T + sd[t + "proj_out.bias"]
    return tok.reshape(bf, h, w, c).permute(0, 3, 1, 2) + x


@pytest.mark.parametrize("batch,views", [(2, 4), (3, 1)])
def test_forward_matches_float64_reference(batch, views):
    c, heads, groups = 16, 4, 4
    m = _randomize(ViewConsistencyModule(c, num_heads=heads, max_views=6, norm_num_groups=groups)).double()
    x = torch.randn(batch * views, c, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        out = m(x, num_views=views)
        ref = _reference_forward(m.state_dict(), x, views, heads, groups)
    assert out.shape == x.shape and out.dtype == torch.float64
    rel = (out - ref).norm() / (ref - x).norm()
    assert rel < 1e-6, rel


def test_zero_init_is_identity():
    m = ViewConsistencyModule(32, num_heads=8, norm_num_groups=8)
    assert torch.count_nonzero(m.temporal_transformer.proj_out.weight) == 0
    x = torch.randn(8, 32, 4, 4)
    with torch.no_grad():
        assert torch.equal(m(x, num_views=8), x)


def test_dtype_preserved():
    m = _randomize(ViewConsistencyModule(32, num_heads=4, norm_num_groups=8)).to(torch.bfloat16)
    x = torch.randn(4, 32, 2, 2, dtype=torch.bfloat16)
    with torch.no_grad():
        assert m(x, 4).dtype == torch.bfloat16


def test_batch_items_are_independent():
    m = _randomize(ViewConsistencyModule(16, num_heads=4, norm_num_groups=4, max_views=8))
    x = torch.randn(8, 16, 3, 3)  # B=2, F=4
    x2 = x.clone()
    x2[4:] = torch.randn(4, 16, 3, 3)
    with torch.no_grad():
        y, y2, y_alone = m(x, 4), m(x2, 4), m(x[:4], 4)
    torch.testing.assert_close(y2[:4], y[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_alone, y[:4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y2[4:], y[4:])


def test_spatial_permutation_commutes():
    m = _randomize(ViewConsistencyModule(16, num_heads=4, norm_num_groups=4, max_views=8))
    x = torch.randn(8, 16, 3, 4)
    perm = torch.randperm(12)

    def permute(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    with torch.no_grad():
        torch.testing.assert_close(m(permute(x), 8), permute(m(x, 8)), rtol=1e-5, atol=1e-5)


def test_positional_encoding_formula_and_persistence():
    c, max_views = 24, 10
    m = ViewConsistencyModule(c, num_heads=4, max_views=max_views, norm_num_groups=4)
    sd = m.state_dict()
    for a in range(2):
        key = f"temporal_transformer.transformer_blocks.0.attention_blocks.{a}.pos_encoder.pe"
        assert key in sd
        pe = sd[key].double()
        assert pe.shape == (1, max_views, c)
        for pos in range(max_views):
            for i in range(0, c, 2):
                angle = pos / (10000.0 ** (i / c))
                assert abs(pe[0, pos, i] - math.sin(angle)) < 1e-5
                assert abs(pe[0, pos, i + 1] - math.cos(angle)) < 1e-5
    # Loading a state_dict overwrites the buffer (official files carry it).
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2[key] = torch.full_like(sd2[key], 0.5)
    m.load_state_dict(sd2, strict=True)
    assert torch.all(m.state_dict()[key] == 0.5)


def test_errors():
    m = ViewConsistencyModule(16, num_heads=4, norm_num_groups=4, max_views=8)
    with pytest.raises(ValueError, match="not divisible by num_views"):
        m(torch.randn(6, 16, 2, 2), num_views=4)
    with pytest.raises(ValueError, match="max_views=8.*reduce the view window"):
        m(torch.randn(9, 16, 2, 2), num_views=9)


# --------------------------------------------------------------------------- #
# Placement and key mapping
# --------------------------------------------------------------------------- #
def test_placement_constant():
    down, mid, up = MOTION_MODULE_PLACEMENT["down"], MOTION_MODULE_PLACEMENT["mid"], MOTION_MODULE_PLACEMENT["up"]
    assert [s.ldm_block for s in down] == [1, 2, 4, 5, 7, 8, 10, 11]
    assert [s.channels for s in down] == [320, 320, 640, 640, 1280, 1280, 1280, 1280]
    assert mid == ()
    assert [s.ldm_block for s in up] == list(range(12))
    assert [s.channels for s in up] == [1280] * 6 + [640] * 3 + [320] * 3
    assert [s.index for s in up if s.after_upsampler] == [2, 5, 8]


def test_tiny_config_builds_and_runs():
    down, up = build_view_consistency_modules((32, 64, 64, 64))
    assert len(down) == 8 and len(up) == 12
    assert [m.channels for m in down] == [32, 32, 64, 64, 64, 64, 64, 64]
    assert [m.channels for m in up] == [64] * 9 + [32] * 3
    slots = motion_module_placement((32, 64, 64, 64))
    assert [s.channels for s in slots["up"]] == [m.channels for m in up]
    x = torch.randn(4, 32, 2, 2)
    with torch.no_grad():
        assert torch.equal(down[0](x, 4), x)


def test_key_mapping_roundtrip_and_errors():
    off = UNET + "input_blocks_motion_module.3.0.temporal_transformer.proj_in.weight"
    assert official_motion_key_to_ours(off) == "down.3.temporal_transformer.proj_in.weight"
    assert our_motion_key_to_official("down.3.temporal_transformer.proj_in.weight") == off
    off_up = UNET + "output_blocks_motion_module.11.0.temporal_transformer.norm.bias"
    assert official_motion_key_to_ours(off_up) == "up.11.temporal_transformer.norm.bias"
    assert our_motion_key_to_official("up.11.temporal_transformer.norm.bias") == off_up
    assert OFFICIAL_MOTION_PREFIXES == ("input_blocks_motion_module", "output_blocks_motion_module")
    for bad in [
        UNET + "input_blocks.1.0.in_layers.0.weight",
        UNET + "input_blocks_motion_module.3.1.temporal_transformer.norm.bias",
        "input_blocks_motion_module.3.0.temporal_transformer.norm.bias",
        UNET + "middle_block_motion_module.0.temporal_transformer.norm.bias",
        "control_model.input_blocks_motion_module.0.0.temporal_transformer.norm.bias",
    ]:
        with pytest.raises(ValueError):
            official_motion_key_to_ours(bad)
    for bad in ["mid.0.temporal_transformer.norm.bias", "down.x.temporal_transformer.norm.bias", "down.0.norm.bias"]:
        with pytest.raises(ValueError):
            our_motion_key_to_official(bad)


def test_official_layout_loads_by_renaming():
    """A tiny official-named state dict loads strictly after key mapping."""
    down, up = build_view_consistency_modules((32, 64, 64, 64))
    holder = nn.Module()
    holder.down, holder.up = down, up
    official = {our_motion_key_to_official(k): torch.randn_like(v) for k, v in holder.state_dict().items()}
    holder.load_state_dict({official_motion_key_to_ours(k): v for k, v in official.items()}, strict=True)
    key = UNET + "output_blocks_motion_module.5.0.temporal_transformer.proj_out.weight"
    assert torch.equal(holder.up[5].temporal_transformer.proj_out.weight, official[key])


@pytest.fixture(scope="module")
def official_motion_shapes():
    assert KEYS_JSON.exists(), f"{KEYS_JSON} missing from the repo"
    data = json.loads(KEYS_JSON.read_text())
    return {k: tuple(v) for k, v in data.items() if "_motion_module" in k}


@pytest.mark.parametrize(
    "official_module,ours_prefix,channels",
    [("input_blocks_motion_module.0", "down.0", 320), ("output_blocks_motion_module.0", "up.0", 1280)],
)
def test_single_module_keys_match_official(official_motion_shapes, official_module, ours_prefix, channels):
    expected = {
        official_motion_key_to_ours(k): s
        for k, s in official_motion_shapes.items()
        if k.startswith(f"{UNET}{official_module}.0.")
    }
    assert len(expected) == 28
    with torch.device("meta"):
        m = ViewConsistencyModule(channels)
    got = {f"{ours_prefix}.{k}": tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected


def test_full_build_matches_official_560_keys(official_motion_shapes):
    assert len(official_motion_shapes) == 560
    with torch.device("meta"):
        down, up = build_view_consistency_modules((320, 640, 1280, 1280))
    holder = nn.Module()
    holder.down, holder.up = down, up
    assert len(down) == 8 and len(up) == 12
    assert [m.channels for m in down] == [s.channels for s in MOTION_MODULE_PLACEMENT["down"]]
    assert [m.channels for m in up] == [s.channels for s in MOTION_MODULE_PLACEMENT["up"]]
    got = {k: tuple(v.shape) for k, v in holder.state_dict().items()}
    expected = {official_motion_key_to_ours(k): s for k, s in official_motion_shapes.items()}
    assert got == expected


class _PerViewGroupNorm(nn.Module):
    """diffusers normalises [b, c, f, h, w] jointly over the views; DP360/AnimateDiff
    v1 normalise each view ([(b f), c, h, w]). Wrap to the per-view form."""

    def __init__(self, gn):
        super().__init__()
        self.gn = gn

    def forward(self, x):
        b, c, f, h, w = x.shape
        y = self.gn(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def test_matches_diffusers_animatediff_transformer():
    """Cross-check against diffusers' AnimateDiff temporal transformer (same
    attention/FF maths, different key names), with our weights mapped onto it.
    Its GroupNorm spans all views, unlike DP360's, so it is wrapped per view."""
    unet_motion = pytest.importorskip("diffusers.models.unets.unet_motion_model")
    c, heads = 16, 4
    ours = _randomize(ViewConsistencyModule(c, num_heads=heads, max_views=6, norm_num_groups=4)).double()
    theirs = unet_motion.AnimateDiffTransformer3D(
        num_attention_heads=heads, attention_head_dim=c // heads, in_channels=c, norm_num_groups=4,
        double_self_attention=True, activation_fn="geglu", positional_embeddings="sinusoidal",
        num_positional_embeddings=6, attention_bias=False, cross_attention_dim=None,
    ).double()
    rename = {"attention_blocks.0.": "attn1.", "attention_blocks.1.": "attn2.", "norms.0.": "norm1.",
              "norms.1.": "norm2.", "ff_norm.": "norm3."}
    mapped = {}
    for k, v in ours.state_dict().items():
        k = k[len("temporal_transformer."):]
        if "pos_encoder" in k:
            continue
        for a, b in rename.items():
            k = k.replace(a, b)
        mapped[k] = v
    missing, unexpected = theirs.load_state_dict(mapped, strict=False)
    assert missing == ["transformer_blocks.0.pos_embed.pe"] and unexpected == []
    x = torch.randn(8, c, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(ours(x, 4), theirs(x, num_frames=4), rtol=1e-3, atol=1e-3)
        theirs.norm = _PerViewGroupNorm(theirs.norm)
        torch.testing.assert_close(ours(x, 4), theirs(x, num_frames=4), rtol=1e-6, atol=1e-6)
