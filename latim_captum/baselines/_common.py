"""Shared plumbing of the baselines: inputs to a trace or to embeddings, targets, rows, normalisations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from latim_captum._model_state import check_grad_mode
from latim_captum._queries import check_not_padding
from latim_captum._validation import check_compute_dtype, check_model_inputs, check_position, check_target
from latim_captum.adapters import ModelAdapter, get_adapter
from latim_captum.adapters.base import warn_biased_left_padding
from latim_captum.api import _as_trace
from latim_captum.traces import ModelTrace

__all__ = [
    "as_trace",
    "model_inputs",
    "resolve_targets",
    "query_rows",
    "replicate_rows",
    "group_score",
    "row_minmax",
]


def as_trace(model_or_trace, input_ids, inputs_embeds, attention_mask, dtype: torch.dtype) -> ModelTrace:
    """A :class:`ModelTrace` from a trace (inputs must then be None) or from a model and its inputs."""
    # a finished trace is checked as LaTIM's front ends check it: made from the model as it is, in a dtype that meets
    # the request
    tr = _as_trace(model_or_trace, input_ids, inputs_embeds, attention_mask, dtype)
    if any(kind not in ("mamba1", "mamba2") for kind in tr.kinds):
        raise NotImplementedError(
            f"the Mamba baselines are defined for pure Mamba models; this trace has sublayers {sorted(set(tr.kinds))}"
        )
    return tr


def model_inputs(
    model: nn.Module | ModelAdapter,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    attention_mask: Tensor | None,
    dtype: torch.dtype,
    method: str,
) -> tuple[ModelAdapter, Tensor, Tensor | None]:
    """Adapter, embeddings ``x^{(0)}`` in ``dtype`` (a fresh leaf that requires grad) and the checked mask.

    Raises:
        TypeError: a :class:`ModelTrace` (gradient methods need the model), or a bad compute dtype.
    """
    if isinstance(model, ModelTrace):
        raise TypeError(f"{method} differentiates through the model: pass the model, not a ModelTrace")
    check_grad_mode(method)
    check_compute_dtype(dtype)
    adapter = get_adapter(model)
    input_ids, inputs_embeds, attention_mask = check_model_inputs(adapter, input_ids, inputs_embeds, attention_mask)
    warn_biased_left_padding(adapter, attention_mask)  # as a trace does: the replays never trace the model
    with torch.no_grad():
        embeds = adapter.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
    return adapter, embeds.detach().to(dtype).requires_grad_(True), attention_mask


def resolve_targets(target, logits: Tensor) -> Tensor:
    """Per-position target ids ``[B, N]``: ``target`` checked, or the predicted next token at each position."""
    bsz, n, vocab = logits.shape
    return check_target(target, bsz, n, vocab, logits.detach().argmax(-1))


def query_rows(position: int | None, seq_len: int, mask: Tensor | None = None) -> list[int]:
    """The query rows to compute: every row, or only ``position`` (negative allowed).

    Raises:
        ValueError: ``position`` is out of range, or it points at a padding token of some example (``mask``).
    """
    if position is None:
        return list(range(seq_len))
    row = check_position(position, seq_len)
    if mask is not None:
        check_not_padding(torch.full((mask.shape[0],), row, dtype=torch.long), mask, given=position)
    return [row]


def replicate_rows(embeds: Tensor, mask: Tensor | None, copies: int) -> tuple[Tensor, Tensor | None]:
    """``copies`` copies of every example, ``[B·copies, N, D]`` as a fresh leaf that requires grad, and the mask
    repeated alike: copy k of example b is row ``b·copies + k``, so one backward pass can explain ``copies`` query
    rows at once (copies are independent; the score of copy k reads only its row)."""
    bsz, n, width = embeds.shape
    leaf = embeds.detach()[:, None].expand(bsz, copies, n, width).reshape(bsz * copies, n, width)
    rep_mask = None if mask is None else mask[:, None].expand(bsz, copies, n).reshape(bsz * copies, n)
    return leaf.clone().requires_grad_(True), rep_mask


def group_score(logits: Tensor, group: Sequence[int], targets: Tensor) -> Tensor:
    """``Σ_b Σ_k logit_{target[b, i_k]}(copy k, row i_k)`` for query rows ``group = [i_0, i_1, …]`` of replicated
    logits ``[B, copies ≥ len(group), N, V]``: its gradient holds, in copy k, row ``i_k``'s gradient alone."""
    idx = torch.tensor(list(group), device=logits.device)
    picked = logits[:, torch.arange(len(group), device=logits.device), idx]  # [B, g, V]: copy k at its row
    return picked.gather(-1, targets[:, idx, None]).sum()


def row_minmax(scores: Tensor, valid: Tensor, dims: Sequence[int]) -> Tensor:
    """Min-max normalise ``scores`` over ``dims`` using only entries where ``valid``; invalid entries become 0.

    A group whose valid entries are all equal (zero range) maps them to 1: every entry is the maximum.
    """
    big = torch.finfo(scores.dtype).max
    low = torch.where(valid, scores, torch.full_like(scores, big)).amin(dim=tuple(dims), keepdim=True)
    high = torch.where(valid, scores, torch.full_like(scores, -big)).amax(dim=tuple(dims), keepdim=True)
    span = high - low
    flat = span <= 0
    normed = (scores - low) / torch.where(flat, torch.ones_like(span), span)
    normed = torch.where(flat, torch.ones_like(normed), normed)
    return torch.where(valid, normed, torch.zeros_like(normed))
