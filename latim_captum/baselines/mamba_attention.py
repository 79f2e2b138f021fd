"""Mamba-Attention (Ali et al., 2024, "The Hidden Attention of Mamba Models"): the implicit attention of each layer.

The SSM of a layer mixes tokens as ``v_i = Σ_s M_{i,s} ⊙ φ_s`` (plus the D skip), with per channel c (eq 15 of
LaTIM, eq 12 of Ali et al.)::

    M_{i,s,c} = C_i^T ( Π_{t=s+1}^{i} exp(Δ_{t,c} A_c) ) Δ_{s,c} B_s        (s ≤ i; 0 above the diagonal)

(Mamba-2: one scalar decay per head, ``M_{i,s,h} = (C_i·B_s) exp(Σ_t Δ_{t,h} A_h) Δ_{s,h}``). The conv, the D skip
and the output gate are not part of it, as in the original. The map of a layer is

    P_{i,j} = mean_c  minmax_{(c, j' ≤ i)}( M_{i,j,c} )          (``normalize="minmax"``, default)
    P_{i,j} = mean_c  M_{i,j,c}                                   (``normalize="none"``)

Choices where the paper leaves room, taken from the reference code (``vim/xai_utils.py: generate_raw_attn``): no
absolute value; the min-max normalisation runs jointly over channels and source tokens of the explained row (the
reference computes one query row and normalises that row's ``[channels, tokens]`` block), so that computing a
single row gives the same values as the full map; a row whose entries are all equal maps them to 1. Mamba-1
averages over its d_inner channels; Mamba-2 over its heads (its channels repeat their head's matrix, so the channel
and head means agree). Padded rows and columns are 0.

``M`` itself is eq 15 exactly, diagonal included (Mamba-1's factorised around anchors,
:func:`latim_captum.ssm.hidden_attention_anchored`, the same values). The reference's ``compute_middle_attn_vector``
differs there: it fills only ``s < i`` (no diagonal) and its decay product stops one step early (it leaves out
``exp(Δ_i A)`` of the query step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from latim_captum._validation import check_layers
from latim_captum.adapters import ModelAdapter
from latim_captum.decompose import default_block_rows, iter_row_blocks
from latim_captum.ssm import hidden_attention_anchored
from latim_captum.traces import LayerTrace, Mamba2SSM, ModelTrace

from ._common import as_trace, query_rows, row_minmax

__all__ = ["NORMALIZATIONS", "mamba_attention", "attention_rows"]

NORMALIZATIONS: tuple[str, ...] = ("minmax", "none")


def _check_normalize(normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return normalize


def attention_rows(
    layer: LayerTrace, start: int, stop: int, *, normalize: str = "minmax", positive: bool = False
) -> Tensor:
    """Rows ``[start, stop)`` of one layer's channel-averaged hidden attention, ``[B, rows, N]`` (see module doc).

    Args:
        layer: the layer trace (its fixed Δ, A, B, C).
        start, stop: query rows.
        normalize: ``"minmax"`` (per row over channels and causal source tokens) or ``"none"``.
        positive: clamp ``M`` at 0 before normalising (Mamba-Attribution's ``M^+``).
    """
    mixing = hidden_attention_anchored(layer.ssm, start, stop)  # [B, r, N, d]
    if isinstance(layer.ssm, Mamba2SSM):
        mixing = mixing[..., :: layer.ssm.head_dim]  # one column per head
    if positive:
        mixing = mixing.clamp(min=0)
    bsz, rows, n, _ = mixing.shape
    i = torch.arange(start, stop, device=mixing.device)[:, None]
    j = torch.arange(n, device=mixing.device)[None, :]
    valid = (j <= i).expand(bsz, rows, n)
    if layer.mask is not None:
        keep = layer.mask.bool()
        valid = valid & keep[:, start:stop, None] & keep[:, None, :]
    valid = valid[..., None].expand_as(mixing)
    if normalize == "minmax":
        mixing = row_minmax(mixing, valid, dims=(2, 3))
    else:
        mixing = torch.where(valid, mixing, torch.zeros_like(mixing))
    return mixing.mean(-1)


def layer_attention(layer: LayerTrace, rows: list[int], normalize: str, positive: bool = False) -> Tensor:
    """The given query rows (all rows, or one) of a layer's map, ``[B, len(rows), N]``."""
    n = layer.residual.shape[1]
    if len(rows) == 1:
        return attention_rows(layer, rows[0], rows[0] + 1, normalize=normalize, positive=positive)
    blocks = iter_row_blocks(n, default_block_rows(layer))
    return torch.cat([attention_rows(layer, a, b, normalize=normalize, positive=positive) for a, b in blocks], dim=1)


def mamba_attention(
    model_or_trace: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    layers: int | Sequence[int] | None = None,
    target: object = None,
    position: int | None = None,
    normalize: str = "minmax",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mamba-Attention maps per layer: ``P[b, l, i, j]`` = channel-averaged hidden attention of query i on token j.

    Args:
        model_or_trace: a supported Mamba model, its adapter, or a :class:`ModelTrace` (then pass no inputs).
        input_ids: ``[B, N]`` token ids (or ``inputs_embeds``: ``[B, N, D]``).
        attention_mask: ``[B, N]`` padding mask.
        layers: layer indices (None = all; negatives allowed).
        target: unused (the map does not depend on a prediction); accepted for a uniform signature.
        position: compute only this query row (negative allowed).
        normalize: ``"minmax"`` (the reference's per-row min-max, default) or ``"none"`` (raw channel mean).
        dtype: compute dtype of the trace (float32 or float64); a :class:`ModelTrace` keeps its own (a float64
            request for a float32 trace is an error).

    Returns:
        ``[B, len(layers), N, N]`` (lower-triangular), or ``[B, len(layers), N]`` (row ``position``) when
        ``position`` is given.

    Example:
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> mamba_attention(model, torch.tensor([[1, 5, 7, 2]])).shape
        torch.Size([1, 2, 4, 4])
    """
    _check_normalize(normalize)
    tr = as_trace(model_or_trace, input_ids, inputs_embeds, attention_mask, dtype)
    selected = check_layers(layers, tr.n_layers)
    rows = query_rows(position, tr.shape[1], tr.mask)
    out = tr.embeddings.device  # a sharded model's layers are read where they live; their maps come here
    maps = torch.stack([layer_attention(tr.layers[idx], rows, normalize).to(out) for idx in selected], dim=1)
    return maps[:, :, 0] if position is not None else maps
