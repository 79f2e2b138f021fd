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

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from latim_captum._validation import check_layers, check_rows, check_size
from latim_captum.aggregate import through
from latim_captum.traces import ModelTrace, SublayerTrace

from .layer import layer_maps
from .placement import PerDevice, layer_device, output_device

__all__ = [
    "AltiLogit",
    "AltiLogitLayers",
    "stack",
    "alti_rollout",
    "alti_logit",
    "alti_logit_layers",
    "layer_share",
    "logit_terms",
    "read_logits",
]


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
    check_size("block_rows", block_rows)
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
    check_size("block_rows", block_rows)
    out = output_device(trace)
    flow = None
    for layer in trace.layers:
        alti = layer_maps(
            layer, activation, ("alti",), block_rows=block_rows, backend=backend, embedding_columns=True,
            precision=precision, kernel_config=kernel_config,
        )["alti"]  # fmt: skip
        flow = through(alti.to(out), flow)
    return flow


class AltiLogitLayers(NamedTuple):
    """Per-layer ALTI-Logit: each layer's term of eq 8 apart, with the embedding term and what everything sums to.

    Attributes:
        scores: ``Δ^{(l)} R^{(l-1)}`` of the requested layers, ``[B, len(layers), N, N]``; row i of layer l sums to
            that layer's share of the logit, ``u_i · (mixer_output_i − offset^{(l)})``.
        embedding: the direct term ``u_i · x^{(0)}_i`` (token i's own, on the diagonal of eq 8), ``[B, N]``.
        layers: the layer indices of ``scores`` (non-negative).
        layer_totals: what each row of ``scores`` sums to for an exact decomposition, read from the model's own
            sublayer output: ``u_i · (mixer_output^{(l)}_i − offset^{(l)})``, ``[B, len(layers), N]``.
        targets, logits, offset, contrast: as in :class:`AltiLogit`. Over *all* layers,
            ``scores.sum((1, 3)) + embedding == logits − offset`` for an exact decomposition.
    """

    scores: Tensor
    embedding: Tensor
    layers: list[int]
    layer_totals: Tensor
    targets: Tensor
    logits: Tensor
    offset: Tensor
    contrast: Tensor | None = None


def _readout_projection(
    trace: ModelTrace, targets: Tensor, contrast: Tensor | None
) -> tuple[PerDevice, Tensor, tuple[Tensor, Tensor | None]]:
    """``u_i`` (``[B, N, D]``, through the final norm's fixed scale) for every device that asks, the logit's bias
    part (``[B, N]``, on the output device) and the target / contrast ids on the LM head's device (a sharded model's
    head may live elsewhere than its embeddings)."""
    readout = trace.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    head = readout.unembedding.device
    at_head = (targets.to(head), None if contrast is None else contrast.to(head))
    direction, bias, _ = logit_terms(readout, *at_head)
    return PerDevice(direction * readout.norm_scale[..., None]), bias.to(output_device(trace)), at_head


def layer_share(layer: SublayerTrace, projection: Tensor) -> Tensor:
    """A sublayer's share of the logit, ``u_i · (mixer_output_i − offset)`` (``[...]`` for ``projection``
    ``[..., D]`` over the rows of ``layer``): what its per-layer ALTI-Logit row sums to when the decomposition is
    exact, from the model's own sublayer output."""
    return (projection * (layer.mixer_output - layer.offset)).sum(-1)


def _layer_logit_terms(
    trace: ModelTrace, projections: PerDevice, *, activation: str, path: dict, wanted: set[int] | None = None
) -> Iterator[tuple[Tensor | None, Tensor]]:
    """Each layer's ALTI-Logit term ``Δ^{(l)} R^{(l-1)}`` (``[B, N, N]``; None for a layer not in ``wanted``) and its
    offset ``u_i · offset^{(l)}`` (``[B, N]``), bottom to top, on the output device; each layer's maps are made where
    its trace lives and the rollout ``R`` is stepped as the layers go (one layer's maps held at a time). A layer
    computes only what is read: its Δ if wanted, its ALTI map if a wanted layer lies above it."""
    out = output_device(trace)
    bsz, n = trace.shape
    flow = torch.eye(n, dtype=trace.embeddings.dtype, device=out).expand(bsz, n, n)  # R^{(0)} = I
    # R^{(top)} is never read: the top wanted layer needs its Δ only, not its ALTI map (its W_o product)
    top = len(trace.layers) - 1 if wanted is None else max(wanted, default=-1)
    for idx, layer in enumerate(trace.layers):
        term_read, flow_read = wanted is None or idx in wanted, idx < top
        measures = ("alti",) * flow_read + ("logit",) * term_read
        here = projections.on(layer_device(layer))
        if not measures:  # above the top wanted layer: its offset only
            yield None, (here @ layer.offset).to(out)
            continue
        maps = layer_maps(layer, activation, measures, projection=here, embedding_columns=True, **path)
        yield (through(maps["logit"].to(out), flow) if term_read else None), (here @ layer.offset).to(out)
        if flow_read:
            flow = through(maps["alti"].to(out), flow)


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
    check_size("block_rows", block_rows)
    projections, offset, at_head = _readout_projection(trace, targets, contrast)
    out = output_device(trace)
    scores = torch.diag_embed((projections.on(out) * trace.embeddings).sum(-1))
    path = {"block_rows": block_rows, "backend": backend, "precision": precision, "kernel_config": kernel_config}
    for term, layer_offset in _layer_logit_terms(trace, projections, activation=activation, path=path):
        scores = scores + term
        offset = offset + layer_offset
    logits = read_logits(trace.readout.logits, *at_head).to(out)
    contrast = None if contrast is None else contrast.to(out)
    return AltiLogit(scores=scores, targets=targets.to(out), logits=logits, offset=offset, contrast=contrast)


def alti_logit_layers(
    trace: ModelTrace,
    targets: Tensor,
    *,
    contrast: Tensor | None = None,
    layers: int | Sequence[int] | None = None,
    activation: str,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
    kernel_config: dict | None = None,
) -> AltiLogitLayers:
    """Per-layer ALTI-Logit: the terms ``Δ^{(l)} R^{(l-1)}`` of eq 8 one layer at a time, ``[B, len(layers), N, N]``.

    Eq 8 sums them (with the embedding term ``diag(u · x^{(0)})``): :func:`alti_logit` is
    ``diag(embedding) + scores.sum(1)`` over all layers. Apart, they show which layer moves the target logit and
    from which input tokens (through the rollout ``R^{(l-1)}`` of the layers *below*): row i of layer l sums to
    ``u_i · (mixer_output^{(l)}_i − offset^{(l)})``, that layer's share of the logit. Every layer is computed (the
    rollout needs those below); ``layers`` keeps some. Arguments otherwise as :func:`alti_logit`.

    Example:
        >>> res = alti_logit_layers(tr, targets, activation="silu_gate")           # doctest: +SKIP
        >>> torch.allclose(res.scores.sum((1, 3)) + res.embedding, res.logits - res.offset)  # doctest: +SKIP
        True
    """
    check_size("block_rows", block_rows)
    selected = check_layers(layers, trace.n_layers)
    projections, offset, at_head = _readout_projection(trace, targets, contrast)
    out = output_device(trace)
    bsz, n = trace.shape
    scores = trace.embeddings.new_zeros(bsz, len(selected), n, n)
    path = {"block_rows": block_rows, "backend": backend, "precision": precision, "kernel_config": kernel_config}
    terms = _layer_logit_terms(trace, projections, activation=activation, path=path, wanted=set(selected))
    for idx, (term, layer_offset) in enumerate(terms):
        for pos in (p for p, chosen in enumerate(selected) if chosen == idx):  # a layer may be asked twice
            scores[:, pos] = term
        offset = offset + layer_offset
    shares = [layer_share(trace.layers[idx], projections.on(layer_device(trace.layers[idx]))) for idx in selected]
    return AltiLogitLayers(
        scores=scores,
        embedding=(projections.on(out) * trace.embeddings).sum(-1),
        layers=selected,
        layer_totals=torch.stack([share.to(out) for share in shares], dim=1),
        targets=targets.to(out),
        logits=read_logits(trace.readout.logits, *at_head).to(out),
        offset=offset,
        contrast=None if contrast is None else contrast.to(out),
    )
