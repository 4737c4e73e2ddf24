"""Tests for diffstyle360_core.fusion (SFA, AdaIN, style blending).

The reference below is written straight from the paper's equations (§3.3 eq. 1-2,
§3.5, §4) in float64 with explicit per-head loops, an explicit softmax and
explicit mean/variance. It shares no code with the module (no SDPA, no helpers).
"""

import math

import pytest
import torch

from diffstyle360_core.fusion import (
    adain,
    alpha_weights,
    blend_styles,
    fusion_keys_values,
    multi_style_fusion_attention,
    style_fusion_attention,
)

D64 = torch.float64


# --------------------------------------------------------------------------- #
# independent float64 reference
# --------------------------------------------------------------------------- #
def ref_adain(x, y, eps=1e-5):
    x, y = x.to(D64), y.to(D64)
    mu_x = x.sum(dim=1, keepdim=True) / x.shape[1]
    var_x = ((x - mu_x) ** 2).sum(dim=1, keepdim=True) / x.shape[1]
    mu_y = y.sum(dim=1, keepdim=True) / y.shape[1]
    var_y = ((y - mu_y) ** 2).sum(dim=1, keepdim=True) / y.shape[1]
    return (var_y + eps).sqrt() * (x - mu_x) / (var_x + eps).sqrt() + mu_y


def bcast(t, B):
    t = t.to(D64)
    return t.expand(B, -1, -1) if t.shape[0] == 1 else t


def ref_kv(k_l, v_l, k_c=None, v_c=None, styles=(), tau=1.0, pairing="paper"):
    """K, V from the formulas, float64. styles: list of (k_s, v_s, m or None)."""
    B = k_l.shape[0]
    k_l, v_l = k_l.to(D64), v_l.to(D64)
    if k_c is None:
        return k_l, v_l
    k_c, v_c = bcast(k_c, B), bcast(v_c, B)
    if not styles:
        return torch.cat([k_l, k_c], 1), torch.cat([v_l, v_c], 1)
    n_ref = k_c.shape[1]
    ms = [torch.ones(B, n_ref, 1, dtype=D64) if m is None
          else m.to(D64).expand(B, -1).unsqueeze(-1) for _, _, m in styles]
    if len(styles) == 1 and styles[0][2] is None:
        k_s, v_s, _ = styles[0]
        k_s, v_s = bcast(k_s, B), bcast(v_s, B)
        slot_a = ref_adain(k_c, k_s)                     # eq. 1
        slot_s = tau * k_s                               # §3.5
        v_hat = v_s
    elif len(styles) == 1:
        k_s, v_s, _ = styles[0]
        k_s, v_s, m = bcast(k_s, B), bcast(v_s, B), ms[0]
        slot_a = m * ref_adain(k_c, k_s) + (1 - m) * k_c  # §4 local stylization
        slot_s = tau * (m * k_s)
        v_hat = v_s
    else:
        M = sum(ms)
        slot_a = sum(m * ref_adain(k_c, bcast(k, B)) for m, (k, _, _) in zip(ms, styles)) + (1 - M) * k_c
        slot_s = tau * sum(m * bcast(k, B) for m, (k, _, _) in zip(ms, styles))
        v_mean = sum(bcast(v, B) for _, v, _ in styles) / len(styles)
        v_hat = sum(m * bcast(v, B) for m, (_, v, _) in zip(ms, styles)) + (1 - M) * v_mean
    K = torch.cat([k_l, slot_a, slot_s], 1)
    V = torch.cat([v_l, v_hat, v_c] if pairing == "paper" else [v_l, v_c, v_hat], 1)
    return K, V


def ref_weights(q, K, heads):
    """Explicit softmax(QKᵀ/√d) per batch item and head: [B, heads, N, T]."""
    q, K = q.to(D64), K.to(D64)
    B, N, C = q.shape
    d = C // heads
    out = torch.empty(B, heads, N, K.shape[1], dtype=D64)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            s = q[b, :, sl] @ K[b, :, sl].T / math.sqrt(d)
            e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
            out[b, h] = e / e.sum(dim=-1, keepdim=True)
    return out


def ref_attention(q, K, V, heads):
    B, N, C = q.shape
    d = C // heads
    W = ref_weights(q, K, heads)
    V = V.to(D64)
    out = torch.empty(B, N, C, dtype=D64)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            out[b, :, sl] = W[b, h] @ V[b, :, sl]
    return out


def rel_err(a, b):
    return float((a.to(D64) - b.to(D64)).norm() / b.to(D64).norm())


def make(B, N, n_ref, C, ref_b, dtype=D64, n_styles=1):
    r = lambda n, b: torch.randn(b, n, C, dtype=dtype)
    t = dict(q=r(N, B), k_l=r(N, B), v_l=r(N, B), k_c=r(n_ref, ref_b), v_c=r(n_ref, ref_b))
    t["styles"] = [(r(n_ref, ref_b), r(n_ref, ref_b)) for _ in range(n_styles)]
    return t


# (B, N, N_ref, C, heads, reference batch is 1)
CONFIGS = [
    (1, 5, 7, 8, 2, True),
    (3, 6, 4, 12, 3, True),
    (2, 9, 10, 16, 4, False),
    (4, 3, 6, 8, 1, True),
]


# --------------------------------------------------------------------------- #
# float64 exactness vs the reference
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("tau", [1.0, 1.05, 2.0])
@pytest.mark.parametrize("masked", [False, True])
def test_sfa_matches_reference_float64(cfg, pairing, tau, masked):
    B, N, n_ref, C, heads, ref1 = cfg
    t = make(B, N, n_ref, C, 1 if ref1 else B)
    k_s, v_s = t["styles"][0]
    m = None
    if masked:  # mask batch 1 or B, values anywhere in [0, 1] including exact 0 and 1
        m = torch.rand(1 if ref1 else B, n_ref, dtype=D64)
        m[:, 0], m[:, -1] = 0.0, 1.0
    out = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], k_s, v_s,
                                 heads=heads, tau=tau, style_mask=m, pairing=pairing)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], tau, pairing)
    ref = ref_attention(t["q"], K, V, heads)
    assert out.shape == (B, N, C) and out.dtype == D64
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("cfg", CONFIGS)
def test_no_style_and_no_reference(cfg):
    B, N, n_ref, C, heads, ref1 = cfg
    t = make(B, N, n_ref, C, 1 if ref1 else B)
    out = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], heads=heads)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"])
    assert K.shape[1] == N + n_ref
    assert rel_err(out, ref_attention(t["q"], K, V, heads)) < 1e-6
    out = style_fusion_attention(t["q"], t["k_l"], t["v_l"], heads=heads)
    assert rel_err(out, ref_attention(t["q"], t["k_l"], t["v_l"], heads)) < 1e-6


def test_adain_matches_reference_and_broadcasts():
    x = torch.randn(3, 11, 8, dtype=D64) * 2 + 1
    y = torch.randn(1, 5, 8, dtype=D64) * 0.5 - 3
    assert rel_err(adain(x, y), ref_adain(x, y)) < 1e-12
    out = adain(y, x)  # x-batch 1, y-batch 3 -> batch 3
    assert out.shape == (3, 5, 8)
    assert rel_err(out, ref_adain(y.expand(3, -1, -1), x)) < 1e-12
    # output carries y's statistics
    z = adain(x, y)
    assert torch.allclose(z.mean(1), y.mean(1).expand(3, -1), atol=1e-10)
    # reduced precision: stats in float32, result in x's dtype
    for dt in (torch.float16, torch.bfloat16):
        zh = adain(x.to(dt), y.to(dt))
        assert zh.dtype == dt
        assert (zh.to(D64) - ref_adain(x.to(dt), y.to(dt))).abs().max() < 0.05


# --------------------------------------------------------------------------- #
# reduced precision
# --------------------------------------------------------------------------- #
# Unit-scale (randn) inputs; outputs are convex mixes of values with |v| <~ 4.
# The reference is evaluated in float64 on the *same* rounded inputs, so these
# bound the arithmetic error only. Worst observed over 800 random trials of this
# exact setup: fp16 1.8e-3, bf16 1.1e-2; bounds keep a ~3x margin:
#   fp16: max abs err < 5e-3   (fp16 eps 9.8e-4, a few roundings of O(1) values)
#   bf16: max abs err < 3e-2   (bf16 eps 7.8e-3)
TOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("masked", [False, True])
def test_low_precision(dtype, pairing, masked):
    B, N, n_ref, C, heads = 2, 16, 24, 32, 4
    t = make(B, N, n_ref, C, 1, dtype=dtype)
    k_s, v_s = t["styles"][0]
    m = torch.rand(1, n_ref).to(dtype) if masked else None
    out = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], k_s, v_s,
                                 heads=heads, tau=1.05, style_mask=m, pairing=pairing)
    assert out.dtype == dtype
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], 1.05, pairing)
    err = (out.to(D64) - ref_attention(t["q"], K, V, heads)).abs().max()
    assert err < TOL[dtype], float(err)


# --------------------------------------------------------------------------- #
# key scaling τ (§3.5)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(5))
def test_tau_moves_mass_to_style_slot(seed):
    g = torch.Generator().manual_seed(seed)
    B, N, n_ref, C, heads = 2, 6, 8, 16, 2
    u = torch.randn(1, 1, C, generator=g, dtype=D64)
    u = 3 * u / u.norm()
    noise = lambda b, n: 0.2 * torch.randn(b, n, C, generator=g, dtype=D64)
    q = u + noise(B, N)
    k_s = u + noise(1, n_ref)  # style keys aligned with the queries' mean direction
    v_s = torch.randn(1, n_ref, C, generator=g, dtype=D64)
    k_l, v_l = torch.randn(B, N, C, generator=g, dtype=D64), torch.randn(B, N, C, generator=g, dtype=D64)
    k_c, v_c = torch.randn(1, n_ref, C, generator=g, dtype=D64), torch.randn(1, n_ref, C, generator=g, dtype=D64)
    d = C // heads
    for h in range(heads):  # precondition: every q·k_s is positive in every head
        sl = slice(h * d, (h + 1) * d)
        assert (q[..., sl] @ k_s[0, :, sl].T > 0).all()
    mass = {}
    for tau in (1.0, 1.5):
        K, V = fusion_keys_values(k_l, v_l, k_c, v_c, [(k_s, v_s, None)], tau=tau)
        assert torch.equal(K[:, N + n_ref:], (tau * k_s).expand(B, -1, -1))
        mass[tau] = ref_weights(q, K, heads)[..., N + n_ref:].sum(-1)  # [B, heads, N]
        out = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=tau)
        assert rel_err(out, ref_attention(q, K, V, heads)) < 1e-6
    assert (mass[1.5] > mass[1.0]).all()


# --------------------------------------------------------------------------- #
# style mask (§4 local stylization)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_zero_mask_reduces_adain_slot_to_content(pairing, dtype):
    B, N, n_ref, C, heads = 2, 5, 7, 8, 2
    t = make(B, N, n_ref, C, 1, dtype=dtype)
    k_s, v_s = t["styles"][0]
    m = torch.zeros(1, n_ref, dtype=dtype)
    K, V = fusion_keys_values(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)],
                              tau=1.3, pairing=pairing)
    assert torch.equal(K[:, N:N + n_ref], t["k_c"].expand(B, -1, -1))
    assert torch.equal(K[:, N + n_ref:], torch.zeros(B, n_ref, C, dtype=dtype))
    out = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], k_s, v_s,
                                 heads=heads, tau=1.3, style_mask=m, pairing=pairing)
    kc, vc, vs = (x.to(D64).expand(B, -1, -1) for x in (t["k_c"], t["v_c"], v_s))
    K_ref = torch.cat([t["k_l"].to(D64), kc, torch.zeros_like(kc)], 1)
    V_ref = torch.cat([t["v_l"].to(D64)] + ([vs, vc] if pairing == "paper" else [vc, vs]), 1)
    tol = 1e-6 if dtype == D64 else 1e-5
    assert rel_err(out, ref_attention(t["q"], K_ref, V_ref, heads)) < tol


def test_full_mask_equals_unmasked():
    t = make(2, 5, 7, 8, 1)
    k_s, v_s = t["styles"][0]
    a = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], k_s, v_s, heads=2, tau=1.05)
    b = style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], k_s, v_s, heads=2, tau=1.05,
                               style_mask=torch.ones(2, 7, dtype=D64))
    assert rel_err(b, a) < 1e-12


# --------------------------------------------------------------------------- #
# multi-style (Fig. 7b)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_multi_with_one_style_matches_the_reference(pairing, with_mask):
    """One (style, mask) pair through the multi-style entry equals the float64 reference of the single rule."""
    t = make(3, 6, 8, 12, 1)
    k_s, v_s = t["styles"][0]
    m = torch.rand(3, 8, dtype=D64) if with_mask else None
    multi = multi_style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"],
                                         [(k_s, v_s, m)], heads=3, tau=1.05, pairing=pairing)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], 1.05, pairing)
    assert rel_err(multi, ref_attention(t["q"], K, V, 3)) < 1e-6


@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("tau", [1.0, 1.05])
def test_multi_two_disjoint_styles_match_reference(pairing, tau):
    B, N, n_ref, C, heads = 2, 6, 10, 16, 4
    t = make(B, N, n_ref, C, 1, n_styles=2)
    m1 = torch.zeros(1, n_ref, dtype=D64)
    m2 = torch.zeros(B, n_ref, dtype=D64)
    m1[:, :3] = 1.0          # "mouth": style 1
    m2[:, 5:8] = 1.0         # "eyes": style 2 (per-view mask)
    m2[:, 3] = 0.4           # soft edge shared with style 1: 0.6 + 0.4 = 1
    m1[:, 3] = 0.6
    styles = [(*t["styles"][0], m1), (*t["styles"][1], m2)]
    out = multi_style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], styles,
                                       heads=heads, tau=tau, pairing=pairing)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], styles, tau, pairing)
    assert rel_err(out, ref_attention(t["q"], K, V, heads)) < 1e-6
    Kb, Vb = fusion_keys_values(t["k_l"], t["v_l"], t["k_c"], t["v_c"], styles, tau=tau, pairing=pairing)
    assert rel_err(Kb, K) < 1e-12 and rel_err(Vb, V) < 1e-12
    # tokens no mask claims keep pure content keys in the AdaIN slot
    assert torch.allclose(Kb[:, N + 9], t["k_c"][0, 9].expand(B, -1))


def test_multi_overlapping_masks_raise():
    t = make(1, 4, 6, 8, 1, n_styles=2)
    m1 = torch.zeros(1, 6, dtype=D64)
    m2 = torch.zeros(1, 6, dtype=D64)
    m1[:, :4] = 1.0
    m2[:, 3:] = 1.0
    args = (t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"])
    with pytest.raises(ValueError, match=r"styles.*overlap"):
        multi_style_fusion_attention(*args, [(*t["styles"][0], m1), (*t["styles"][1], m2)], heads=2)
    with pytest.raises(ValueError, match=r"styles.*overlap"):  # None == all ones
        multi_style_fusion_attention(*args, [(*t["styles"][0], None), (*t["styles"][1], None)], heads=2)
    with pytest.raises(ValueError, match=r"styles"):
        multi_style_fusion_attention(*args, [], heads=2)
    # within tolerance is accepted
    m2 = torch.zeros(1, 6, dtype=D64)
    m2[:, 3] = 5e-5
    multi_style_fusion_attention(*args, [(*t["styles"][0], m1), (*t["styles"][1], m2)], heads=2)


# --------------------------------------------------------------------------- #
# style interpolation (§4)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
def test_blend_endpoints_and_midpoint(pairing):
    t = make(2, 5, 7, 8, 1, n_styles=2)
    (k1, v1), (k2, v2) = t["styles"]
    args = (t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"])
    kw = dict(heads=2, tau=1.05, pairing=pairing)
    for alpha, (ks, vs) in ((0.0, (k1, v1)), (1.0, (k2, v2))):
        w = alpha_weights(alpha)
        kb, vb = blend_styles([k1, k2], w), blend_styles([v1, v2], w)
        assert torch.equal(kb, ks) and torch.equal(vb, vs)
        assert torch.equal(style_fusion_attention(*args, kb, vb, **kw),
                           style_fusion_attention(*args, ks, vs, **kw))
    a = 0.3
    kb, vb = blend_styles([k1, k2], alpha_weights(a)), blend_styles([v1, v2], alpha_weights(a))
    assert rel_err(kb, (1 - a) * k1 + a * k2) < 1e-15
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [((1 - a) * k1 + a * k2, (1 - a) * v1 + a * v2, None)],
                  1.05, pairing)
    assert rel_err(style_fusion_attention(*args, kb, vb, **kw), ref_attention(t["q"], K, V, 2)) < 1e-6


def test_blend_low_precision_keeps_dtype():
    a, b = torch.randn(3, 4, dtype=torch.float16), torch.randn(3, 4, dtype=torch.float16)
    out = blend_styles([a, b], alpha_weights(0.25))
    assert out.dtype == torch.float16
    assert (out.double() - (0.75 * a.double() + 0.25 * b.double())).abs().max() < 2e-3


@pytest.mark.parametrize(
    "tensors, weights, match",
    [
        ([], [], r"tensors"),
        ("t2", [1.0], r"weights"),
        ("t2", [0.5, 0.4], r"weights.*sum to 1"),
        ("t2", [1.2, -0.2], r"weights\[0\].*\[0, 1\]"),
        ("t2", [float("nan"), 1.0], r"weights\[0\].*finite"),
        ("t2", [float("inf"), 0.0], r"weights\[0\].*finite"),
        ("mismatch", [0.5, 0.5], r"tensors\[1\]"),
    ],
)
def test_blend_validation(tensors, weights, match):
    if tensors == "t2":
        tensors = [torch.randn(2, 3), torch.randn(2, 3)]
    elif tensors == "mismatch":
        tensors = [torch.randn(2, 3), torch.randn(3, 2)]
    with pytest.raises(ValueError, match=match):
        blend_styles(tensors, weights)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf"), "x"])
def test_alpha_validation(alpha):
    with pytest.raises(ValueError, match="alpha"):
        alpha_weights(alpha)


def test_alpha_weights_values():
    assert alpha_weights(0.0) == (1.0, 0.0)
    assert alpha_weights(1.0) == (0.0, 1.0)
    assert alpha_weights(0.25) == (0.75, 0.25)


# --------------------------------------------------------------------------- #
# input validation
# --------------------------------------------------------------------------- #
B0, N0, R0, C0 = 2, 5, 7, 8


def _good():
    r = lambda b, n, c=C0: torch.randn(b, n, c)
    return dict(q=r(B0, N0), k_l=r(B0, N0), v_l=r(B0, N0), k_c=r(1, R0), v_c=r(1, R0),
                k_s=r(1, R0), v_s=r(1, R0))


BAD = [
    (dict(q=torch.randn(B0, N0)), {}, r"^q: .*3-D"),
    (dict(k_l=torch.randn(B0, N0, C0 + 1)), {}, r"^k_l: "),
    (dict(v_l=torch.randn(B0, N0 + 1, C0)), {}, r"^v_l: "),
    (dict(k_c=torch.randn(1, R0, C0 * 2)), {}, r"^k_c: .*C == 8"),
    (dict(v_c=torch.randn(1, R0 + 1, C0)), {}, r"^v_c: .*N_ref == k_c tokens \(7\)"),
    (dict(k_s=torch.randn(1, R0 + 2, C0)), {}, r"^k_s: expected \[B or 1, N_ref, C\] with N_ref == k_c tokens \(7\)"),
    (dict(v_s=torch.randn(1, R0, C0 + 2)), {}, r"^v_s: "),
    (dict(k_s=torch.randn(R0, C0)), {}, r"^k_s: .*3-D"),
    (dict(v_s=None), {}, r"^v_s: .*together"),
    (dict(k_s=None), {}, r"^k_s: .*together"),
    (dict(v_c=None), {}, r"^v_c: .*together"),
    (dict(k_c=None, v_c=None), {}, r"^k_c: .*required"),
    (dict(k_c=torch.randn(3, R0, C0)), {}, r"^k_c: batch must be 1 .* or 2"),
    (dict(v_s=torch.randn(3, R0, C0)), {}, r"^v_s: batch must be 1"),
    (dict(k_l=torch.randn(3, N0, C0)), {}, r"^k_l: "),
    (dict(k_l=torch.randn(B0, N0, C0).double()), {}, None),  # dtype mix is allowed (cast to q)
    ({}, dict(heads=3), r"^heads: .*divisible"),
    ({}, dict(heads=0), r"^heads: "),
    ({}, dict(heads=2.0), r"^heads: "),
    ({}, dict(tau=0.0), r"^tau: "),
    ({}, dict(tau=-1.0), r"^tau: "),
    ({}, dict(tau=float("nan")), r"^tau: .*finite"),
    ({}, dict(tau=float("inf")), r"^tau: .*finite"),
    ({}, dict(pairing="swap"), r"^pairing: "),
    ({}, dict(style_mask=torch.rand(1, R0 + 1)), r"^style_mask: .*\[B or 1, N_ref\]"),
    ({}, dict(style_mask=torch.rand(3, R0)), r"^style_mask: "),
    ({}, dict(style_mask=torch.rand(1, R0, 1)), r"^style_mask: "),
    ({}, dict(style_mask=torch.full((1, R0), 1.5)), r"^style_mask: .*\[0, 1\]"),
    ({}, dict(style_mask=torch.full((1, R0), -0.1)), r"^style_mask: .*\[0, 1\]"),
    ({}, dict(style_mask=torch.full((1, R0), float("nan"))), r"^style_mask: .*finite"),
]


@pytest.mark.parametrize("override, kw, match", BAD)
def test_bad_inputs_raise_naming_argument(override, kw, match):
    t = _good()
    t.update(override)
    kwargs = dict(heads=2)
    kwargs.update(kw)
    call = lambda: style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"],
                                          t["k_s"], t["v_s"], **kwargs)
    if match is None:
        call()
        return
    with pytest.raises(ValueError, match=match):
        call()


def test_mask_without_style_raises():
    t = _good()
    with pytest.raises(ValueError, match=r"^style_mask: "):
        style_fusion_attention(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], heads=2,
                               style_mask=torch.ones(1, R0))


def test_multi_style_bad_entries_name_styles():
    t = _good()
    args = (t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"])
    with pytest.raises(ValueError, match=r"^styles\[0\]: .*triple"):
        multi_style_fusion_attention(*args, [(t["k_s"], t["v_s"])], heads=2)
    with pytest.raises(ValueError, match=r"^styles\[1\] k_s: .*N_ref == k_c tokens"):
        multi_style_fusion_attention(
            *args, [(t["k_s"], t["v_s"], None), (torch.randn(1, 3, C0), t["v_s"], None)], heads=2)
    with pytest.raises(ValueError, match=r"^styles\[0\] mask: .*\[0, 1\]"):
        multi_style_fusion_attention(*args, [(t["k_s"], t["v_s"], torch.full((1, R0), 2.0))], heads=2)


def test_adain_validation():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"^y: .*C"):
        adain(x, torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"^y: batch"):
        adain(x, torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match=r"^x: .*3-D"):
        adain(torch.randn(5, 8), x)
    with pytest.raises(ValueError, match=r"^eps: "):
        adain(x, x, eps=0.0)


# --------------------------------------------------------------------------- #
# mask_mode="confined": same keys, style kept inside the mask (README, fusion docstring)
# --------------------------------------------------------------------------- #
def ref_confined(q, k_l, v_l, k_c, v_c, styles, heads, tau, pairing):
    """Explicit reference: weights exp(logit)·g / Σ, g = M on style-slot tokens, 1 elsewhere;
    the unclaimed part (1 − M) of the style values is filled with V_c."""
    B = q.shape[0]
    K, _ = ref_kv(k_l, v_l, k_c, v_c, [(k, v, m if m is not None else torch.ones(1, k_c.shape[1]))
                                       for k, v, m in styles], tau, pairing)
    n_ref = k_c.shape[1]
    ms = [m.to(D64).expand(B, -1).unsqueeze(-1) for _, _, m in styles]
    M = sum(ms)
    v_c64 = bcast(v_c, B)
    v_hat = sum(m * bcast(v, B) for m, (_, v, _) in zip(ms, styles)) + (1 - M) * v_c64
    V = torch.cat([v_l.to(D64), v_hat, v_c64] if pairing == "paper" else [v_l.to(D64), v_c64, v_hat], 1)
    gate = torch.cat([torch.ones(B, q.shape[1] + n_ref, dtype=D64), M.squeeze(-1)], 1)  # [B, T]
    d = q.shape[-1] // heads
    out = torch.empty(q.shape, dtype=D64)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            s = q[b, :, sl].to(D64) @ K[b, :, sl].T / math.sqrt(d)
            e = torch.exp(s - s.max(dim=-1, keepdim=True).values) * gate[b]
            out[b, :, sl] = (e / e.sum(dim=-1, keepdim=True)) @ V[b, :, sl]
    return out


def _masks(n_ref, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(1, n_ref, generator=g, dtype=D64)
    a[:, : n_ref // 3] = 0.0  # some tokens fully outside every mask
    b = (1 - a) * torch.rand(1, n_ref, generator=g, dtype=D64)
    return a, b


@pytest.mark.parametrize("pairing", ["paper", "aligned"])
@pytest.mark.parametrize("n_styles", [1, 2])
def test_confined_mask_matches_reference(pairing, n_styles):
    B, N, n_ref, C, heads = 2, 5, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c = torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64)
    m1, m2 = _masks(n_ref, 3)
    styles = [(torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64), m)
              for m in ([m1] if n_styles == 1 else [m1, m2])]
    if n_styles == 1:
        k_s, v_s, m = styles[0]
        got = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=1.05, style_mask=m,
                                     pairing=pairing, mask_mode="confined")
    else:
        got = multi_style_fusion_attention(q, k_l, v_l, k_c, v_c, styles, heads=heads, tau=1.05, pairing=pairing,
                                           mask_mode="confined")
    want = ref_confined(q, k_l, v_l, k_c, v_c, styles, heads, 1.05, pairing)
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("pairing", ["paper", "aligned"])
def test_confined_zero_mask_is_exactly_content_attention(pairing):
    """Nothing of the style reaches a layer whose mask is empty (the paper's key-only mask leaks)."""
    B, N, n_ref, C, heads = 2, 4, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c, k_s = (torch.randn(1, n_ref, C, dtype=D64) for _ in range(3))
    v_s = torch.randn(1, n_ref, C, dtype=D64) + 3.0
    zero = torch.zeros(1, n_ref, dtype=D64)
    content_only = style_fusion_attention(q, k_l, v_l, k_c, v_c, heads=heads)
    confined = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=1.05, style_mask=zero,
                                      pairing=pairing, mask_mode="confined")
    literal = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=1.05, style_mask=zero,
                                     pairing=pairing)
    assert rel_err(confined, content_only) < 1e-12
    if pairing == "paper":
        assert rel_err(literal, content_only) > 0.1  # the literal rule lets V_s through


def test_confined_equals_paper_when_the_mask_covers_everything():
    B, N, n_ref, C, heads = 2, 4, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c, k_s, v_s = (torch.randn(1, n_ref, C, dtype=D64) for _ in range(4))
    ones = torch.ones(1, n_ref, dtype=D64)
    for pairing in ("paper", "aligned"):
        a = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=1.1, style_mask=ones,
                                   pairing=pairing, mask_mode="confined")
        b = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, tau=1.1, pairing=pairing)
        assert rel_err(a, b) < 1e-12
    with pytest.raises(ValueError, match="^mask_mode"):
        style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, mask_mode="strict")


def test_confined_fp16_keeps_dtype_and_handles_minus_infinity():
    B, N, n_ref, C, heads = 1, 4, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=torch.float16) for _ in range(3))
    k_c, v_c, k_s, v_s = (torch.randn(1, n_ref, C, dtype=torch.float16) for _ in range(4))
    m = torch.zeros(1, n_ref, dtype=torch.float16)
    m[:, :2] = 1
    out = style_fusion_attention(q, k_l, v_l, k_c, v_c, k_s, v_s, heads=heads, style_mask=m, mask_mode="confined")
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("case", ["none", "content", "one", "masked", "two", "confined"])
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
def test_reference_slots_built_once_then_attended_match_the_reference(case, pairing):
    """The layers' path: reference slots built once per step (batch 1), then attended by every window batch."""
    from diffstyle360_core.fusion import attend_with_references, reference_attention_inputs

    B, N, n_ref, C, heads, tau = 3, 5, 6, 8, 2, 1.07
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c = torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64)
    m1, m2 = _masks(n_ref, 5)
    style = lambda m: (torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64), m)  # noqa: E731
    styles = {"none": [], "content": [], "one": [style(None)], "masked": [style(m1)],
              "two": [style(m1), style(m2)], "confined": [style(m1), style(m2)]}[case]
    mode = "confined" if case == "confined" else "paper"
    refs = reference_attention_inputs(None if case == "none" else k_c, v_c, styles, tau=tau, pairing=pairing,
                                      mask_mode=mode)
    assert (refs is None) == (case == "none")
    assert refs is None or refs.k.shape[0] == 1  # batch 1: shared by every view, never copied per window
    got = attend_with_references(q, k_l, v_l, refs, heads)
    if case == "confined":
        want = ref_confined(q, k_l, v_l, k_c, v_c, styles, heads, tau, pairing)
    else:
        K, V = ref_kv(k_l, v_l, None if case == "none" else k_c, v_c, styles, tau, pairing)
        want = ref_attention(q, K, V, heads)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
