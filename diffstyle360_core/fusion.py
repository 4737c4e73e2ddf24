"""Style Fusion Attention (SFA), AdaIN and style blending.

Paper map:

* §3.3, eq. (1): ``K̂_s = AdaIN(K_c, K_s)`` -- content keys re-normalized with the
  style keys' per-channel statistics (:func:`adain`).
* §3.3, eq. (2) and §3.5: one softmax attention over the concatenation of three
  key/value sets -- latent, "AdaIN" and style -- with the style keys scaled by a
  temperature ``τ``. The reference part (everything after ``K_l``/``V_l``) does
  not depend on the latents, so it is built once per layer and denoising step
  (:func:`reference_attention_inputs`) and attended by every window of views
  (:func:`attend_with_references`); this is the one implementation the model runs.
* §4 "Local Stylization": a style mask ``m`` gates the style keys and picks
  ``K̂_s`` where ``m = 1`` and ``K_c`` where ``m = 0``; several (style, mask)
  pairs at once give multi-style local edits, Fig. 7b. Masks may not overlap
  (:func:`check_disjoint_masks`, the one rule for every entry point).
* §4 "Style Interpolation": ``K_s = (1-α)·W_K F_s1 + α·W_K F_s2`` (and the same
  for ``V_s``) (:func:`blend_styles`, :func:`alpha_weights`, with the one weight
  rule :func:`checked_blend_weights`).

All attention inputs are already projected by the layer's ``W_Q``/``W_K``/``W_V``
and laid out as ``[B, tokens, C]``. Everything here is functional and
stateless; it never imports ComfyUI. The tests check it against float64
references written from the paper's equations.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .options import ALPHA, ASPECT_TOL, MASK_MODES, PAIRINGS, InputError, InputTypeError  # noqa: F401 (ASPECT_TOL re-exported)

__all__ = [
    "PAIRINGS",
    "adain",
    "MASK_MODES",
    "blend_styles",
    "alpha_weights",
    "checked_blend_weights",
    "check_disjoint_masks",
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
# the rules every entry point shares (pipeline, nodes, CLI, this module)
# --------------------------------------------------------------------------- #
def checked_blend_weights(weights, count: int, name: str = "weights") -> List[float]:
    """The style-interpolation weight rule (§4): one weight per style, each in [0, 1], summing to 1.

    The sum may miss 1 by :data:`WEIGHT_SUM_TOL` (typed decimals). Returns the
    weights as floats; :class:`~.options.InputError` naming ``name`` otherwise.
    """
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise InputTypeError(f"{name} must be a list of numbers, got {weights!r:.60}")
    if len(weights) != count:
        raise InputError(f"{name}: {len(weights)} weights for {count} styles; give one weight per style")
    ws = [ALPHA.check(w, f"{name}[{i}]") for i, w in enumerate(weights)]
    if abs(sum(ws) - 1.0) > WEIGHT_SUM_TOL:
        raise InputError(f"{name} must sum to 1, they sum to {sum(ws):.6g} (for two styles use alpha_weights(α))")
    return ws


def check_disjoint_masks(masks: Sequence[Optional[torch.Tensor]], name: str = "styles") -> None:
    """The multi-style mask rule (§4, Fig. 7b): ``Σ m_i <= 1`` (+ :data:`MASK_SUM_TOL`) everywhere.

    Each pixel (or reference token) belongs to one style at most, so its AdaIN
    key is a convex mix of styles and content. ``masks``: broadcastable tensors
    in [0, 1]; None means the whole image. One mask never overlaps itself.
    """
    if len(masks) < 2:
        return
    total = sum(torch.ones(()) if m is None else m.float() for m in masks)
    peak = float(total.max())
    if peak > 1.0 + MASK_SUM_TOL:
        raise InputError(
            f"{name}: the style masks overlap (they sum to {peak:.4g} > 1 where they meet); each pixel may "
            "belong to one style at most, so erase the shared region from one of the masks (no mask means everywhere)"
        )


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
            f"{name}: batch must be 1 (broadcast) or {batch} (the largest reference batch), got {_fmt(t)}"
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
def _validate_references(k_c, v_c, styles, tau, pairing, dtype, trusted_masks: bool = False):
    """Validate everything the reference slots consume; return (tau, styles as a list, masks)."""
    _check_pairing(pairing)
    tau = _check_tau(tau)
    if (k_c is None) != (v_c is None):
        missing = "v_c" if v_c is None else "k_c"
        raise ValueError(f"{missing}: k_c and v_c must be given together (content references)")
    if styles is None:
        styles = ()
    if not isinstance(styles, (list, tuple)):
        raise ValueError(
            f"styles: expected a sequence of (k_s, v_s, mask) triples, got {type(styles).__name__}"
        )
    if len(styles) and k_c is None:
        raise ValueError(CONTENT_REQUIRED)
    if k_c is None:
        return tau, [], []
    _check_3d("k_c", k_c, "[B or 1, N_ref, C]")
    _, n_ref, C = k_c.shape
    _check_3d("v_c", v_c, "[B or 1, N_ref, C]")
    if v_c.shape[1] != n_ref or v_c.shape[-1] != C:
        raise ValueError(
            f"v_c: expected [B or 1, N_ref, C] with N_ref == k_c tokens ({n_ref}) and C == {C}, got {_fmt(v_c)}"
        )
    # references of batch 1 are broadcast to the largest batch among them (B: per view)
    B = max(t.shape[0] for t in (k_c, v_c, *(x for st in styles if isinstance(st, (list, tuple)) for x in st))
            if isinstance(t, torch.Tensor) and t.dim() > 0)
    _check_batch("k_c", k_c, B)
    _check_batch("v_c", v_c, B)

    masks = []
    for i, st in enumerate(styles):
        if not isinstance(st, (list, tuple)) or len(st) != 3:
            raise ValueError(f"styles[{i}]: expected a (k_s, v_s, mask) triple, got {st!r:.80}")
        k_s, v_s, m = st
        for name, t in ((f"styles[{i}] k_s", k_s), (f"styles[{i}] v_s", v_s)):
            _check_3d(name, t, "[B or 1, N_ref, C]")
            if t.shape[1] != n_ref or t.shape[-1] != C:
                raise ValueError(
                    f"{name}: expected [B or 1, N_ref, C] with N_ref == k_c tokens ({n_ref}) "
                    f"and C == {C}, got {_fmt(t)}"
                )
            _check_batch(name, t, B)
        if m is None:
            masks.append(None)
            continue
        nm = f"styles[{i}] mask"
        if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] not in (1, B) or m.shape[1] != n_ref:
            got = _fmt(m) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(
                f"{nm}: expected [B or 1, N_ref] = [{B} or 1, {n_ref}] (one weight per reference token), got {got}"
            )
        mf = m.to(_work_dtype(dtype or k_c.dtype, m.dtype) if m.is_floating_point() else torch.float32)
        masks.append(mf)
        if trusted_masks:  # validated once per run by the caller: no GPU sync per layer call
            continue
        if not bool(torch.isfinite(mf).all()):
            raise ValueError(f"{nm}: values must be finite")
        if bool((mf < 0).any()) or bool((mf > 1).any()):
            raise ValueError(
                f"{nm}: values must lie in [0, 1] (1 = stylize this token, 0 = keep content), "
                f"got min {float(mf.min()):.4g}, max {float(mf.max()):.4g}"
            )
    if not trusted_masks:
        check_disjoint_masks(masks)
    return tau, list(styles), masks


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
    """The reference slots of Style Fusion Attention (§3.3 eq. 1–2, §3.5, §4), validated.

    Everything SFA adds after ``K_l``/``V_l`` depends only on the references and
    the settings, so a layer builds it once per denoising step and every window
    of views reuses it (:func:`attend_with_references`). Inputs (already
    projected by the layer's ``W_K``/``W_V``): ``k_c, v_c`` the content
    references (front and back tokens concatenated) ``[B or 1, N_ref, C]``;
    ``styles`` a sequence of ``(k_s, v_s, mask)`` with the same ``N_ref``, mask
    ``[B or 1, N_ref]`` in [0, 1] or None (all ones). ``dtype``: the layer's
    compute dtype (default ``k_c``'s). Returns None when ``k_c`` is None (plain
    self-attention); with no styles the slots are ``K_c``/``V_c``
    (DiffPortrait360's reference attention). With styles, ``M = Σ m_i``::

        K̂ slot      Σ m_i·AdaIN(K_c, K_s_i) + (1 − M)·K_c      (eq. 1; K̂ = AdaIN(K_c, K_s) unmasked)
        style slot  τ·Σ m_i·K_s_i                              (§3.5)
        V̂_s         Σ m_i·V_s_i + (1 − M)·mean_i V_s_i          (== V_s for one style)
        K = [K̂ slot, style slot]
        V = [V̂_s, V_c] pairing="paper" (§3.5, literally)  or  [V_c, V̂_s] pairing="aligned"

    Why two pairings: the paper's text pairs the AdaIN key K̂ with the style
    values and the scaled style key with the content values; ``"aligned"``
    pairs each key with its own value. They give different outputs; a trained
    Style Appearance Module must run with the pairing it was trained with.
    ``tau`` (> 0, paper default 1.05) multiplies the style-slot logits.

    Masks (§4): masked-out style keys are zero, not removed (their logits are 0,
    the paper's literal rule), and with ``pairing="paper"`` the K̂ slot still
    carries style values where m = 0, so style can leak outside the mask.
    ``mask_mode="confined"`` keeps the keys, fills the unclaimed ``(1 − M)`` of
    the style values with ``V_c`` and adds the logit bias ``log M`` on the style
    slot (``ReferenceKV.bias``): where M = 0 the layer is exactly content
    attention; with M ≡ 1 both modes agree. Masks may not overlap
    (:func:`check_disjoint_masks`). ``trusted_masks=True`` skips the value checks
    (range, overlap), which force a GPU sync: for callers that checked them once per run.
    """
    _check_mask_mode(mask_mode)
    tau, styles, masks = _validate_references(k_c, v_c, styles, tau, pairing, dtype, trusted_masks)
    if k_c is None:
        return None
    return _reference_kv(k_c, v_c, styles, tau, pairing, masks, mask_mode, dtype or k_c.dtype)


def attend_with_references(q: torch.Tensor, k_l: torch.Tensor, v_l: torch.Tensor,
                           refs: Optional[ReferenceKV], heads: int) -> torch.Tensor:
    """Eq. (2): ``softmax(Q·[K_l, refs.k]ᵀ/√d + bias)·[V_l, refs.v]`` per head, ``d = C/heads``.

    ``q, k_l, v_l`` ``[B, N, C]`` (the latent tokens); ``refs`` from
    :func:`reference_attention_inputs` (batch 1 or B, broadcast) or None for
    plain self-attention. No checks: this is the per-layer hot path. Returns
    ``[B, N, C]`` in ``q.dtype``.
    """
    K, V, bias = _with_latents(k_l, v_l, refs)
    return _attend(q, K, V, heads, bias)


def _attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, heads: int, bias=None) -> torch.Tensor:
    """softmax(Q Kᵀ/√d + bias) V per head, d = C/heads (eq. 2), via SDPA."""
    qh, kh, vh = (rearrange(t.to(q.dtype), "b n (h d) -> b h n d", h=heads) for t in (q, K, V))
    mask = None if bias is None else bias.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # default scale 1/√d
    return rearrange(out, "b h n d -> b n (h d)")


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

    Weights follow :func:`checked_blend_weights`; tensors must share shape and dtype. Zero-weight terms are skipped so α=0/1 reproduce a
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
    ws = checked_blend_weights(weights, len(tensors))
    dt = tensors[0].dtype
    wd = _work_dtype(dt)
    out = None
    for w, t in zip(ws, tensors):
        if w == 0.0:
            continue
        term = t.to(wd) * w if w != 1.0 else t.to(wd)
        out = term if out is None else out + term
    return out.to(dt)
