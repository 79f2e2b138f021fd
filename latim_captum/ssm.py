"""The SSM as an explicit token-mixing matrix (eq 15, Appendix A) and its plain recurrent scan.

Both functions take the fixed parameters of :mod:`latim_captum.traces` and know nothing about model classes.
The discretisation is the one Mamba's kernels use: ``Ā_t = exp(Δ_t A)`` and ``B̄_t x_t = Δ_t B_t x_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .traces import Mamba2SSM, SSMParams

__all__ = ["hidden_attention", "selective_scan_ref", "d_inner_of"]


def d_inner_of(ssm: SSMParams) -> int:
    """Number of decomposed channels ``d``."""
    if isinstance(ssm, Mamba2SSM):
        return ssm.delta.shape[-1] * ssm.head_dim
    return ssm.delta.shape[-1]


def _causal_log_decay(log_decay_cumsum: Tensor, start: int, stop: int) -> Tensor:
    """``Σ_{t=s+1}^{i} Δ_t A`` for rows ``i ∈ [start, stop)`` and all ``s``; ``-inf`` above the diagonal.

    ``log_decay_cumsum`` is ``[B, N, ...]``; the result is ``[B, stop-start, N, ...]``.
    """
    rows = log_decay_cumsum[:, start:stop, None]
    cols = log_decay_cumsum[:, None, :]
    n = log_decay_cumsum.shape[1]
    i = torch.arange(start, stop, device=log_decay_cumsum.device)[:, None]
    s = torch.arange(n, device=log_decay_cumsum.device)[None, :]
    causal = (s <= i).view(1, stop - start, n, *([1] * (log_decay_cumsum.dim() - 2)))
    # -inf before exp keeps the entries above the diagonal exactly 0 (exp of a positive gap could overflow)
    return torch.where(causal, rows - cols, torch.full_like(rows - cols, float("-inf")))


def hidden_attention(ssm: SSMParams, start: int = 0, stop: int | None = None) -> Tensor:
    """Rows ``[start, stop)`` of the implicit attention ``M`` of eq 15, per channel, ``[B, rows, N, d]``.

    Mamba-1 (per channel c):  ``M_{i,s,c} = Σ_r C_{i,r} exp(Σ_{t=s+1}^{i} Δ_{t,c} A_{c,r}) Δ_{s,c} B_{s,r}``.
    Mamba-2 (per head h, shared by its channels):
    ``M_{i,s,h} = (C_i · B_s)_{g(h)} exp(Σ_{t=s+1}^{i} Δ_{t,h} A_h) Δ_{s,h}``.
    ``M_{i,s} = 0`` for ``s > i``. The SSM output is ``v_i = Σ_s M_{i,s} ⊙ φ_s + D ⊙ φ_i``.

    Example:
        >>> m = hidden_attention(trace.ssm, 0, 8)  # first 8 query rows  # doctest: +SKIP
    """
    n = ssm.delta.shape[1]
    stop = n if stop is None else stop
    if isinstance(ssm, Mamba2SSM):
        log_decay = torch.cumsum(ssm.delta * ssm.A, dim=1)  # [B, N, H]
        decay = torch.exp(_causal_log_decay(log_decay, start, stop))  # [B, r, N, H]
        cb = torch.einsum("bign,bsgn->bisg", ssm.C[:, start:stop], ssm.B)  # [B, r, N, G]
        heads, groups = ssm.A.shape[0], ssm.B.shape[2]
        cb = cb.repeat_interleave(heads // groups, dim=-1)  # [B, r, N, H]
        mix = cb * decay * ssm.delta[:, None]
        return mix.repeat_interleave(ssm.head_dim, dim=-1)
    log_decay = torch.cumsum(ssm.delta[..., None] * ssm.A, dim=1)  # [B, N, d, R]
    decay = torch.exp(_causal_log_decay(log_decay, start, stop))  # [B, r, N, d, R]
    weighted = decay * ssm.B[:, None, :, None, :] * ssm.C[:, start:stop, None, None, :]
    return weighted.sum(-1) * ssm.delta[:, None]


def selective_scan_ref(ssm: SSMParams, phi: Tensor) -> Tensor:
    """The recurrence of eq 10 / 13 step by step (no D skip): ``v_i = H_i^T C_i``, ``[B, N, d]``.

    ``H_i = exp(Δ_i A) ⊙ H_{i-1} + Δ_i B_i φ_i``. O(N·d·R) memory; the oracle for :func:`hidden_attention`.
    """
    bsz, n, d = phi.shape
    out = torch.empty_like(phi)
    if isinstance(ssm, Mamba2SSM):
        heads, groups, p = ssm.A.shape[0], ssm.B.shape[2], ssm.head_dim
        b_heads = ssm.B.repeat_interleave(heads // groups, dim=2)  # [B, N, H, S]
        c_heads = ssm.C.repeat_interleave(heads // groups, dim=2)
        state = phi.new_zeros(bsz, heads, p, ssm.B.shape[-1])
        for t in range(n):
            decay = torch.exp(ssm.delta[:, t] * ssm.A)[..., None, None]
            x = phi[:, t].view(bsz, heads, p)
            state = decay * state + (ssm.delta[:, t, :, None, None] * x[..., None]) * b_heads[:, t, :, None, :]
            out[:, t] = (state * c_heads[:, t, :, None, :]).sum(-1).reshape(bsz, d)
        return out
    state = phi.new_zeros(bsz, d, ssm.A.shape[-1])
    for t in range(n):
        decay = torch.exp(ssm.delta[:, t, :, None] * ssm.A)
        state = decay * state + (ssm.delta[:, t, :, None] * phi[:, t, :, None]) * ssm.B[:, t, None, :]
        out[:, t] = (state * ssm.C[:, t, None, :]).sum(-1)
    return out
