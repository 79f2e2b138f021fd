"""ALTI-Logit for one query position (e.g. one generated token) without any ``N × N`` map.

The full map is ``C = diag(u·x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}`` with ``R^{(l)} = P^{(l)} ⋯ P^{(1)}`` (eq 8). For one
row ``q`` evaluate the sum backwards (Horner's scheme, a vector–matrix product per layer)::

    w ← Δ^{(L)}_q
    for l = L-1 … 1:   w ← w P^{(l)} + Δ^{(l)}_q          (row vector times the layer's ALTI map)
    C_q = w + (u_q · x^{(0)}_q) e_q

A layer with embedding columns (Zamba2's hybrid layers: ``Δ = [Δ^x | Δ^e]``, ``P = [A^x | A^e]``) sends the
embedding halves of ``Δ_q`` and of ``w P`` straight to ``C_q`` and keeps ``w ← w A^x + Δ^x_q`` in the recursion.

``Δ^{(l)}_q`` is one row of eq 7 (``N·d`` work). ``w P^{(l)}`` needs the ALTI rows ``k ≤ q`` of every layer but the
last; they are streamed in row chunks and folded into ``w`` at once, so the memory beyond the trace is O(N) plus
one tile and one ``[chunk, N]`` slab: it grows as O(N·d), not O(N²). The time is that of ALTI maps of ``L − 1``
layers restricted to rows ``≤ q`` (≈ (L−1)·q²·d·D FLOPs): ALTI's rows need every contribution vector, so no exact
formulation avoids them; the ℓp/Δ rows of a single query alone are O(N·d·D).

Example:
    >>> row = alti_logit_row(model, ids, position=-1, activation="silu_gate")     # doctest: +SKIP
    >>> torch.allclose(row.scores.sum(-1), row.logits - row.offset)               # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._validation import check_position, check_target
from .adapters import ModelAdapter
from .api import AltiLogit, _as_trace, _check_activation, layer_maps_ref
from .fast import auto_block, layer_maps_fast
from .traces import LayerTrace, ModelTrace, SublayerTrace

__all__ = ["alti_logit_row"]


def alti_logit_row(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    position: int = -1,
    activation: str = "silu",
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block: int | None = None,
    chunk: int | None = None,
    precision: str = "highest",
    kernel: str = "torch",
) -> AltiLogit:
    """Row ``position`` of :func:`latim_captum.alti_logit` (same values), in O(N) memory beyond the trace.

    Args:
        model: a supported Mamba model with an LM head, its adapter, or a :class:`ModelTrace`.
        input_ids, inputs_embeds, attention_mask: the inputs (with a model).
        position: the query token (negative counts from the end).
        activation: activation strategy.
        target: the token the row explains (an int or ``[B]``); default the predicted next token at ``position``.
        dtype: compute dtype.
        block: tile side of the fast path (default from free memory).
        chunk: ALTI rows folded into ``w`` per step (default ``4·block``).
        precision: precision of the ``W_o`` GEMM (see :mod:`latim_captum.fast`).
        kernel: tiles of the Mamba sublayers, ``"torch"`` or ``"triton"`` (see
            :func:`latim_captum.fast.layer_maps_fast`; with ``"triton"`` the rows per launch follow free memory).

    Returns:
        :class:`AltiLogit` with ``scores [B, N]``, ``targets [B]``, ``logits [B]``, ``offset [B]``.
    """
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    _check_activation(activation, tr)
    readout = tr.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    bsz, n = tr.shape
    q = check_position(position, n)
    if target is not None and torch.as_tensor(target).dim() > 1:
        raise ValueError(
            f"target for one position must be an int or [batch], got shape {tuple(torch.as_tensor(target).shape)}"
        )
    targets = check_target(target, bsz, n, readout.unembedding.shape[0], readout.logits.argmax(-1))
    targets = targets if targets.dim() == 1 else targets[:, q]
    u = readout.direction(targets) * readout.norm_scale[:, q, None]  # [B, D]
    projection = torch.zeros_like(tr.embeddings)
    projection[:, q] = u
    ssm_layers = [layer for layer in tr.layers if isinstance(layer, LayerTrace)]
    if block is None:
        block = auto_block(ssm_layers[0], precision=precision) if ssm_layers else 64
    chunk = chunk or 4 * block

    def row_maps(layer: SublayerTrace, measure: str, rows: tuple[int, int]) -> Tensor:
        if isinstance(layer, LayerTrace):
            return layer_maps_fast(
                layer,
                activation,
                (measure,),
                projection=projection,
                block=block if kernel == "torch" else None,
                rows=rows,
                precision=precision,
                kernel=kernel,
            )[measure]
        # attention / token-wise / shared-block sublayers of hybrids: the reference path (full maps for this layer,
        # with the embedding columns of a Zamba2 hybrid layer kept: [B, N, 2N])
        maps = layer_maps_ref(layer, activation, (measure,), projection=projection, embedding_columns=True)
        return maps[measure][:, rows[0] : rows[1]]

    # contributions that reach the input tokens straight from the embeddings (a Zamba2 hybrid layer's embedding
    # columns: R^{(l)} = A^x R^{(l-1)} + A^e) bypass the rest of the rollout and are collected here
    from_embeddings = torch.zeros_like(tr.embeddings[..., 0])

    def stream_part(scores: Tensor) -> Tensor:
        if scores.shape[-1] == n:
            return scores
        from_embeddings.add_(scores[..., n:])
        return scores[..., :n]

    def delta_row(layer: SublayerTrace) -> Tensor:
        return stream_part(row_maps(layer, "logit", (q, q + 1))[:, 0])  # [B, N]

    w = delta_row(tr.layers[-1])
    for layer in reversed(tr.layers[:-1]):
        folded = torch.zeros_like(w)
        for r0 in range(0, q + 1, chunk):
            r1 = min(q + 1, r0 + chunk)
            folded += stream_part(torch.einsum("br,brn->bn", w[:, r0:r1], row_maps(layer, "alti", (r0, r1))))
        w = folded + delta_row(layer)
    w = w + from_embeddings
    w[:, q] += (u * tr.embeddings[:, q]).sum(-1)
    offset = readout.target_bias(targets[:, None])[:, 0]
    for layer in tr.layers:
        offset = offset + u @ layer.offset
    logits = readout.logits[:, q].gather(-1, targets[:, None])[:, 0]
    return AltiLogit(scores=w, targets=targets, logits=logits, offset=offset)
