"""Scalar token-to-token scores from contribution vectors (Table 1) and their aggregation across layers.

All reducers take a block of query rows ``[B, rows, N, D]`` of ``T_i(x_j)`` and return ``[B, rows, N]``, so the
caller never needs more than one row block of vectors alive.

==================  ==================================================================================================
LaTIM (ℓp)          ``C_ij = ‖T_i(x_j)‖_p``  (eq 5)
LaTIM (ALTI)        ``C_ij ∝ [‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1]_+``, ``T'_i(x_j) = T_i(x_j) + δ_ij x_i``  (eq 6)
LaTIM (ALTI-Logit)  ``C_ij = Σ_l Σ_k Δ^{(l)}_{ik} R^{(l-1)}_{kj}``, ``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i``  (eqs 7-8)
==================  ==================================================================================================

**Embedding columns.** A sublayer that also reads the input embeddings (a Zamba2 hybrid layer,
:class:`~latim_captum.traces.SharedBlockTrace`) has ``2N`` contribution vectors per row, ``T_i(x_k)`` then
``T_i(e_k)``. The reducers work on them as they are (ALTI's proximities are normalised jointly over all ``2N``), and
its ``[B, N, 2N]`` maps ``[A^x | A^e]`` enter the aggregation with the embedding half connected straight to the input
tokens: ``R ← A^x R + A^e`` (:func:`rollout`, :func:`alti_logit_combine`). :func:`fold_embedding_columns` adds each
token's two columns for a per-token map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "lp_order",
    "lp_measure",
    "lp_scores",
    "alti_proximity",
    "alti_scores",
    "logit_scores",
    "normalize_rows",
    "fold_embedding_columns",
    "through",
    "rollout",
    "alti_logit_terms",
    "alti_logit_combine",
]


def lp_order(measure: str) -> float | None:
    """The order p of an ℓp measure name (``"l1"``, ``"l2"``, ``"l3.5"``, ``"linf"``), or None for other names.

    Example:
        >>> lp_order("l2"), lp_order("linf"), lp_order("alti")
        (2.0, inf, None)
    """
    if not measure.startswith("l") or measure == "logit":
        return None
    try:
        p = float(measure[1:])
    except ValueError:
        return None
    return p if p >= 1 else None


def lp_measure(p: float) -> str:
    """The measure name of an ℓp norm: ``lp_measure(2.0) == "l2"``, ``lp_measure(inf) == "linf"``."""
    return "linf" if math.isinf(p) else f"l{p:g}"


def lp_scores(contrib: Tensor, p: float = 2.0) -> Tensor:
    """``‖T_i(x_j)‖_p`` over the model dimension (eq 5).

    Example:
        >>> lp_scores(torch.ones(1, 2, 2, 4), p=2)[0, 0, 0].item()
        2.0
    """
    return torch.linalg.vector_norm(contrib, ord=p, dim=-1)


def normalize_rows(scores: Tensor) -> Tensor:
    """Divide each row by its sum; rows summing to 0 stay 0."""
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / torch.where(total > 0, total, torch.ones_like(total)), scores)


def alti_proximity(contrib: Tensor, residual: Tensor, output: Tensor, start: int = 0) -> Tensor:
    """ALTI's unclipped proximities ``‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1``, ``[B, rows, N]`` (arguments as
    :func:`alti_scores`, before its clipping and row normalisation).

    Example:
        >>> t = torch.zeros(1, 1, 2, 3); t[0, 0, 0] = 1.0
        >>> alti_proximity(t, torch.ones(1, 1, 3), t[:, :, 0] + 1.0, start=1)
        tensor([[[3., 3.]]])
    """
    return _proximity(contrib, residual, output, start)[0]


def _proximity(contrib: Tensor, residual: Tensor, output: Tensor, start: int) -> tuple[Tensor, Tensor]:
    rows = contrib.shape[1]
    idx = torch.arange(rows, device=contrib.device)
    with_residual = contrib.clone()
    with_residual[:, idx, start + idx] += residual
    y = output[:, :, None, :]
    # Σ_d (|y| − |y − T'|) == ‖y‖_1 − ‖y − T'‖_1, but exactly 0 for T' = 0 whatever the summation order
    return (y.abs() - (y - with_residual).abs()).sum(-1), with_residual


def alti_scores(contrib: Tensor, residual: Tensor, output: Tensor, start: int = 0) -> Tensor:
    """ALTI (eq 6) for query rows ``[start, start + rows)``: rows are non-negative and sum to 1.

    A row where every clipped proximity is 0 (no ``T'_i(x_j)`` moves ``y_i`` closer; possible with approximate
    strategies or cancelling contributions) falls back to the ℓ1 norms ``‖T'_i(x_j)‖_1``, so that every row stays a
    distribution and the rollout of ALTI-Logit stays conservative.

    Args:
        contrib: ``T_i(x_j)`` for the rows, ``[B, rows, N, D]`` (residual not included), or ``[B, rows, 2N, D]`` with
            embedding columns (the residual goes to the stream column i; rows sum to 1 over all ``2N``).
        residual: ``x_i`` of the rows, ``[B, rows, D]``; added to ``T_i(x_i)`` (the residual is token i's own).
        output: ``y_i`` of the rows (the block output), ``[B, rows, D]``.
        start: index of the first row.

    Example:
        >>> t = torch.zeros(1, 1, 2, 3); t[0, 0, 0] = 1.0          # row i=1: token 0 gives (1,1,1)
        >>> x = torch.ones(1, 1, 3)                                # its residual gives (1,1,1) too
        >>> alti_scores(t, x, t[:, :, 0] + x, start=1)
        tensor([[[0.5000, 0.5000]]])
    """
    proximity, with_residual = _proximity(contrib, residual, output, start)
    scores = torch.relu(proximity)
    degenerate = scores.sum(-1, keepdim=True) <= 0
    if bool(degenerate.any()):
        scores = torch.where(degenerate, torch.linalg.vector_norm(with_residual, ord=1, dim=-1), scores)
    return normalize_rows(scores)


def logit_scores(contrib: Tensor, projection: Tensor) -> Tensor:
    """``Δ_ij = T_i(x_j) · u_i`` (eq 7) with ``u_i`` the unembedding row of row i's target through the final norm.

    Args:
        contrib: ``[B, rows, N, D]``.
        projection: ``u_i`` for the rows, ``[B, rows, D]``.
    """
    return torch.einsum("brjd,brd->brj", contrib, projection)


def fold_embedding_columns(scores: Tensor, n: int, dim: int = -1) -> Tensor:
    """Add the embedding column ``N + k`` to the stream column ``k`` when ``scores`` has ``2N`` entries along ``dim``
    (unchanged with ``N``): a token's total over its two sources.

    Example:
        >>> fold_embedding_columns(torch.tensor([[0.5, 0.1, 0.3, 0.1]]), 2)
        tensor([[0.8000, 0.2000]])
    """
    if scores.shape[dim] == n:
        return scores
    if scores.shape[dim] != 2 * n:
        raise ValueError(f"expected {n} or {2 * n} columns along dim {dim}, got {scores.shape[dim]}")
    return scores.narrow(dim, 0, n) + scores.narrow(dim, n, n)


def through(layer_map: Tensor, flow: Tensor | None) -> Tensor:
    """``A R`` for a ``[B, N, N]`` map; ``A^x R + A^e`` for a ``[B, N, 2N]`` map with embedding columns; R = I for
    ``flow=None``."""
    n = layer_map.shape[-2]
    stream = layer_map[..., :n] if flow is None else layer_map[..., :n] @ flow
    return stream if layer_map.shape[-1] == n else stream + layer_map[..., n:]


def rollout(maps: list[Tensor]) -> Tensor:
    """``R^{(L)} = P^{(L)} ⋯ P^{(1)}`` for per-layer ``[B, N, N]`` maps whose rows sum to 1 (identity for none).

    A ``[B, N, 2N]`` map ``[A^x | A^e]`` (a sublayer with embedding columns) adds its embedding half directly,
    ``R^{(l)} = A^x R^{(l-1)} + A^e``: the embedding ``e_k`` is input token k itself. Rows still sum to 1.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
        >>> rollout([a, a])
        tensor([[[1.0000, 0.0000],
                 [0.7500, 0.2500]]])
    """
    if not maps:
        raise ValueError("rollout needs at least one layer map")
    out = None
    for layer_map in maps:
        out = through(layer_map, out)
    return out


def alti_logit_terms(deltas: Sequence[Tensor], alti_maps: Sequence[Tensor]) -> Iterator[Tensor]:
    """Each layer's term of eq 8, ``Δ^{(l)} R^{(l-1)}`` (``[B, N, N]``), bottom to top, with ``R^{(0)} = I`` and
    ``R^{(l)} = P^{(l)} R^{(l-1)}``: the per-layer ALTI-Logit maps that :func:`alti_logit_combine` sums.

    A sublayer with embedding columns gives ``[B, N, 2N]`` ``Δ = [Δ^x | Δ^e]`` and ALTI map ``[A^x | A^e]``: its term
    is ``Δ^x R^{(l-1)} + Δ^e`` and its rollout step ``R^{(l)} = A^x R^{(l-1)} + A^e`` (see :func:`rollout`).

    Example:
        >>> a, d = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]), torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
        >>> [t[0, 1].tolist() for t in alti_logit_terms([d, d], [a, a])]
        [[2.0, 2.0], [3.0, 1.0]]
    """
    flow = None  # R^{(0)} = I
    for delta, layer_map in zip(deltas, alti_maps):
        yield through(delta, flow)
        flow = through(layer_map, flow)


def alti_logit_combine(deltas: list[Tensor], alti_maps: list[Tensor], direct: Tensor) -> Tensor:
    """ALTI-Logit (eq 8): ``C = Σ_l Δ^{(l)} R^{(l-1)} + diag(direct)``, the terms of :func:`alti_logit_terms` summed.

    Args:
        deltas: per layer ``Δ^{(l)}`` (eq 7), ``[B, N, N]`` (or ``[B, N, 2N]``).
        alti_maps: per layer ALTI maps ``P^{(l)}`` (rows sum to 1), ``[B, N, N]`` (or ``[B, N, 2N]``); ``R^{(0)} = I``.
        direct: the embedding's direct path ``u_i · x_i^{(0)}``, ``[B, N]`` (token i's own, before any layer).
    """
    total = torch.diag_embed(direct)
    for term in alti_logit_terms(deltas, alti_maps):
        total = total + term
    return total
