"""The readable reference engine: one sublayer's maps from row blocks of materialised ``T_i(x_j)``.

Every tiled path (:func:`latim_captum.maps.fast.layer_maps_fast`) is tested against :func:`layer_maps_ref`, the
``_ref`` twin with the same arguments, as mamba-ssm pairs each kernel with a plain PyTorch ``_ref``.

Example:
    >>> maps = layer_maps_ref(trace.layers[0], "silu", ("l2", "alti"))      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from latim_captum._precision import fp32_math
from latim_captum._validation import check_rows, check_size
from latim_captum.aggregate import alti_scores, fold_embedding_columns, logit_scores, lp_order, lp_scores
from latim_captum.decompose import iter_row_blocks, sublayer_block_rows, sublayer_contributions, sublayer_shares
from latim_captum.traces import SublayerTrace, has_embedding_columns

from .options import check_measures

__all__ = ["layer_maps_ref"]


def layer_maps_ref(
    layer: SublayerTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block_rows: int | None = None,
    embedding_columns: bool = False,
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Several ``[B, N, N]`` maps of one sublayer from a single pass over row blocks of ``T_i(x_j)``: the reference.

    ``ℓp``: ``C_ij = ‖T_i(x_j)‖_p`` (eq 5); ALTI: ``C_ij ∝ [‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1]_+`` with
    ``T'_i(x_j) = T_i(x_j) + δ_ij x_i`` (eq 6); logit: ``Δ_ij = T_i(x_j) · u_i`` (eq 7).

    A Zamba2 hybrid layer (:class:`~latim_captum.traces.SharedBlockTrace`) has two contribution vectors per source
    token k, from its stream ``x_k`` and from its embedding ``e_k``. By default its maps are per token: ℓp of the
    token's total vector ``T_i(x_k) + T_i(e_k)``; ALTI and logit add the token's two columns (ALTI's proximities are
    normalised jointly over all ``2N`` vectors, so rows still sum to 1; Δ is linear, so both readings agree). With
    ``embedding_columns=True`` its maps keep both, ``[B, N, 2N]`` (stream columns, then embedding columns: what
    the rollout of ALTI-Logit needs); other sublayers are unaffected.

    Args:
        layer: the sublayer trace (Mamba, attention, MLP/MoE, parallel or shared-block).
        activation: activation strategy for Mamba layers (see :mod:`latim_captum.activations`).
        measures: any of ``"l1"``, ``"l2"`` (any ``"l<p>"``, ``"linf"``), ``"alti"``, ``"logit"`` (eq 7's Δ, needs
            ``projection``).
        projection: ``u_i`` per position, ``[B, N, D]`` (for ``"logit"``).
        block_rows: query rows per block (default: from a fixed memory budget).
        embedding_columns: keep the embedding columns of a sublayer that has them.
        rows: only query rows ``[start, stop)``: the maps are then ``[B, stop − start, N]``.
    """
    check_measures(measures)
    check_size("block_rows", block_rows)
    if "logit" in measures and projection is None:
        raise ValueError("measure 'logit' needs a projection")
    first, last = check_rows(rows, layer.residual.shape[1])
    with fp32_math():
        return _layer_maps_ref(layer, activation, measures, projection, block_rows, embedding_columns, first, last)


def _layer_maps_ref(
    layer, activation, measures, projection, block_rows, embedding_columns, first, last
) -> dict[str, Tensor]:
    bsz, n, _ = layer.residual.shape
    cols = 2 * n if embedding_columns and has_embedding_columns(layer) else n
    shares = sublayer_shares(layer, activation)
    out = {m: layer.residual.new_zeros(bsz, last - first, cols) for m in measures}
    output = layer.block_output
    for start, stop in iter_row_blocks(last - first, block_rows or sublayer_block_rows(layer)):
        start, stop = first + start, first + stop
        o0, o1 = start - first, stop - first
        contrib = sublayer_contributions(layer, activation, start, stop, shares=shares)
        for m in measures:
            if lp_order(m) is not None:
                vectors = contrib if cols == contrib.shape[2] else fold_embedding_columns(contrib, n, dim=2)
                out[m][:, o0:o1] = lp_scores(vectors, p=lp_order(m))
                continue
            if m == "alti":
                scores = alti_scores(contrib, layer.residual[:, start:stop], output[:, start:stop], start)
            else:  # "logit"
                scores = logit_scores(contrib, projection[:, start:stop])
            out[m][:, o0:o1] = scores if cols == scores.shape[-1] else fold_embedding_columns(scores, n)
    return out
