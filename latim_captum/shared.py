"""The shared transformer of a Zamba2 hybrid layer, decomposed over source tokens: the Mamba's conv inputs per source.

A Zamba2 hybrid layer (:class:`~latim_captum.traces.SharedBlockTrace`) computes ``y = x + Mamba(u)`` with::

    u_j = s_j ⊙ (x_j + W τ_j)                                         (the Mamba's pre-norm, s_j fixed)
    τ_j = W_down (g_j ⊙ (W_up (n_j ⊙ a_j) + b_up)) + b_down             (gated MLP, g_j = act(gate_j) fixed;
                                                                       pre-MLP RMSNorm n_j fixed)
    a_j = Σ_h W_O^h Σ_k A^h_jk (v^{x,h}_k + v^{e,h}_k)                  (attention over LN_1([x ; e]), A fixed)

Every step is linear once the gates and normalisation scales are fixed, so ``u_j`` splits exactly over the source
tokens k and their two inputs, the residual stream ``x_k`` and the embedding ``e_k``::

    τ^src_jk = W_down (g_j ⊙ W_up (n_j ⊙ Σ_h W_O^h A^h_jk v^{src,h}_k))          src ∈ {x, e}
    U^x_jk   = s_j ⊙ (δ_jk (x_j + W c_j) + W τ^x_jk)       U^e_jk = s_j ⊙ W τ^e_jk
    c_j      = W_down (g_j ⊙ b_up) + b_down                 (the MLP's biases: position j's own, see below)

and the decomposed conv channels of the Mamba read ``P^src_jk = W_x U^src_jk`` (``+ b_x`` on ``P^x_jj``), with
``Σ_k (P^x_jk + P^e_jk) = W_x u_j + b_x``, the Mamba's conv input. What no source token owns (the MLP biases and
``b_x``) stays with position j's stream part, the way LaTIM gives a plain Mamba layer's in-projection bias to token j.
Padded positions are zeroed before the in-projection, as the model does (their conv input is ``b_x`` alone).

:func:`latim_captum.decompose.shared_block_contributions` carries these parts through the Mamba with its gates held
fixed: ``T_i(src_k) = Σ_j L_ij(P^src_jk)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import attention_value_paths
from .traces import SharedBlockTrace

__all__ = ["shared_input_parts", "shared_rows_per_block"]


def shared_input_parts(trace: SharedBlockTrace, start: int = 0, stop: int | None = None) -> tuple[Tensor, Tensor]:
    """``P^x_jk`` and ``P^e_jk`` for positions ``j ∈ [start, stop)`` and every source k, each ``[B, rows, N, d]``.

    Their sum over k and both sources is the Mamba's conv input ``W_x u_j + b_x`` (``trace.mamba.conv_input``).

    Example:
        >>> px, pe = shared_input_parts(tr.layers[1])                                   # doctest: +SKIP
        >>> torch.allclose((px + pe).sum(2), tr.layers[1].mamba.conv_input)            # doctest: +SKIP
        True
    """
    sh = trace.shared
    n = trace.residual.shape[1]
    stop = n if stop is None else stop
    norm = sh.ffn_scale[:, start:stop, None]
    gate = sh.ffn_gate[:, start:stop, None]
    parts = []
    for values in (sh.stream_values, sh.embedding_values):
        attn = attention_value_paths(sh.weights, values, sh.attn_out_weight, start, stop)  # [B, r, N, D]
        tau = ((attn * norm) @ sh.ffn_up_weight.T * gate) @ sh.ffn_down_weight.T
        parts.append(tau @ sh.out_weight.T)
    stream, embedding = parts
    rows = torch.arange(start, stop, device=stream.device)
    stream[:, rows - start, rows] += trace.residual[:, start:stop] + sh.bias_path[:, start:stop]
    scale = trace.input_scale[:, start:stop, None]
    mask = trace.mamba.mask  # the positions the Mamba zeroes before its in-projection
    if mask is not None:
        scale = scale * mask[:, start:stop, None, None].to(scale.dtype)
    stream, embedding = (stream * scale) @ trace.input_weight.T, (embedding * scale) @ trace.input_weight.T
    if trace.input_bias is not None:
        stream[:, rows - start, rows] += trace.input_bias
    return stream, embedding


def shared_rows_per_block(trace: SharedBlockTrace, budget: int) -> int:
    """Positions j per :func:`shared_input_parts` call so that its temporaries (``[B, rows, N, max(D, I, d)]``,
    a few of them) stay under ``budget`` elements."""
    bsz, n, d_model = trace.residual.shape
    width = max(d_model, trace.shared.ffn_gate.shape[-1], trace.input_weight.shape[0])
    return max(1, min(n, budget // (3 * bsz * n * width)))
