"""Style Fusion Attention (SFA), AdaIN and style blending.

Paper map:

* §3.3, eq. (1): ``K̂_s = AdaIN(K_c, K_s)`` -- content keys re-normalized with the
  style keys' per-channel statistics (:func:`adain`).
* §3.3, eq. (2) and §3.5: one softmax attention over the concatenation of three
  key/value sets -- latent, "AdaIN" and style -- with the style keys scaled by a
  temperature ``τ`` (:func:`style_fusion_attention`).
* §4 "Local Stylization": a style mask ``m`` gates the style keys and picks
  ``K̂_s`` where ``m = 1`` and ``K_c`` where ``m = 0``; several (style, mask)
  pairs at once give multi-style local edits, Fig. 7b
  (:func:`multi_style_fusion_attention`).
* §4 "Style Interpolation": ``K_s = (1-α)·W_K F_s1 + α·W_K F_s2`` (and the same
  for ``V_s``) (:func:`blend_styles`, :func:`alpha_weights`).

All attention inputs are already projected by the layer's ``W_Q``/``W_K``/``W_V``
and laid out as ``[B, tokens, C]``. Everything here is functional and
stateless; it never imports ComfyUI.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .options import ALPHA, ASPECT_TOL, MASK_MODES, PAIRINGS  # noqa: F401 (ASPECT_TOL re-exported)

__all__ = [
    "PAIRINGS",
    "adain",
    "MASK_MODES",
    "fusion_keys_values",
    "fusion_attention_inputs",
    "style_fusion_attention",
    "multi_style_fusion_attention",
    "blend_styles",
    "alpha_weights",
    "ReferenceKV",
    "reference_attention_inputs",
    "attend_with_references",
]

#: Tolerance on ``Σ m_i <= 1`` for multi-style masks (masks resized by
#: interpolation may overshoot by rounding).
MASK_SUM_TOL = 1e-4

#: Why a style needs content references (one message for every entry point).
CONTENT_REQUIRED = ("k_c: content references are required when a style is given "
                    "(eq. 1 normalizes the content keys with the style keys)")

#: Tolerance on ``Σ w_i == 1`` for style blending weights.
WEIGHT_SUM_TOL = 1e-4

StyleTriple = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


# --------------------------------------------------------------------------- #
# validation helpers (shape checks only, so they stay cheap on GPU)
# --------------------------------------------------------------------------- #
def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]" + f" ({str(t.dtype).replace('torch.', '')})"


def _check_3d(name: str, t, expect: str = "[B, tokens, C]") -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {expect}, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D tensor {expect}, got shape {_fmt(t)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {_fmt(t)}")
    if min(t.shape) < 1:
        raise ValueError(f"{name}: expected non-empty dimensions {expect}, got {_fmt(t)}")


def _check_batch(name: str, t: torch.Tensor, batch: int) -> None:
    # References do not depend on the view, so batch 1 is allowed and broadcast.
    if t.shape[0] not in (1, batch):
        raise ValueError(
            f"{name}: batch must be 1 (broadcast) or {batch} (the latent batch), got {_fmt(t)}"
        )


def _as_float(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: expected a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return out


def _check_tau(tau) -> float:
    t = _as_float("tau", tau)
    if t <= 0.0:
        raise ValueError(
            f"tau: must be > 0 (1.0 = no key scaling, paper default 1.05, §3.5), got {tau!r}"
        )
    return t


def _check_pairing(pairing) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing: expected one of {PAIRINGS}, got {pairing!r}")


def _check_mask_mode(mask_mode) -> None:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mask_mode!r}")


def _check_heads(heads, channels: int) -> int:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads: expected a positive int, got {heads!r}")
    if channels % heads != 0:
        raise ValueError(
            f"heads: channel count C={channels} is not divisible by heads={heads}; "
            "pass the attention layer's head count"
        )
    return heads


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 at least (fp16/bf16 statistics are too coarse), float64 stays float64."""
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def _expand(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t.expand(batch, -1, -1) if t.shape[0] != batch else t


# --------------------------------------------------------------------------- #
# AdaIN (eq. 1)
# --------------------------------------------------------------------------- #
def _adain(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """AdaIN in the work dtype (no validation, no cast back)."""
    wd = _work_dtype(x.dtype, y.dtype)
    xw, yw = x.to(wd), y.to(wd)
    var_x, mu_x = torch.var_mean(xw, dim=1, keepdim=True, correction=0)
    var_y, mu_y = torch.var_mean(yw, dim=1, keepdim=True, correction=0)
    scale = torch.sqrt(var_y + eps) * torch.rsqrt(var_x + eps)  # [B, 1, C]
    return (xw - mu_x) * scale + mu_y


def adain(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``AdaIN(x, y) = σ(y)·(x − μ(x))/σ(x) + μ(y)`` (paper eq. 1).

    SFA uses it to give the *content* keys the per-channel statistics of the
    *style* keys, so the "AdaIN" key slot keeps the content's spatial structure
    while speaking the style's feature distribution (§3.3).

    ``x``, ``y``: ``[B, tokens, C]`` (token counts may differ). ``μ``/``σ`` are
    taken per batch item and per channel over the token axis; ``σ = sqrt(biased
    var + eps)``. Statistics are computed in float32 at least (float64 stays
    float64) because fp16/bf16 variance sums lose too much; the result has
    ``x.dtype``. Either side may have batch 1 and is broadcast to the other.
    """
    _check_3d("x", x)
    _check_3d("y", y)
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(f"y: expected C == x's C ({x.shape[-1]}), got {_fmt(y)}")
    if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        raise ValueError(
            f"y: batch must equal x's batch ({x.shape[0]}) or one of them must be 1, got {_fmt(y)}"
        )
    e = _as_float("eps", eps)
    if e <= 0.0:
        raise ValueError(f"eps: must be > 0, got {eps!r}")
    return _adain(x, y, e).to(x.dtype)


# --------------------------------------------------------------------------- #
# shared key/value builder (the single code path for every SFA variant)
# --------------------------------------------------------------------------- #
def _validate_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, single: bool, trusted_masks: bool = False):
    """Validate everything the builder consumes; return (tau, masks)."""
    _check_pairing(pairing)
    tau = _check_tau(tau)
    _check_3d("k_l", k_l, "[B, N, C]")
    _check_3d("v_l", v_l, "[B, N, C]")
    if v_l.shape != k_l.shape:
        raise ValueError(f"v_l: expected the same shape as k_l {_fmt(k_l)}, got {_fmt(v_l)}")
    B, _, C = k_l.shape

    if (k_c is None) != (v_c is None):
        missing = "v_c" if v_c is None else "k_c"
        raise ValueError(f"{missing}: k_c and v_c must be given together (content references)")
    n_ref = None
    if k_c is not None:
        _check_3d("k_c", k_c, "[B or 1, N_ref, C]")
        if k_c.shape[-1] != C:
            raise ValueError(f"k_c: expected [B or 1, N_ref, C] with C == {C}, got {_fmt(k_c)}")
        _check_batch("k_c", k_c, B)
        n_ref = k_c.shape[1]
        _check_3d("v_c", v_c, "[B or 1, N_ref, C]")
        if v_c.shape[1] != n_ref or v_c.shape[-1] != C:
            raise ValueError(
                f"v_c: expected [B or 1, N_ref, C] with N_ref == k_c tokens ({n_ref}) and C == {C}, "
                f"got {_fmt(v_c)}"
            )
        _check_batch("v_c", v_c, B)

    if styles is None:
        styles = ()
    if not isinstance(styles, (list, tuple)):
        raise ValueError(
            f"styles: expected a sequence of (k_s, v_s, mask) triples, got {type(styles).__name__}"
        )
    if len(styles) and k_c is None:
        raise ValueError(CONTENT_REQUIRED)

    masks = []
    mask_sum = None
    for i, st in enumerate(styles):
        if single:
            nk, nv, nm = "k_s", "v_s", "style_mask"
        else:
            if not isinstance(st, (list, tuple)) or len(st) != 3:
                raise ValueError(f"styles[{i}]: expected a (k_s, v_s, mask) triple, got {st!r:.80}")
            nk, nv, nm = f"styles[{i}] k_s", f"styles[{i}] v_s", f"styles[{i}] mask"
        k_s, v_s, m = st
        for name, t in ((nk, k_s), (nv, v_s)):
            _check_3d(name, t, "[B or 1, N_ref, C]")
            if t.shape[1] != n_ref or t.shape[-1] != C:
                raise ValueError(
                    f"{name}: expected [B or 1, N_ref, C] with N_ref == k_c tokens ({n_ref}) "
                    f"and C == {C}, got {_fmt(t)}"
                )
            _check_batch(name, t, B)
        if m is not None:
            if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] not in (1, B) \
                    or m.shape[1] != n_ref:
                got = _fmt(m) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(
                    f"{nm}: expected [B or 1, N_ref] = [{B} or 1, {n_ref}] (one weight per "
                    f"reference token), got {got}"
                )
            mf = m.to(_work_dtype(k_l.dtype, m.dtype) if m.is_floating_point() else torch.float32)
            if trusted_masks:  # validated once per run by the caller: no GPU sync per layer call
                masks.append(mf)
                continue
            if not bool(torch.isfinite(mf).all()):
                raise ValueError(f"{nm}: values must be finite")
            if bool((mf < 0).any()) or bool((mf > 1).any()):
                raise ValueError(
                    f"{nm}: values must lie in [0, 1] (1 = stylize this token, 0 = keep content), "
                    f"got min {float(mf.min()):.4g}, max {float(mf.max()):.4g}"
                )
            masks.append(mf)
        else:
            masks.append(None)

    if len(styles) > 1 and not trusted_masks:
        # Σ m_i <= 1: each token's AdaIN slot is a convex mix of styles and content.
        ones = torch.ones((1, n_ref), dtype=torch.float32, device=k_l.device)
        for m in masks:
            mm = ones if m is None else m
            mask_sum = mm if mask_sum is None else mask_sum + mm
        peak = float(mask_sum.max())
        if peak > 1.0 + MASK_SUM_TOL:
            raise ValueError(
                f"styles: masks overlap (sum of masks reaches {peak:.4g} > 1 at some token); "
                "give each style a disjoint region (a mask of None means the whole reference)"
            )
    return tau, masks


class ReferenceKV(NamedTuple):
    """The reference part of SFA's keys/values: everything after ``K_l``/``V_l`` (latent-independent).

    ``k``/``v`` ``[B or 1, slots·N_ref, C]``; ``bias`` ``[B or 1, slots·N_ref]`` (log M on the style slot
    of ``mask_mode="confined"``, 0 elsewhere) or None. Built once per layer and denoising step
    (:func:`reference_attention_inputs`) and shared by every window of views.
    """

    k: torch.Tensor
    v: torch.Tensor
    bias: Optional[torch.Tensor] = None


def _reference_kv(k_c, v_c, styles, tau, pairing, masks, mask_mode, dtype, eps=1e-5) -> Optional[ReferenceKV]:
    """The reference slots of §3.3/§3.5 (with §4 masks) in ``dtype``; inputs already validated.

    None when there are no references (plain self-attention).
    """
    if k_c is None:
        return None
    if not styles:  # content only: DiffPortrait360 / back-view model
        return ReferenceKV(k_c.to(dtype), v_c.to(dtype))
    bias = None
    wd = _work_dtype(dtype, k_c.dtype, *(s[0].dtype for s in styles))
    if len(styles) == 1 and masks[0] is None:
        # Plain SFA: K̂ = AdaIN(K_c, K_s), style slot τ·K_s, style values V_s.
        k_s, v_s, _ = styles[0]
        slot_a = _adain(k_c, k_s, eps)
        slot_s = k_s.to(wd) * tau if tau != 1.0 else k_s
        v_hat = v_s
    else:
        # Masked / multi-style (§4, Fig. 7), with M = Σ m_i:
        #   AdaIN slot  Σ m_i·AdaIN(K_c, K_s_i) + (1 − M)·K_c
        #   style slot  τ·Σ m_i·K_s_i
        #   style value Σ m_i·V_s_i + (1 − M)·mean_i V_s_i   (== V_s for one style)
        # mask_mode="confined": same keys; the unclaimed (1 − M) part of the style
        # values is V_c and style-slot logits get log M (−∞ where no style claims a
        # token), so nothing of a style reaches outside its mask.
        n_ref = k_c.shape[1]
        ones = torch.ones((1, n_ref, 1), dtype=wd, device=k_c.device)
        weights = [ones if m is None else m.to(wd).unsqueeze(-1) for m in masks]
        mask_sum = sum(weights)
        slot_a = sum(w * _adain(k_c, k_s, eps) for w, (k_s, _, _) in zip(weights, styles))
        slot_a = slot_a + (1.0 - mask_sum) * k_c.to(wd)
        slot_s = sum(w * k_s.to(wd) for w, (k_s, _, _) in zip(weights, styles))
        slot_s = slot_s * tau if tau != 1.0 else slot_s
        if mask_mode == "confined":
            claimed = sum(w * v_s.to(wd) for w, (_, v_s, _) in zip(weights, styles))
            v_hat = claimed + (1.0 - mask_sum) * v_c.to(wd)
            zeros = torch.zeros((mask_sum.shape[0], n_ref), dtype=wd, device=k_c.device)
            bias = torch.cat([zeros, torch.log(mask_sum.squeeze(-1))], dim=1)
        elif len(styles) == 1:
            v_hat = styles[0][1]  # m·V_s + (1 − m)·V_s == V_s: values unchanged
        else:
            vs = [st[1].to(wd) for st in styles]
            claimed = sum(w * v for w, v in zip(weights, vs))
            v_hat = claimed + (1.0 - mask_sum) * (sum(vs) / len(vs))
    slot_a, slot_s, v_hat, v_c = _same_batch(slot_a.to(dtype), slot_s.to(dtype), v_hat.to(dtype), v_c.to(dtype))
    K = torch.cat([slot_a, slot_s], dim=1)
    V = torch.cat([v_hat, v_c] if pairing == "paper" else [v_c, v_hat], dim=1)
    return ReferenceKV(K, V, bias)


def _same_batch(*tensors: torch.Tensor):
    """Broadcast batch-1 tensors to the largest batch among them (references of batch B and 1 mixed)."""
    batch = max(t.shape[0] for t in tensors)
    return [_expand(t, batch) for t in tensors]


def _with_latents(k_l: torch.Tensor, v_l: torch.Tensor, refs: Optional[ReferenceKV]):
    """``(K, V, bias)`` = latent keys/values followed by the reference slots (bias None or ``[B or 1, T]``)."""
    if refs is None:
        return k_l, v_l, None
    B, N = k_l.shape[:2]
    dt = k_l.dtype
    K = torch.cat([k_l, _expand(refs.k.to(dt), B)], dim=1)
    V = torch.cat([v_l, _expand(refs.v.to(dt), B)], dim=1)
    bias = None
    if refs.bias is not None:
        zeros = refs.bias.new_zeros((refs.bias.shape[0], N))
        bias = torch.cat([zeros, refs.bias], dim=1)
    return K, V, bias


def _build_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, masks, mask_mode="paper", eps=1e-5):
    """Assemble (K, V, bias) of §3.3/§3.5 (with §4 masks); inputs already validated.

    ``bias`` is None except for ``mask_mode="confined"`` with masks: an additive
    logit bias ``[B or 1, T]`` that is log(M) on the style slot (0 elsewhere).
    """
    refs = _reference_kv(k_c, v_c, styles, tau, pairing, masks, mask_mode, k_l.dtype, eps)
    return _with_latents(k_l, v_l, refs)


def reference_attention_inputs(
    k_c: Optional[torch.Tensor],
    v_c: Optional[torch.Tensor],
    styles: Optional[Sequence[StyleTriple]] = None,
    *,
    tau: float = 1.0,
    pairing: str = "paper",
    mask_mode: str = "paper",
    dtype: Optional[torch.dtype] = None,
    trusted_masks: bool = False,
) -> Optional[ReferenceKV]:
    """The latent-independent part of SFA's ``(K, V, bias)``: the reference slots, validated.

    Everything SFA adds after ``K_l``/``V_l`` depends only on the references and
    the settings, so a layer builds it once per denoising step and every window
    of views reuses it (:func:`attend_with_references`). ``dtype``: the layer's
    compute dtype (default ``k_c``'s). None when ``k_c`` is None.
    """
    _check_mask_mode(mask_mode)
    if k_c is None:
        if styles:
            raise ValueError(CONTENT_REQUIRED)
        return None
    _check_3d("k_c", k_c, "[B or 1, N_ref, C]")
    dtype = dtype or k_c.dtype
    probe = k_c.new_empty((k_c.shape[0], 1, k_c.shape[-1]), dtype=dtype)  # stands in for the latents
    tau, masks = _validate_kv(probe, probe, k_c, v_c, list(styles or ()), tau, pairing, single=False,
                              trusted_masks=trusted_masks)
    return _reference_kv(k_c, v_c, list(styles or ()), tau, pairing, masks, mask_mode, dtype)


def attend_with_references(q: torch.Tensor, k_l: torch.Tensor, v_l: torch.Tensor,
                           refs: Optional[ReferenceKV], heads: int) -> torch.Tensor:
    """Eq. (2) with reference slots built by :func:`reference_attention_inputs` (no checks: the per-layer hot path)."""
    K, V, bias = _with_latents(k_l, v_l, refs)
    return _attend(q, K, V, heads, bias)


def fusion_keys_values(
    k_l: torch.Tensor,
    v_l: torch.Tensor,
    k_c: Optional[torch.Tensor] = None,
    v_c: Optional[torch.Tensor] = None,
    styles: Optional[Sequence[StyleTriple]] = None,
    *,
    tau: float = 1.0,
    pairing: str = "paper",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Build the concatenated ``(K, V)`` that SFA attends over (§3.3, §3.5, §4).

    Exposed so callers (and tests) can inspect exactly which keys/values the
    latent queries see; :func:`style_fusion_attention` and
    :func:`multi_style_fusion_attention` both go through this one code path.

    Returns ``K, V`` of shape ``[B, N + slots·N_ref, C]`` in ``k_l.dtype``:

    * ``styles`` empty/None, ``k_c`` None: ``[K_l]``, ``[V_l]``.
    * ``styles`` empty/None: ``[K_l, K_c]``, ``[V_l, V_c]``.
    * otherwise ``[K_l, AdaIN slot, style slot]`` and, for ``pairing="paper"``,
      ``[V_l, V̂_s, V_c]``; for ``"aligned"``, ``[V_l, V_c, V̂_s]``. The slots are
      given in :func:`multi_style_fusion_attention`.

    ``styles`` is a sequence of ``(k_s, v_s, mask)`` (mask ``[B or 1, N_ref]`` or
    None = all ones); the masks must not overlap (``Σ m_i <= 1``).
    """
    K, V, _ = fusion_attention_inputs(k_l, v_l, k_c, v_c, styles, tau=tau, pairing=pairing)
    return K, V


def fusion_attention_inputs(
    k_l: torch.Tensor,
    v_l: torch.Tensor,
    k_c: Optional[torch.Tensor] = None,
    v_c: Optional[torch.Tensor] = None,
    styles: Optional[Sequence[StyleTriple]] = None,
    *,
    tau: float = 1.0,
    pairing: str = "paper",
    mask_mode: str = "paper",
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(K, V, bias)`` for SFA: :func:`fusion_keys_values` plus the logit bias of
    ``mask_mode="confined"`` (``[B or 1, T]``, log M on the style slot, else 0;
    None when no bias applies)."""
    _check_mask_mode(mask_mode)
    tau, masks = _validate_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, single=False)
    return _build_kv(k_l, v_l, k_c, v_c, list(styles or ()), tau, pairing, masks, mask_mode)


# --------------------------------------------------------------------------- #
# attention (eq. 2)
# --------------------------------------------------------------------------- #
def _check_query(q, k_l, heads) -> int:
    _check_3d("q", q, "[B, N, C]")
    _check_3d("k_l", k_l, "[B, N, C]")
    if k_l.shape != q.shape:
        raise ValueError(
            f"k_l: expected the latent keys to have q's shape {_fmt(q)} (self-attention over "
            f"the same N tokens), got {_fmt(k_l)}"
        )
    return _check_heads(heads, q.shape[-1])


def _attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, heads: int, bias=None) -> torch.Tensor:
    """softmax(Q Kᵀ/√d + bias) V per head, d = C/heads (eq. 2), via SDPA."""
    qh, kh, vh = (rearrange(t.to(q.dtype), "b n (h d) -> b h n d", h=heads) for t in (q, K, V))
    mask = None if bias is None else bias.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # default scale 1/√d
    return rearrange(out, "b h n d -> b n (h d)")


def style_fusion_attention(
    q: torch.Tensor,
    k_l: torch.Tensor,
    v_l: torch.Tensor,
    k_c: Optional[torch.Tensor] = None,
    v_c: Optional[torch.Tensor] = None,
    k_s: Optional[torch.Tensor] = None,
    v_s: Optional[torch.Tensor] = None,
    *,
    heads: int,
    tau: float = 1.0,
    style_mask: Optional[torch.Tensor] = None,
    pairing: str = "paper",
    mask_mode: str = "paper",
    trusted_masks: bool = False,
) -> torch.Tensor:
    """Style Fusion Attention (§3.3 eq. 1–2, key scaling §3.5, style mask §4).

    The latent queries attend, in one softmax, to the latent tokens, to the
    content keys re-normalized with style statistics, and to the style tokens,
    so each latent token chooses per head how much structure vs. style to take.

    Inputs (already projected by the layer's ``W_Q``/``W_K``/``W_V``), all
    ``[batch, tokens, C]``:

    * ``q, k_l, v_l``: latent tokens, ``[B, N, C]``.
    * ``k_c, v_c``: content references (front and back views concatenated along
      tokens), ``[B or 1, N_ref, C]``.
    * ``k_s, v_s``: style references, ``[B or 1, N_ref, C]`` (same ``N_ref``).

    Reference tensors may have batch 1 while ``q`` has batch ``B``: reference
    features do not depend on the target view, so they are computed once and
    AdaIN / masking run at batch 1 before being broadcast -- the efficient path.

    Keys and values::

        K̂   = AdaIN(K_c, K_s)                                   (eq. 1)
        K   = [K_l, K̂, τ·K_s]
        V   = [V_l, V_s, V_c]   pairing="paper"   (§3.5, literally)
        V   = [V_l, V_c, V_s]   pairing="aligned"

    Why two pairings: the paper's text pairs the AdaIN key K̂ with the style
    values V_s and the scaled style key τ·K_s with the content values V_c.
    ``"aligned"`` instead pairs each key with its own value (K̂ is built from
    K_c, so it gets V_c; K_s gets V_s), which is what a shared-attention layer
    would do by default. The two give different outputs; a fine-tuned Style
    Appearance Module must be run with the pairing it was trained with.

    ``tau`` (τ > 0, paper default 1.05) scales only the style-slot keys, which
    multiplies their logits and shifts softmax mass toward them when they align
    with the query (§3.5).

    ``style_mask`` ``[B or 1, N_ref]`` in [0, 1] (local stylization, §4): the
    style slot becomes ``τ·(m ⊙ K_s)`` and the AdaIN slot ``m·K̂ + (1−m)·K_c``;
    values are unchanged. Note that masked-out style keys are zero, not removed:
    their logits are 0, so they still receive ``exp(0)`` softmax weight (the
    paper's literal formulation). The paper masks *keys* only, so with
    ``pairing="paper"`` the AdaIN slot still carries the style values V_s where
    m = 0 and style can leak outside the mask. ``mask_mode="confined"`` keeps the
    same keys but gives masked-out style-slot tokens a logit bias of log m (−∞ at
    m = 0) and pairs the unmasked part with content values (AdaIN-slot values
    ``m·V_s + (1−m)·V_c`` for "paper", style-slot values the same for "aligned"):
    where m = 0 the layer is exactly DiffPortrait360's content attention, and
    with m ≡ 1 both modes are identical.

    ``k_s = v_s = None``: ``K = [K_l, K_c]``, ``V = [V_l, V_c]`` (plain
    DiffPortrait360 / back-view model); additionally ``k_c = v_c = None``:
    plain self-attention.

    ``trusted_masks=True`` skips the value checks of the masks (range, overlap),
    which force a GPU sync; callers that validated the masks once per run use it.

    Returns ``[B, N, C]`` in ``q.dtype`` (references are cast to it).
    """
    heads = _check_query(q, k_l, heads)
    if (k_s is None) != (v_s is None):
        missing = "v_s" if v_s is None else "k_s"
        raise ValueError(f"{missing}: k_s and v_s must be given together (style references)")
    if k_s is None:
        if style_mask is not None:
            raise ValueError("style_mask: given without k_s/v_s; a mask needs style references")
        styles = []
    else:
        styles = [(k_s, v_s, style_mask)]
    _check_mask_mode(mask_mode)
    tau, masks = _validate_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, single=True, trusted_masks=trusted_masks)
    K, V, bias = _build_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, masks, mask_mode)
    return _attend(q, K, V, heads, bias)


def multi_style_fusion_attention(
    q: torch.Tensor,
    k_l: torch.Tensor,
    v_l: torch.Tensor,
    k_c: torch.Tensor,
    v_c: torch.Tensor,
    styles: Sequence[StyleTriple],
    *,
    heads: int,
    tau: float = 1.0,
    pairing: str = "paper",
    mask_mode: str = "paper",
    trusted_masks: bool = False,
) -> torch.Tensor:
    """SFA with several (style, mask) pairs at once (§4, Fig. 7b: Joker mouth +
    Pixar eyes).

    ``styles``: sequence of ``(k_s_i, v_s_i, m_i)``, ``k_s_i``/``v_s_i``
    ``[B or 1, N_ref, C]``, ``m_i`` ``[B or 1, N_ref]`` in [0, 1] or None (all
    ones). The masks must not overlap: ``Σ_i m_i <= 1`` per token (+1e-4), so
    every token's AdaIN key is a convex mix of styles and content. With
    ``M = Σ_i m_i``::

        AdaIN slot  Σ_i m_i·AdaIN(K_c, K_s_i) + (1 − M)·K_c
        style slot  τ·Σ_i m_i·K_s_i
        V̂_s         Σ_i m_i·V_s_i + (1 − M)·mean_i(V_s_i)
        V = [V_l, V̂_s, V_c] (paper) or [V_l, V_c, V̂_s] (aligned)

    This generalizes the single-mask rule of §4; the mean fills unmasked style
    values (no style claims them). ``mask_mode="confined"`` (see
    :func:`style_fusion_attention`) fills them with V_c instead and adds the
    logit bias log M on the style slot. With one style it is exactly
    :func:`style_fusion_attention` with that mask (same code path).
    Returns ``[B, N, C]`` in ``q.dtype``.
    """
    heads = _check_query(q, k_l, heads)
    if not isinstance(styles, (list, tuple)) or len(styles) == 0:
        raise ValueError(
            "styles: expected a non-empty sequence of (k_s, v_s, mask) triples; "
            "for no style call style_fusion_attention without k_s/v_s"
        )
    if k_c is None or v_c is None:
        raise ValueError("k_c: content references k_c and v_c are required for style fusion")
    _check_mask_mode(mask_mode)
    tau, masks = _validate_kv(k_l, v_l, k_c, v_c, styles, tau, pairing, single=False,
                              trusted_masks=trusted_masks)
    K, V, bias = _build_kv(k_l, v_l, k_c, v_c, list(styles), tau, pairing, masks, mask_mode)
    return _attend(q, K, V, heads, bias)


# --------------------------------------------------------------------------- #
# style interpolation (§4)
# --------------------------------------------------------------------------- #
def alpha_weights(alpha: float) -> Tuple[float, float]:
    """``(1 − α, α)`` for two-style interpolation (§4, Fig. 8): α=0 is style 1,
    α=1 is style 2."""
    a = ALPHA.check(alpha)
    return (1.0 - a, a)


def blend_styles(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``Σ_i w_i·T_i`` -- linear style interpolation (§4 "Style Interpolation").

    The paper blends *projected* features: call it once on ``W_K F_si`` to get
    ``K_s`` and once on ``W_V F_si`` to get ``V_s``, then pass them to SFA. Since
    AdaIN is nonlinear, blending must happen before SFA, not on its output.

    Weights must be finite, each in [0, 1], summing to 1 (±1e-4); tensors must
    share shape and dtype. Zero-weight terms are skipped so α=0/1 reproduce a
    single style exactly. Accumulates in float32 at least; returns the tensors'
    dtype.
    """
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 1:
        raise ValueError("tensors: expected a non-empty list of same-shape tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensors[{i}]: expected a torch.Tensor, got {type(t).__name__}")
        if t.shape != tensors[0].shape or t.dtype != tensors[0].dtype:
            raise ValueError(
                f"tensors[{i}]: expected shape/dtype {_fmt(tensors[0])} like tensors[0], got {_fmt(t)}"
            )
    if not isinstance(weights, (list, tuple)) or len(weights) != len(tensors):
        n = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        raise ValueError(
            f"weights: expected one weight per tensor ({len(tensors)}), got {n}; "
            "for two styles use alpha_weights(alpha)"
        )
    ws = [_as_float(f"weights[{i}]", w) for i, w in enumerate(weights)]
    for i, w in enumerate(ws):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weights[{i}]: must lie in [0, 1], got {w!r}")
    total = sum(ws)
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights: must sum to 1 (got {total:.6g}); normalize them first")
    dt = tensors[0].dtype
    wd = _work_dtype(dt)
    out = None
    for w, t in zip(ws, tensors):
        if w == 0.0:
            continue
        term = t.to(wd) * w if w != 1.0 else t.to(wd)
        out = term if out is None else out + term
    return out.to(dt)
