"""The SSM as an explicit token-mixing matrix (eq 15, Appendix A) and its plain recurrent scan.

Both functions take the fixed parameters of :mod:`latim_captum.traces` and know nothing about model classes.
The discretisation is the one Mamba's kernels use: ``Ā_t = exp(Δ_t A)`` and ``B̄_t x_t = Δ_t B_t x_t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .traces import Mamba1SSM, Mamba2SSM, SSMParams

__all__ = [
    "default_anchor_rows",
    "d_inner_of",
    "hidden_attention",
    "hidden_attention_anchored",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]


def d_inner_of(ssm: SSMParams) -> int:
    """Number of decomposed channels ``d``."""
    if isinstance(ssm, Mamba2SSM):
        return ssm.delta.shape[-1] * ssm.head_dim
    return ssm.delta.shape[-1]


def _causal_decay(log_decay: Tensor, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """``exp(Σ_{t=s+1}^{i} Δ_t A)`` in ``dtype`` for rows ``i ∈ [start, stop)`` and all ``s``; 0 above the diagonal.

    ``log_decay`` is ``Δ_t A``, ``[B, N, ...]``; the result is ``[B, stop-start, N, ...]``. The exponent is a
    difference of two prefix sums that grow with N while the difference stays small where the decay matters: it is
    taken in float64 (in float32 a cumsum of 3e4 left ~3e-4 relative error in the decay at N = 2048, 7e-3 at 4096),
    then cast. Peak memory: the float64 gap and its float32 cast (12 bytes an entry; the float32 ``torch.where``
    this replaces held 16 for a moment), the mask and the ``exp`` in place.
    """
    cumsum = torch.cumsum(log_decay.double(), dim=1)
    gap = cumsum[:, start:stop, None] - cumsum[:, None, :]
    n = log_decay.shape[1]
    i = torch.arange(start, stop, device=log_decay.device)[:, None]
    s = torch.arange(n, device=log_decay.device)[None, :]
    above = (s > i).view(1, stop - start, n, *([1] * (log_decay.dim() - 2)))
    # -inf before exp keeps the entries above the diagonal exactly 0 (exp of a positive gap could overflow)
    return gap.masked_fill_(above, float("-inf")).to(dtype).exp_()


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
        decay = _causal_decay(ssm.delta * ssm.A, start, stop, ssm.delta.dtype)  # [B, r, N, H]
        cb = torch.einsum("bign,bsgn->bisg", ssm.C[:, start:stop], ssm.B)  # [B, r, N, G]
        heads, groups = ssm.A.shape[0], ssm.B.shape[2]
        cb = cb.repeat_interleave(heads // groups, dim=-1)  # [B, r, N, H]
        mix = cb * decay * ssm.delta[:, None]
        return mix.repeat_interleave(ssm.head_dim, dim=-1)
    decay = _causal_decay(ssm.delta[..., None] * ssm.A, start, stop, ssm.delta.dtype)  # [B, r, N, d, R]
    weighted = decay * ssm.B[:, None, :, None, :] * ssm.C[:, start:stop, None, None, :]
    return weighted.sum(-1) * ssm.delta[:, None]


def default_anchor_rows(n: int) -> int:
    """Mamba-1 rows per factorisation anchor: ≈ √(N/2), which balances the direct (N·a·d·R) and factor (N²/a·d·R)
    elementwise work, as a power of two in [16, 128]."""
    return int(min(128, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n / 2)))))))


#: elements of Mamba-1's ``[rows, sources, channels, R]`` products held at once near an anchor (256 MiB in float32)
_DIRECT_ELEMENTS = 1 << 26


def hidden_attention_anchored(
    ssm: SSMParams, start: int = 0, stop: int | None = None, anchor_rows: int | None = None
) -> Tensor:
    """:func:`hidden_attention` (the same ``[B, rows, N, d]``) with Mamba-1's decay factorised around anchors.

    For query rows ``i ∈ [a, a + anchor_rows)`` and sources ``s < a``, with ``Λ = cumsum Δ``::

        M_{i,s,c} = Σ_r [C_{i,r} e^{A_{c,r}(Λ_{i,c} − Λ_{a,c})}] [e^{A_{c,r}(Λ_{a,c} − Λ_{s,c})} Δ_{s,c} B_{s,r}]

    both factors ≤ 1 (``A < 0``), so the sources before an anchor cost one batched ``[rows, R] @ [R, a]`` product
    per channel and ``(rows + a)·d·R`` exponentials instead of ``rows·a·d·R``; sources in ``[a, i]`` use eq 15
    directly. The values equal :func:`hidden_attention`'s up to rounding (the tests hold them to 1e-12 in float64);
    Mamba-2 (one scalar decay per head, no state axis to factor) is :func:`hidden_attention` itself. This is the
    Mamba-1 hidden attention of the baselines (Mamba-Attention, Mamba-Attribution); LaTIM's reference path keeps
    the plain formula as its oracle.

    Args:
        ssm: the layer's fixed SSM parameters.
        start, stop: query rows (default all).
        anchor_rows: rows per anchor (default :func:`default_anchor_rows` of ``N``).

    Example:
        >>> m = hidden_attention_anchored(trace.ssm, 0, 8)  # = hidden_attention(trace.ssm, 0, 8)  # doctest: +SKIP
    """
    n = ssm.delta.shape[1]
    stop = n if stop is None else stop
    if isinstance(ssm, Mamba2SSM):
        return hidden_attention(ssm, start, stop)
    anchor = default_anchor_rows(n) if anchor_rows is None else anchor_rows
    if anchor < 1:
        raise ValueError(f"anchor_rows must be ≥ 1, got {anchor}")
    bsz, _, d = ssm.delta.shape
    state = ssm.A.shape[-1]
    dtype = ssm.delta.dtype
    lam = torch.cumsum(ssm.delta.double(), dim=1)  # [B, N, d]: differences taken in float64, as _causal_decay
    out = ssm.delta.new_zeros(bsz, stop - start, n, d)
    for a in range(start, stop, anchor):
        b = min(stop, a + anchor)
        if a > 0:
            back = (lam[:, a, None] - lam[:, :a]).to(dtype)  # [B, a, d], ≥ 0
            right = torch.exp(back[..., None] * ssm.A) * ssm.B[:, :a, None, :] * ssm.delta[:, :a, :, None]
            ahead = (lam[:, a:b] - lam[:, a, None]).to(dtype)  # [B, r, d], ≥ 0
            left = torch.exp(ahead[..., None] * ssm.A) * ssm.C[:, a:b, None, :]  # [B, r, d, R]
            product = left.permute(0, 2, 1, 3) @ right.permute(0, 2, 3, 1)  # [B, d, r, a]
            out[:, a - start : b - start, :a] = product.permute(0, 2, 3, 1)
        # sources in [a, b): eq 15 in channel chunks that keep [B, r, r, chunk, R] under _DIRECT_ELEMENTS
        rows = b - a
        chunk = max(1, min(d, _DIRECT_ELEMENTS // max(1, bsz * rows * rows * state)))
        i = torch.arange(a, b, device=out.device)
        above = (i[None, :] > i[:, None])[None, :, :, None, None]  # [1, r, s, 1, 1]: source after the row
        for c0 in range(0, d, chunk):
            c1 = min(d, c0 + chunk)
            gap = (lam[:, a:b, None, c0:c1] - lam[:, None, a:b, c0:c1]).to(dtype)  # [B, r, s, c]
            log_decay = (gap[..., None] * ssm.A[c0:c1]).masked_fill(above, float("-inf"))
            weighted = log_decay.exp_() * ssm.B[:, None, a:b, None, :] * ssm.C[:, a:b, None, None, :]
            out[:, a - start : b - start, a:b, c0:c1] = weighted.sum(-1) * ssm.delta[:, None, a:b, c0:c1]
    return out


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


def selective_scan_chunked(ssm: SSMParams, phi: Tensor, chunk: int = 64) -> Tensor:
    """:func:`selective_scan_ref` (no D skip) in ``⌈N / chunk⌉`` vectorised steps instead of ``N``, ``[B, N, d]``.

    The state is carried between chunks; inside a chunk every decay is relative to the chunk, so no exponent is
    ever positive (no overflow, no cancellation of a long cumsum):

    * Mamba-2 (SSD form): with ``λ_t = Σ_{u ≤ t, u in chunk} Δ_u A``,
      ``v_t = e^{λ_t} C_t·H_prev + Σ_{s ≤ t} (C_t · B_s) e^{λ_t − λ_s} Δ_s φ_s`` (masked before the ``exp``),
      ``H_next = e^{λ_last} H_prev + Σ_s e^{λ_last − λ_s} Δ_s φ_s B_s``.
    * Mamba-1 (a state per channel and state index, too large for the quadratic form): all chunks advance
      together from zero states, a short scan over chunks gives each chunk's start state, and a second pass reads
      the outputs (``2·chunk + ⌈N/chunk⌉`` steps; only decays ≤ 1 appear).

    Args:
        ssm: fixed Δ, A, B, C.
        phi: SSM input ``[B, N, d]``.
        chunk: time steps per vectorised step.

    Example:
        >>> torch.allclose(selective_scan_chunked(ssm, phi), selective_scan_ref(ssm, phi))  # doctest: +SKIP
        True
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    bsz, n, d = phi.shape
    out = torch.empty_like(phi)
    if isinstance(ssm, Mamba2SSM):
        heads, groups, p = ssm.A.shape[0], ssm.B.shape[2], ssm.head_dim
        rep = heads // groups
        state = phi.new_zeros(bsz, heads, p, ssm.B.shape[-1])
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            length = c1 - c0
            delta = ssm.delta[:, c0:c1]  # [B, L, H]
            lam = torch.cumsum(delta * ssm.A, dim=1)  # [B, L, H], chunk-relative, <= 0
            x = phi[:, c0:c1].reshape(bsz, length, heads, p)
            b_h = ssm.B[:, c0:c1].repeat_interleave(rep, dim=2)  # [B, L, H, S]
            c_h = ssm.C[:, c0:c1].repeat_interleave(rep, dim=2)
            y = torch.einsum("blhs,bhps->blhp", c_h, state) * torch.exp(lam)[..., None]
            gap = lam[:, :, None] - lam[:, None, :]  # [B, t, s, H]
            causal = torch.ones(length, length, dtype=torch.bool, device=phi.device).tril()[None, :, :, None]
            decay = torch.exp(torch.where(causal, gap, torch.full_like(gap, float("-inf"))))
            mix = torch.einsum("bthn,bshn->btsh", c_h, b_h) * decay * delta[:, None]
            y = y + torch.einsum("btsh,bshp->bthp", mix, x)
            out[:, c0:c1] = y.reshape(bsz, length, d)
            carry = torch.exp(lam[:, -1:] - lam) * delta  # [B, L, H]
            state = torch.exp(lam[:, -1])[..., None, None] * state + torch.einsum("bsh,bshp,bshn->bhpn", carry, x, b_h)
        return out
    return _mamba1_two_pass(ssm, phi, chunk)


def _mamba1_two_pass(ssm: Mamba1SSM, phi: Tensor, chunk: int) -> Tensor:
    """Mamba-1 scan with every chunk advanced at once: ``2·chunk + ⌈N/chunk⌉`` vectorised steps.

    Pass 1 runs each chunk from a zero state; the chunk-start states then follow from one short scan over chunks
    (``S_{c+1} = e^{A ΣΔ_c} S_c + H^{local}_c``); pass 2 reruns each chunk from its true start state, reading
    ``v_t = C_t · H_t``. Only decays ≤ 1 appear. The tail is padded with ``Δ = 0`` (decay 1, no input).
    """
    bsz, n, d = phi.shape
    state_size = ssm.A.shape[-1]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def split(t: Tensor) -> Tensor:  # [B, N, k] -> [B, chunks, chunk, k]
        return torch.nn.functional.pad(t, (0, 0, 0, pad)).view(bsz, n_chunks, chunk, t.shape[-1])

    delta, inputs = split(ssm.delta), split(ssm.delta * phi)
    b_in, c_out = split(ssm.B), split(ssm.C)

    def run(h: Tensor, read: bool) -> Tensor:
        out = phi.new_empty(bsz, n_chunks, chunk, d) if read else h
        for t in range(chunk):
            h = torch.exp(delta[:, :, t, :, None] * ssm.A) * h + inputs[:, :, t, :, None] * b_in[:, :, t, None, :]
            if read:
                out[:, :, t] = (h * c_out[:, :, t, None, :]).sum(-1)
        return out if read else h

    local_end = run(phi.new_zeros(bsz, n_chunks, d, state_size), read=False)
    chunk_decay = torch.exp(delta.sum(2)[..., None] * ssm.A)  # [B, chunks, d, R]
    starts = phi.new_empty(bsz, n_chunks, d, state_size)
    state = phi.new_zeros(bsz, d, state_size)
    for c in range(n_chunks):
        starts[:, c] = state
        state = chunk_decay[:, c] * state + local_end[:, c]
    return run(starts, read=True).reshape(bsz, n_chunks * chunk, d)[:, :n]


def selective_scan(ssm: SSMParams, phi: Tensor) -> Tensor:
    """The SSM output without the D skip, ``[B, N, d]``: :func:`selective_scan_chunked` (the adapters' scan).

    Chunks of 64 steps for Mamba-2; ``⌈√N⌉`` for Mamba-1 (fewest vectorised steps).
    """
    if isinstance(ssm, Mamba2SSM):
        return selective_scan_chunked(ssm, phi, 64)
    return selective_scan_chunked(ssm, phi, max(1, math.isqrt(phi.shape[1] - 1) + 1))
