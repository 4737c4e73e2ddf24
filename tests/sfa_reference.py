"""Independent float64 references of the paper's SFA equations (§3.3 eq. 1-2, §3.5, §4) for the tests.

Written straight from the formulas with explicit per-head loops, an explicit
softmax and explicit mean/variance; they share no code with
``diffstyle360_core.fusion`` (no SDPA, no helpers), so a test comparing the
model's path (``reference_attention_inputs`` + ``attend_with_references``) with
them checks the equations, not a second copy of the implementation.
"""

import math

import torch

D64 = torch.float64


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
