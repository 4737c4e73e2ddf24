"""Tests for diffstyle360_core.fusion (SFA, AdaIN, style blending, the shared weight and mask rules).

SFA is tested through the one path the model runs -- ``reference_attention_inputs``
(the reference slots, built once per layer and step) then ``attend_with_references``
(eq. 2) -- against the independent float64 references of ``sfa_reference.py``,
written from the paper's equations (§3.3 eq. 1-2, §3.5, §4) with explicit loops.

Tolerances: float64 inputs, relative error < 1e-6 (SDPA vs explicit per-head
softmax differ by ~1e-15; the bound only has to exclude a wrong formula, where
errors are O(0.1)); exact equalities where the rule makes two results the same
tensors (α = 0/1, an empty mask); fp16/bf16 bounds are given where they are used.
"""

import pytest
import torch
from sfa_reference import D64, ref_adain, ref_attention, ref_confined, ref_kv, ref_weights, rel_err

from diffstyle360_core.fusion import (
    adain,
    alpha_weights,
    attend_with_references,
    blend_styles,
    check_disjoint_masks,
    checked_blend_weights,
    reference_attention_inputs,
)
from diffstyle360_core.options import InputError


def sfa(q, k_l, v_l, k_c=None, v_c=None, styles=(), *, heads, tau=1.0, pairing="paper", mask_mode="paper"):
    """The model's path: reference slots once, then eq. (2) over [latents | slots]."""
    refs = reference_attention_inputs(k_c, v_c, list(styles), tau=tau, pairing=pairing, mask_mode=mask_mode)
    return attend_with_references(q, k_l, v_l, refs, heads)


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
    out = sfa(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], heads=heads, tau=tau,
              pairing=pairing)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], tau, pairing)
    ref = ref_attention(t["q"], K, V, heads)
    assert out.shape == (B, N, C) and out.dtype == D64
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("cfg", CONFIGS)
def test_no_style_and_no_reference(cfg):
    B, N, n_ref, C, heads, ref1 = cfg
    t = make(B, N, n_ref, C, 1 if ref1 else B)
    out = sfa(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], heads=heads)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"])
    assert K.shape[1] == N + n_ref
    assert rel_err(out, ref_attention(t["q"], K, V, heads)) < 1e-6
    assert reference_attention_inputs(None, None) is None  # no references: plain self-attention
    out = sfa(t["q"], t["k_l"], t["v_l"], heads=heads)
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
    out = sfa(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, m)], heads=heads, tau=1.05,
              pairing=pairing)
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
        refs = reference_attention_inputs(k_c, v_c, [(k_s, v_s, None)], tau=tau)
        assert torch.equal(refs.k[:, n_ref:], tau * k_s)  # the style slot is τ·K_s (§3.5)
        K, V = ref_kv(k_l, v_l, k_c, v_c, [(k_s, v_s, None)], tau)
        mass[tau] = ref_weights(q, K, heads)[..., N + n_ref:].sum(-1)  # [B, heads, N]
        out = attend_with_references(q, k_l, v_l, refs, heads)
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
    refs = reference_attention_inputs(t["k_c"], t["v_c"], [(k_s, v_s, m)], tau=1.3, pairing=pairing)
    assert torch.equal(refs.k[:, :n_ref], t["k_c"])
    assert torch.equal(refs.k[:, n_ref:], torch.zeros(1, n_ref, C, dtype=dtype))
    out = attend_with_references(t["q"], t["k_l"], t["v_l"], refs, heads)
    kc, vc, vs = (x.to(D64).expand(B, -1, -1) for x in (t["k_c"], t["v_c"], v_s))
    K_ref = torch.cat([t["k_l"].to(D64), kc, torch.zeros_like(kc)], 1)
    V_ref = torch.cat([t["v_l"].to(D64)] + ([vs, vc] if pairing == "paper" else [vc, vs]), 1)
    tol = 1e-6 if dtype == D64 else 1e-5
    assert rel_err(out, ref_attention(t["q"], K_ref, V_ref, heads)) < tol


def test_full_mask_equals_unmasked():
    t = make(2, 5, 7, 8, 1)
    k_s, v_s = t["styles"][0]
    a = sfa(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, None)], heads=2, tau=1.05)
    b = sfa(t["q"], t["k_l"], t["v_l"], t["k_c"], t["v_c"], [(k_s, v_s, torch.ones(2, 7, dtype=D64))], heads=2,
            tau=1.05)
    assert rel_err(b, a) < 1e-12


# --------------------------------------------------------------------------- #
# multi-style (Fig. 7b)
# --------------------------------------------------------------------------- #
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
    refs = reference_attention_inputs(t["k_c"], t["v_c"], styles, tau=tau, pairing=pairing)
    out = attend_with_references(t["q"], t["k_l"], t["v_l"], refs, heads)
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], styles, tau, pairing)
    assert rel_err(out, ref_attention(t["q"], K, V, heads)) < 1e-6
    assert rel_err(refs.k.expand(B, -1, -1), K[:, N:]) < 1e-12 and rel_err(refs.v.expand(B, -1, -1), V[:, N:]) < 1e-12
    # tokens no mask claims keep pure content keys in the AdaIN slot
    assert torch.allclose(refs.k[:, 9], t["k_c"][:, 9])


def test_multi_overlapping_masks_raise():
    t = make(1, 4, 6, 8, 1, n_styles=2)
    m1 = torch.zeros(1, 6, dtype=D64)
    m2 = torch.zeros(1, 6, dtype=D64)
    m1[:, :4] = 1.0
    m2[:, 3:] = 1.0
    build = lambda styles: reference_attention_inputs(t["k_c"], t["v_c"], styles)  # noqa: E731
    with pytest.raises(ValueError, match=r"^styles: the style masks overlap \(they sum to 2 > 1"):
        build([(*t["styles"][0], m1), (*t["styles"][1], m2)])
    with pytest.raises(ValueError, match=r"^styles: .*overlap"):  # None == all ones
        build([(*t["styles"][0], None), (*t["styles"][1], None)])
    # within tolerance is accepted
    m2 = torch.zeros(1, 6, dtype=D64)
    m2[:, 3] = 5e-5
    assert build([(*t["styles"][0], m1), (*t["styles"][1], m2)]) is not None


def test_the_mask_rule_is_one_rule_for_images_and_tokens():
    """check_disjoint_masks: what the pipeline applies to image masks and SFA to token masks."""
    a, b = torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)
    a[:, :4], b[:, 4:] = 1.0, 1.0
    check_disjoint_masks([a, b])  # disjoint
    check_disjoint_masks([None])  # one style never overlaps itself
    b[:, 3, 0] = 0.5
    with pytest.raises(InputError, match=r"^styles: the style masks overlap \(they sum to 1.5 > 1 where they meet\)"):
        check_disjoint_masks([a, b])
    with pytest.raises(InputError, match=r"^image masks: .*erase the shared region"):
        check_disjoint_masks([None, torch.full((1, 4), 1e-3)], "image masks")


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
        assert torch.equal(sfa(*args, [(kb, vb, None)], **kw), sfa(*args, [(ks, vs, None)], **kw))
    a = 0.3
    kb, vb = blend_styles([k1, k2], alpha_weights(a)), blend_styles([v1, v2], alpha_weights(a))
    assert rel_err(kb, (1 - a) * k1 + a * k2) < 1e-15
    K, V = ref_kv(t["k_l"], t["v_l"], t["k_c"], t["v_c"], [((1 - a) * k1 + a * k2, (1 - a) * v1 + a * v2, None)],
                  1.05, pairing)
    assert rel_err(sfa(*args, [(kb, vb, None)], **kw), ref_attention(t["q"], K, V, 2)) < 1e-6


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
        ("t2", [1.2, -0.2], r"weights\[0\] must be in \[0.0, 1.0\]"),
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


def test_the_blend_weight_rule_is_one_rule():
    """checked_blend_weights: what blend_styles, the pipeline's Style and the Style Blend node apply."""
    assert checked_blend_weights([0.2, 0.3, 0.5], 3) == [0.2, 0.3, 0.5]
    assert checked_blend_weights((0.33333, 0.66667), 2, "style 1 blend weights") == [0.33333, 0.66667]  # ±1e-4
    with pytest.raises(InputError, match=r"^style 2 blend weights must sum to 1, they sum to 1.2"):
        checked_blend_weights([0.5, 0.7], 2, "style 2 blend weights")
    with pytest.raises(InputError, match=r"^weights: 3 weights for 2 styles"):
        checked_blend_weights([0.2, 0.3, 0.5], 2)
    with pytest.raises(InputError, match=r"^weights\[0\] must be in \[0.0, 1.0\]"):
        checked_blend_weights([1.5, -0.5], 2)
    with pytest.raises(TypeError, match=r"^weights must be a list of numbers"):
        checked_blend_weights("0.5, 0.5", 2)


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
R0, C0 = 7, 8


def _good():
    r = lambda n, c=C0: torch.randn(1, n, c)  # noqa: E731
    return dict(k_c=r(R0), v_c=r(R0), k_s=r(R0), v_s=r(R0), mask=None)


BAD = [
    (dict(k_c=torch.randn(1, R0, C0 * 2)), {}, r"^v_c: .*C == 16"),
    (dict(v_c=torch.randn(1, R0 + 1, C0)), {}, r"^v_c: .*N_ref == k_c tokens \(7\)"),
    (dict(k_s=torch.randn(1, R0 + 2, C0)), {}, r"^styles\[0\] k_s: expected \[B or 1, N_ref, C\] with N_ref == k_c tokens \(7\)"),
    (dict(v_s=torch.randn(1, R0, C0 + 2)), {}, r"^styles\[0\] v_s: "),
    (dict(k_s=torch.randn(R0, C0)), {}, r"^styles\[0\] k_s: .*3-D"),
    (dict(k_s=torch.randn(1, R0, C0).long()), {}, r"^styles\[0\] k_s: .*floating-point"),
    (dict(v_c=None), {}, r"^v_c: .*together"),
    (dict(k_c=None), {}, r"^k_c: .*together"),
    (dict(k_c=None, v_c=None), {}, r"^k_c: .*required"),
    (dict(k_c=torch.randn(2, R0, C0), v_c=torch.randn(3, R0, C0)), {}, r"^k_c: batch must be 1 \(broadcast\) or 3"),
    (dict(k_s=torch.randn(2, R0, C0), v_s=torch.randn(3, R0, C0)), {}, r"^styles\[0\] k_s: batch must be 1"),
    (dict(v_c=torch.randn(3, R0, C0), mask=torch.rand(3, R0)), {}, None),  # batch-1 references broadcast
    (dict(k_c=torch.randn(2, R0, C0).double()), {}, None),  # dtype mix is allowed (cast to the layer's dtype)
    ({}, dict(tau=0.0), r"^tau: "),
    ({}, dict(tau=-1.0), r"^tau: "),
    ({}, dict(tau=float("nan")), r"^tau: .*finite"),
    ({}, dict(tau=float("inf")), r"^tau: .*finite"),
    ({}, dict(pairing="swap"), r"^pairing: "),
    ({}, dict(mask_mode="strict"), r"^mask_mode: "),
    (dict(mask=torch.rand(1, R0 + 1)), {}, r"^styles\[0\] mask: .*\[B or 1, N_ref\]"),
    (dict(k_c=torch.randn(3, R0, C0), mask=torch.rand(2, R0)), {}, r"^styles\[0\] mask: .*\[3 or 1, 7\]"),
    (dict(mask=torch.rand(1, R0, 1)), {}, r"^styles\[0\] mask: "),
    (dict(mask=torch.full((1, R0), 1.5)), {}, r"^styles\[0\] mask: .*\[0, 1\]"),
    (dict(mask=torch.full((1, R0), -0.1)), {}, r"^styles\[0\] mask: .*\[0, 1\]"),
    (dict(mask=torch.full((1, R0), float("nan"))), {}, r"^styles\[0\] mask: .*finite"),
]


@pytest.mark.parametrize("override, kw, match", BAD)
def test_bad_inputs_raise_naming_argument(override, kw, match):
    t = _good()
    t.update(override)
    call = lambda: reference_attention_inputs(t["k_c"], t["v_c"], [(t["k_s"], t["v_s"], t["mask"])], **kw)  # noqa: E731
    if match is None:
        call()
        return
    with pytest.raises(ValueError, match=match):
        call()


def test_trusted_masks_skip_only_the_value_checks():
    """A caller that checked its masks once per run skips the GPU-syncing range/overlap checks, not the shapes."""
    t = _good()
    over = torch.full((1, R0), 0.8)
    reference_attention_inputs(t["k_c"], t["v_c"], [(t["k_s"], t["v_s"], over)] * 2, trusted_masks=True)
    with pytest.raises(ValueError, match=r"^styles\[0\] mask: "):
        reference_attention_inputs(t["k_c"], t["v_c"], [(t["k_s"], t["v_s"], torch.ones(1, R0 + 1))],
                                   trusted_masks=True)


def test_bad_style_entries_name_styles():
    t = _good()
    with pytest.raises(ValueError, match=r"^styles\[0\]: .*triple"):
        reference_attention_inputs(t["k_c"], t["v_c"], [(t["k_s"], t["v_s"])])
    with pytest.raises(ValueError, match=r"^styles\[1\] k_s: .*N_ref == k_c tokens"):
        reference_attention_inputs(
            t["k_c"], t["v_c"], [(t["k_s"], t["v_s"], None), (torch.randn(1, 3, C0), t["v_s"], None)])
    with pytest.raises(ValueError, match=r"^styles: expected a sequence"):
        reference_attention_inputs(t["k_c"], t["v_c"], t["k_s"])
    with pytest.raises(ValueError, match=r"^k_c: content references are required"):
        reference_attention_inputs(None, None, [(t["k_s"], t["v_s"], None)])


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
    got = sfa(q, k_l, v_l, k_c, v_c, styles, heads=heads, tau=1.05, pairing=pairing, mask_mode="confined")
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
    content_only = sfa(q, k_l, v_l, k_c, v_c, heads=heads)
    confined = sfa(q, k_l, v_l, k_c, v_c, [(k_s, v_s, zero)], heads=heads, tau=1.05, pairing=pairing,
                   mask_mode="confined")
    literal = sfa(q, k_l, v_l, k_c, v_c, [(k_s, v_s, zero)], heads=heads, tau=1.05, pairing=pairing)
    assert rel_err(confined, content_only) < 1e-12
    if pairing == "paper":
        assert rel_err(literal, content_only) > 0.1  # the literal rule lets V_s through


def test_confined_equals_paper_when_the_mask_covers_everything():
    B, N, n_ref, C, heads = 2, 4, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c, k_s, v_s = (torch.randn(1, n_ref, C, dtype=D64) for _ in range(4))
    ones = torch.ones(1, n_ref, dtype=D64)
    for pairing in ("paper", "aligned"):
        a = sfa(q, k_l, v_l, k_c, v_c, [(k_s, v_s, ones)], heads=heads, tau=1.1, pairing=pairing,
                mask_mode="confined")
        b = sfa(q, k_l, v_l, k_c, v_c, [(k_s, v_s, None)], heads=heads, tau=1.1, pairing=pairing)
        assert rel_err(a, b) < 1e-12


def test_confined_fp16_keeps_dtype_and_handles_minus_infinity():
    B, N, n_ref, C, heads = 1, 4, 6, 8, 2
    q, k_l, v_l = (torch.randn(B, N, C, dtype=torch.float16) for _ in range(3))
    k_c, v_c, k_s, v_s = (torch.randn(1, n_ref, C, dtype=torch.float16) for _ in range(4))
    m = torch.zeros(1, n_ref, dtype=torch.float16)
    m[:, :2] = 1
    out = sfa(q, k_l, v_l, k_c, v_c, [(k_s, v_s, m)], heads=heads, mask_mode="confined")
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("case", ["none", "content", "one", "masked", "two", "confined"])
@pytest.mark.parametrize("pairing", ["paper", "aligned"])
def test_reference_slots_built_once_then_attended_match_the_reference(case, pairing):
    """The layers' path: reference slots built once per step (batch 1), then attended by every window batch."""
    B, N, n_ref, C, heads, tau = 3, 5, 6, 8, 2, 1.07
    q, k_l, v_l = (torch.randn(B, N, C, dtype=D64) for _ in range(3))
    k_c, v_c = torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64)
    m1, m2 = _masks(n_ref, 5)
    style = lambda m: (torch.randn(1, n_ref, C, dtype=D64), torch.randn(1, n_ref, C, dtype=D64), m)  # noqa: E731
    styles = {"none": [], "content": [], "one": [style(None)], "masked": [style(m1)],
              "two": [style(m1), style(m2)], "confined": [style(m1), style(m2)]}[case]
    mode = "confined" if case == "confined" else "paper"
    refs = reference_attention_inputs(*((None, None) if case == "none" else (k_c, v_c)), styles, tau=tau, pairing=pairing,
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
