"""ALTI-Logit and the ALTI rollout for one query position (e.g. one generated token) without any ``N × N`` map.

The functions here take a model (or a trace) like :func:`latim_captum.interactions`; the recursion that makes one
row in O(N·d) memory is :mod:`latim_captum.maps.rows` (its docstring has the maths).

The query position defaults to each example's last real token (per the attention mask), so a right-padded batch
is queried where each example's prediction is made; an explicit position on padding is an error.

Example:
    >>> row = alti_logit_row(model, ids)                                           # doctest: +SKIP
    >>> torch.allclose(row.scores.sum(-1), row.logits - row.offset)               # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._queries import query_positions
from ._validation import check_target
from .activations import DEFAULT_ACTIVATION
from .adapters import ModelAdapter
from .api import _checked_trace
from .maps import AltiLogit, logit_row, rollout_row
from .traces import ModelTrace

__all__ = ["alti_logit_row", "alti_rollout_row"]


def _prepare(
    model, input_ids, inputs_embeds, attention_mask, dtype, activation, precision, backend, position, trace_store
):
    """The trace and the query row(s): one int when every example shares it, else ``[B]``."""
    tr = _checked_trace(
        model, input_ids, inputs_embeds, attention_mask, dtype, activation, backend, precision, trace_store
    )
    rows = query_positions(position, tr.mask, *tr.shape)
    return tr, int(rows[0]) if bool((rows == rows[0]).all()) else rows


def alti_logit_row(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    position: int | None = None,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    contrast: int | Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block: int | None = None,
    chunk: int | None = None,
    precision: str = "highest",
    backend: str = "fast",
    trace_store: str = "auto",
) -> AltiLogit:
    """Row ``position`` of :func:`latim_captum.alti_logit` (same values), in O(N) memory beyond the trace.

    Args:
        model: a supported Mamba model with an LM head, its adapter, or a :class:`ModelTrace`.
        input_ids, inputs_embeds, attention_mask: the inputs (with a model).
        position: the query token (negative counts from the end); default each example's last real token.
        activation: activation strategy.
        target: the token the row explains (an int or ``[B]``); default the predicted next token at ``position``.
        contrast: a contrast token (an int or ``[B]``): the row then decomposes ``logit(target) −
            logit(contrast)``.
        dtype: compute dtype (a :class:`ModelTrace` keeps its own; see :func:`latim_captum.interactions`).
        block: tile side of the fast path (default from free memory).
        chunk: ALTI rows folded into ``w`` per step (default ``4·block``).
        precision: precision of the ``W_o`` GEMM (see :mod:`latim_captum.maps.fast`).
        backend: path of the Mamba sublayers (:data:`latim_captum.BACKENDS`): ``"fast"`` (PyTorch tiles, the
            default on every device: O(N·d) memory), ``"triton"`` (its Triton kernels, CUDA; the rows per launch
            follow free memory), ``"ref"`` (materialises ``[B, rows, N, D]`` per row block) or ``"auto"``.
        trace_store: with a model, where the trace's layers are kept: ``"device"``, ``"host"`` (pinned host
            memory, one layer at a time on the device: a trace larger than the GPU, see
            :func:`latim_captum.trace`), or ``"auto"`` (the default: on the device, on the host when the memory
            guard says the device-kept trace does not fit; same values either way).

    Returns:
        :class:`AltiLogit` with ``scores [B, N]``, ``targets [B]``, ``logits [B]``, ``offset [B]``.
    """
    tr, q = _prepare(
        model, input_ids, inputs_embeds, attention_mask, dtype, activation, precision, backend, position, trace_store
    )
    readout = tr.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    bsz, n = tr.shape
    for name, value in (("target", target), ("contrast", contrast)):
        if value is not None and torch.as_tensor(value).dim() > 1:
            raise ValueError(
                f"{name} for one position must be an int or [batch], got shape {tuple(torch.as_tensor(value).shape)}"
            )
    vocab = readout.unembedding.shape[0]
    rows = torch.as_tensor(q, device=readout.logits.device).expand(bsz)
    batch = torch.arange(bsz, device=rows.device)
    predicted = readout.logits.argmax(-1)
    targets = check_target(target, bsz, n, vocab, predicted, per_position=False)[batch, rows]
    contrasts = None if contrast is None else check_target(
        contrast, bsz, n, vocab, predicted, name="contrast", per_position=False
    )[batch, rows]  # fmt: skip
    return logit_row(
        tr, q, targets, contrast=contrasts, activation=activation, block=block, chunk=chunk, precision=precision,
        backend=backend,
    )  # fmt: skip


def alti_rollout_row(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    position: int | None = None,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block: int | None = None,
    chunk: int | None = None,
    precision: str = "highest",
    backend: str = "fast",
    trace_store: str = "auto",
) -> Tensor:
    """Row ``position`` of the ALTI rollout ``R^{(L)} = P^{(L)} ⋯ P^{(1)}`` (:func:`latim_captum.aggregate.rollout`
    of every layer's ALTI map), ``[B, N]``, in O(N) memory beyond the trace; it sums to 1.

    ``w ← P^{(L)}_q``, then ``w ← w P^{(l)}`` for ``l = L − 1 … 1`` (embedding columns of a Zamba2 hybrid layer go
    straight to the result, as in ``R^{(l)} = A^x R^{(l-1)} + A^e``).

    Args:
        model: a supported Mamba model, its adapter, or a :class:`ModelTrace`.
        input_ids, inputs_embeds, attention_mask: the inputs (with a model).
        position: the query token (negative counts from the end); default each example's last real token.
        activation: activation strategy.
        dtype: compute dtype (a :class:`ModelTrace` keeps its own; see :func:`latim_captum.interactions`).
        block: tile side of the fast path (default from free memory).
        chunk: ALTI rows folded into ``w`` per step (default ``4·block``).
        precision: precision of the ``W_o`` GEMM (see :mod:`latim_captum.maps.fast`).
        backend: path of the Mamba sublayers (:data:`latim_captum.BACKENDS`): ``"fast"`` (PyTorch tiles, the
            default on every device: O(N·d) memory), ``"triton"`` (its Triton kernels, CUDA; the rows per launch
            follow free memory), ``"ref"`` (materialises ``[B, rows, N, D]`` per row block) or ``"auto"``.
        trace_store: with a model, where the trace's layers are kept: ``"device"``, ``"host"`` (pinned host
            memory, one layer at a time on the device: a trace larger than the GPU, see
            :func:`latim_captum.trace`), or ``"auto"`` (the default: on the device, on the host when the memory
            guard says the device-kept trace does not fit; same values either way).

    Example:
        >>> row = alti_rollout_row(model, ids, position=-1)                 # doctest: +SKIP
        >>> torch.allclose(row.sum(-1), torch.ones(1))                      # doctest: +SKIP
        True
    """
    tr, q = _prepare(
        model, input_ids, inputs_embeds, attention_mask, dtype, activation, precision, backend, position, trace_store
    )
    return rollout_row(tr, q, activation=activation, block=block, chunk=chunk, precision=precision, backend=backend)
