"""One query row of the ALTI rollout and of ALTI-Logit without any ``N × N`` map (e.g. one generated token).

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

The ALTI rollout's row ``q`` (``R^{(L)}_q``, :func:`rollout_row`) is the same recursion with no Δ:
``w ← P^{(L)}_q``, then ``w ← w P^{(l)}`` down to the first layer.

A sharded model's layers are computed where each lives: ``w`` (``[B, N]``) goes to the layer's device for
``w P^{(l)}`` and the result comes back, so only O(N) per example crosses devices per layer
(:mod:`latim_captum.maps.placement`).

Example:
    >>> row = logit_row(tr, q=5, targets=torch.tensor([7]), activation="silu_gate")   # doctest: +SKIP
    >>> torch.allclose(row.scores.sum(-1), row.logits - row.offset)                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from latim_captum._validation import check_size
from latim_captum.traces import LayerTrace, ModelTrace, SublayerTrace, as_stored

from .all_layers import AltiLogit, logit_terms, read_logits
from .layer import layer_maps
from .options import resolve_backend
from .placement import PerDevice, compute_device, layer_device, output_device
from .tiles import auto_block, free_bytes

__all__ = ["RowStream", "as_query_rows", "logit_row", "rollout_row", "row_total"]


def as_query_rows(q: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """The query row of every example, ``[B]`` long on ``device``, from one int or a ``[B]`` tensor."""
    if isinstance(q, Tensor):
        return q.to(device=device, dtype=torch.long).reshape(batch)
    return torch.full((batch,), int(q), dtype=torch.long, device=device)


class RowStream:
    """Rows of one trace's per-layer maps and the Horner step ``w ← w P^{(l)}`` over rows ``≤ q`` in chunks.

    Each example has its own query row ``q[b]`` (right-padded batches query each example's last real token): a row of
    a map's query row is read for every example at once, one row per distinct ``q`` (a right-padded batch queries
    each example at its own last token: reading the range ``[min q, max q]`` instead would be ``O(B·N²)``), and
    the Horner step runs over the rows ``≤ max q`` (``w`` is zero beyond each example's own ``q[b]``, so the extra
    rows add nothing).

    Contributions that reach the input tokens straight from the embeddings (a Zamba2 hybrid layer's embedding
    columns: ``R^{(l)} = A^x R^{(l-1)} + A^e``) bypass the rest of the recursion and are collected in
    ``from_embeddings``.
    """

    def __init__(
        self,
        tr: ModelTrace,
        q: Tensor,
        activation: str,
        projection: Tensor | None,
        *,
        block: int | None,
        chunk: int | None,
        precision: str,
        backend: str,
    ) -> None:
        check_size("block", block)
        check_size("chunk", chunk)
        self.q, self.activation, self.projections = q, activation, PerDevice(projection)
        self.out = output_device(tr)
        self.q_max = int(q.max())
        self.precision, self.backend = precision, backend
        # tiles sized from the first Mamba layer's shapes and its compute device's free memory; a host-kept trace's
        # layer is read where it is kept (no copy to the device just to size the tiles)
        stored = as_stored(tr.layers)
        first_ssm = next((i for i, layer in enumerate(stored) if isinstance(layer, LayerTrace)), None)
        if block is None and first_ssm is None:
            block = 64
        elif block is None:
            block = auto_block(stored[first_ssm], free_bytes(compute_device(tr, first_ssm)) // 2, precision)
        self.block, self.chunk = block, chunk or 4 * block
        self.n = tr.shape[1]
        self.from_embeddings = torch.zeros_like(tr.embeddings[..., 0])  # [B, N]

    def maps(self, layer: SublayerTrace, measure: str, rows: tuple[int, int]) -> Tensor:
        """Rows ``[start, stop)`` of one map, ``[B, rows, N]`` (``[B, rows, 2N]`` with embedding columns), on the
        layer's device."""
        # attention / token-wise / shared-block sublayers of hybrids take the reference path
        maps = layer_maps(
            layer,
            self.activation,
            (measure,),
            projection=self.projections.on(layer_device(layer)),
            block_rows=self.block if self.tiled(layer) and isinstance(layer, LayerTrace) else None,
            backend=self.backend,
            embedding_columns=True,
            precision=self.precision,
            rows=rows,
        )
        return maps[measure]

    def tiled(self, layer: SublayerTrace) -> bool:
        """Whether the layer's maps take the PyTorch tiles, on the device that holds it."""
        return resolve_backend(self.backend, layer_device(layer)) == "fast"

    def stream_part(self, scores: Tensor) -> Tensor:
        """The stream columns of ``scores`` (``[B, N]`` or ``[B, 2N]``, moved to the output device); its embedding
        columns go to ``from_embeddings``."""
        scores = scores.to(self.out)
        if scores.shape[-1] == self.n:
            return scores
        self.from_embeddings.add_(scores[..., self.n :])
        return scores[..., : self.n]

    def row(self, layer: SublayerTrace, measure: str) -> Tensor:
        """Row ``q[b]`` of one map for every example (stream part), ``[B, N]``: one map row per distinct ``q``."""
        picked = None
        for qv in sorted(set(self.q.tolist())):
            one = self.maps(layer, measure, (qv, qv + 1))[:, 0]  # [B, N(+N)]
            mine = (self.q == qv).to(one.device)[:, None]
            picked = torch.where(mine, one, torch.zeros_like(one) if picked is None else picked)
        return self.stream_part(picked)

    def through(self, w: Tensor, layer: SublayerTrace) -> Tensor:
        """``w P^{(l)}`` (stream part) for ``w`` zero beyond ``q``: ALTI rows ``≤ q`` only, ``chunk`` at a time."""
        folded = torch.zeros_like(w)
        here = w.to(layer_device(layer))  # the row vector travels, not the [B, chunk, N] slabs
        for r0 in range(0, self.q_max + 1, self.chunk):
            r1 = min(self.q_max + 1, r0 + self.chunk)
            folded += self.stream_part(torch.einsum("br,brn->bn", here[:, r0:r1], self.maps(layer, "alti", (r0, r1))))
        return folded


def row_total(tr: ModelTrace, q: int | Tensor, targets: Tensor, contrast: Tensor | None = None) -> AltiLogit:
    """What row ``q`` of an exact ALTI-Logit decomposition sums to, without computing the row: ``logits − offset``
    with the logit (difference) and the offset no token owns, as an :class:`AltiLogit` whose ``scores`` are empty.

    Captum's ``compute_convergence_delta`` needs only this (a forward pass), not the attributions.

    Raises:
        ValueError: the trace has no readout (a model without an LM head).
    """
    readout = tr.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    out = output_device(tr)
    u, offset, logits = _query_terms(tr, q, targets, contrast)
    us = PerDevice(u)
    for layer in as_stored(tr.layers):  # a [D] bias per layer: read where it is kept, no layer copied
        offset = offset + (us.on(layer_device(layer)) @ layer.offset).to(out)
    return AltiLogit(scores=u.new_zeros(tr.shape[0], 0, device=out), targets=targets, logits=logits, offset=offset,
                     contrast=contrast)  # fmt: skip


def _query_terms(tr: ModelTrace, q: int | Tensor, targets: Tensor, contrast: Tensor | None) -> tuple[Tensor, ...]:
    """``u`` of each example's query row (``[B, D]``), its bias offset and logit (``[B]``), on the output device;
    read where the LM head lives (a sharded model's may not be on the embeddings' device)."""
    readout, out = tr.readout, output_device(tr)
    head = readout.unembedding.device
    rows = as_query_rows(q, tr.shape[0], head)
    batch = torch.arange(tr.shape[0], device=head)
    at_head = (targets.to(head), None if contrast is None else contrast.to(head))
    direction, offset, _ = logit_terms(readout, *at_head)
    u = direction * readout.norm_scale[batch, rows, None]
    logits = read_logits(readout.logits[batch, rows], *at_head)
    return u.to(out), offset.to(out), logits.to(out)


def logit_row(
    tr: ModelTrace,
    q: int | Tensor,
    targets: Tensor,
    *,
    contrast: Tensor | None = None,
    activation: str,
    block: int | None = None,
    chunk: int | None = None,
    precision: str = "highest",
    backend: str = "fast",
) -> AltiLogit:
    """Row ``q`` of :func:`latim_captum.maps.all_layers.alti_logit` for the token ids ``targets`` ``[B]`` (same
    values), as :class:`~latim_captum.maps.all_layers.AltiLogit` with ``scores [B, N]``, ``targets``, ``logits [B]``,
    ``offset [B]``, in O(N) memory beyond the trace.

    ``q`` is one row for the whole batch or one per example (``[B]``); ``contrast`` (``[B]``) makes the row
    decompose ``logit(target) − logit(contrast)`` (see :func:`~latim_captum.maps.all_layers.logit_terms`).

    Raises:
        ValueError: the trace has no readout (a model without an LM head).
    """
    total = row_total(tr, q, targets, contrast)
    rows = as_query_rows(q, tr.shape[0], tr.embeddings.device)
    batch = torch.arange(tr.shape[0], device=rows.device)
    u = _query_terms(tr, q, targets, contrast)[0]  # [B, D]
    projection = torch.zeros_like(tr.embeddings)
    projection[batch, rows] = u  # zero off each example's query row: its logit scores there are 0
    stream = RowStream(tr, rows, activation, projection, block=block, chunk=chunk, precision=precision,
                       backend=backend)  # fmt: skip
    w = stream.row(tr.layers[-1], "logit")
    for layer in reversed(tr.layers[:-1]):
        w = stream.through(w, layer) + stream.row(layer, "logit")
    w = w + stream.from_embeddings
    w[batch, rows] += (u * tr.embeddings[batch, rows]).sum(-1)
    return total._replace(scores=w)


def rollout_row(
    tr: ModelTrace,
    q: int | Tensor,
    *,
    activation: str,
    block: int | None = None,
    chunk: int | None = None,
    precision: str = "highest",
    backend: str = "fast",
) -> Tensor:
    """Row ``q`` (one int, or one per example ``[B]``) of :func:`latim_captum.maps.all_layers.alti_rollout`,
    ``[B, N]``, in O(N) memory beyond the trace; it sums to 1."""
    rows = as_query_rows(q, tr.shape[0], tr.embeddings.device)
    stream = RowStream(tr, rows, activation, None, block=block, chunk=chunk, precision=precision, backend=backend)
    w = stream.row(tr.layers[-1], "alti")
    for layer in reversed(tr.layers[:-1]):
        w = stream.through(w, layer)
    return w + stream.from_embeddings
