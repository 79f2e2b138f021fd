"""Every layer of a trace: per-layer maps stacked, the ALTI rollout and ALTI-Logit, each one loop over the layers.

Every front end (the functions of :mod:`latim_captum.api`, the Captum classes, the Inseq methods, the CLI and the
benchmarks) goes through these, so a new backend or measure reaches them all at once. The rollout and ALTI-Logit fold
each layer in as soon as it is made: beyond the result they hold one layer's maps, not ``L``.

A trace of a sharded model (layers on several devices) is computed layer by layer on each layer's device; only the
maps travel, to the device of the embeddings, where the results are returned (:mod:`latim_captum.maps.placement`).

Example:
    >>> maps = stack(tr, ("l2", "alti"), activation="silu_gate")["alti"]          # [B, L, N, N]  # doctest: +SKIP
    >>> res = alti_logit(tr, targets, activation="silu_gate")                    # doctest: +SKIP
    >>> torch.allclose(res.scores.sum(-1), res.logits - res.offset)              # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from latim_captum._validation import check_layers, check_rows
from latim_captum.aggregate import through
from latim_captum.traces import ModelTrace

from .layer import layer_maps
from .placement import PerDevice, layer_device, output_device

__all__ = ["AltiLogit", "stack", "alti_rollout", "alti_logit", "logit_terms", "read_logits"]


class AltiLogit(NamedTuple):
    """ALTI-Logit maps with what their rows must sum to.

    Attributes:
        scores: ``C_ij`` (eq 8), ``[B, N, N]``.
        targets: the token ``w(i)`` each row explains, ``[B, N]``.
        logits: the model's logit of ``w(i)`` at i (recomputed in the compute dtype), ``[B, N]``; with a
            ``contrast``, the logit difference ``logit(w(i)) − logit(c(i))``.
        offset: the part of that logit no token owns (projected out-projection biases and the LM-head bias),
            ``[B, N]``. For an exact decomposition ``scores.sum(-1) == logits - offset``.
        contrast: the contrast token ``c(i)`` of each row (``[B, N]``), or None.
    """

    scores: Tensor
    targets: Tensor
    logits: Tensor
    offset: Tensor
    contrast: Tensor | None = None


def logit_terms(readout, targets: Tensor, contrast: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """What ALTI-Logit projects on, for targets (and contrasts) of any shape ``[...]``: the direction
    ``U_w ⊙ w_f`` (``[..., D]``, before the final norm's per-position scale), the bias the logit carries and the
    token ids the logit is read at.

    The logit is linear in the unembedding row, so the logit difference of a target ``w`` and a contrast ``c`` at the
    same position decomposes exactly on ``U_w − U_c`` (with bias ``b_w − b_c``): contrastive ALTI-Logit is ALTI-Logit
    of that direction.

    Example:
        >>> direction, bias, _ = logit_terms(tr.readout, targets, contrast)      # doctest: +SKIP
    """
    direction = readout.direction(targets)
    bias = readout.target_bias(targets)
    if contrast is not None:
        direction = direction - readout.direction(contrast)
        bias = bias - readout.target_bias(contrast)
    return direction, bias, targets


def read_logits(logits: Tensor, targets: Tensor, contrast: Tensor | None) -> Tensor:
    """The model's logit of ``targets`` (minus that of ``contrast``) from logits ``[..., V]``."""
    out = logits.gather(-1, targets[..., None])[..., 0]
    if contrast is not None:
        out = out - logits.gather(-1, contrast[..., None])[..., 0]
    return out


def stack(
    trace: ModelTrace,
    measures: Sequence[str],
    *,
    activation: str,
    layers: int | Sequence[int] | None = None,
    rows: tuple[int, int] | None = None,
    projection: Tensor | None = None,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
    kernel_config: dict | None = None,
) -> dict[str, Tensor]:
    """Per-layer maps of ``measures`` for ``layers`` (None: all), ``{measure: [B, len(layers), rows, N]}``.

    Each layer's maps are written into one preallocated result per measure (no second copy, as ``torch.stack``
    would make), on the embeddings' device whatever device computed them. Arguments as
    :func:`latim_captum.maps.layer.layer_maps`; maps are per token (a Zamba2 hybrid layer's embedding columns are
    added to its stream columns).
    """
    selected = check_layers(layers, trace.n_layers)
    bsz, n = trace.shape
    first, last = check_rows(rows, n)
    result = {m: trace.embeddings.new_zeros(bsz, len(selected), last - first, n) for m in measures}
    projections = PerDevice(projection)
    for pos, idx in enumerate(selected):
        maps = layer_maps(
            trace.layers[idx],
            activation,
            measures,
            projection=projections.on(layer_device(trace.layers[idx])),
            block_rows=block_rows,
            backend=backend,
            precision=precision,
            rows=rows,
            kernel_config=kernel_config,
        )
        for m in measures:
            result[m][:, pos] = maps[m]
    return result


def alti_rollout(
    trace: ModelTrace,
    *,
    activation: str,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
    kernel_config: dict | None = None,
) -> Tensor:
    """The ALTI rollout ``R^{(L)} = P^{(L)} ⋯ P^{(1)}`` of every layer's ALTI map, ``[B, N, N]``; rows sum to 1.

    A layer with embedding columns (Zamba2's hybrid layers, ``P = [A^x | A^e]``) adds its embedding half directly:
    ``R^{(l)} = A^x R^{(l-1)} + A^e`` (:func:`latim_captum.aggregate.rollout`).
    """
    out = output_device(trace)
    flow = None
    for layer in trace.layers:
        alti = layer_maps(
            layer, activation, ("alti",), block_rows=block_rows, backend=backend, embedding_columns=True,
            precision=precision, kernel_config=kernel_config,
        )["alti"]  # fmt: skip
        flow = through(alti.to(out), flow)
    return flow


def alti_logit(
    trace: ModelTrace,
    targets: Tensor,
    *,
    contrast: Tensor | None = None,
    activation: str,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
    kernel_config: dict | None = None,
) -> AltiLogit:
    """ALTI-Logit (eqs 7-8) of every row for the token ids ``targets`` ``[B, N]``, with the logits and offsets its
    rows sum to.

    ``C = diag(u · x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}`` with ``u_i = U_{w(i)} ⊙ w_f · s_i`` (the target's unembedding
    row through the final norm's fixed scale), ``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i`` and ``R`` the ALTI rollout.
    A layer with embedding columns adds ``Δ^x R^{(l-1)} + Δ^e`` and steps ``R^{(l)} = A^x R^{(l-1)} + A^e``.

    With ``contrast`` (token ids ``[B, N]``) the rows decompose the logit difference
    ``logit(w(i)) − logit(c(i))``: ``u_i = (U_{w(i)} − U_{c(i)}) ⊙ w_f · s_i`` (see :func:`logit_terms`).

    Raises:
        ValueError: the trace has no readout (a model without an LM head).
    """
    readout = trace.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    out = output_device(trace)
    head = readout.unembedding.device  # a sharded model's LM head may live on another device than the embeddings
    at_head = (targets.to(head), None if contrast is None else contrast.to(head))
    direction, offset, _ = logit_terms(readout, *at_head)
    projections = PerDevice(direction * readout.norm_scale[..., None])  # [B, N, D]
    projection = projections.on(out)
    offset = offset.to(out)
    direct = (projection * trace.embeddings).sum(-1)
    bsz, n = direct.shape
    flow = torch.eye(n, dtype=direct.dtype, device=direct.device).expand(bsz, n, n)  # R^{(0)} = I
    scores = torch.diag_embed(direct)
    last = len(trace.layers) - 1
    for idx, layer in enumerate(trace.layers):
        # R^{(L)} is never read: the last layer needs its Δ only, not the ALTI map (its W_o product)
        measures = ("logit",) if idx == last else ("alti", "logit")
        here = projections.on(layer_device(layer))
        maps = layer_maps(
            layer, activation, measures, projection=here, block_rows=block_rows, backend=backend,
            embedding_columns=True, precision=precision, kernel_config=kernel_config,
        )  # fmt: skip
        scores = scores + through(maps["logit"].to(out), flow)
        if idx < last:
            flow = through(maps["alti"].to(out), flow)
        offset = offset + (here @ layer.offset).to(out)
    logits = read_logits(readout.logits, *at_head).to(out)
    contrast = None if contrast is None else contrast.to(out)
    return AltiLogit(scores=scores, targets=targets.to(out), logits=logits, offset=offset, contrast=contrast)
