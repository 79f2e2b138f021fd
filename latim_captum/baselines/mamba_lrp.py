"""MambaLRP (Jafari et al., NeurIPS 2024): Layer-wise Relevance Propagation for Mamba as Gradient×Input on a
forward pass whose non-conservative parts are detached.

With the rules of :mod:`latim_captum.baselines.replay` (``lrp=True``: RMSNorm denominators detached; SiLU as
``x·σ(x).detach()``; Δ, B, C detached; half rule ``½(y⊙g) + ½(y⊙g).detach()`` on the output gate), every block
satisfies ``J(x)·x = F(x)`` for its modified Jacobian ``J`` up to its biases, so relevance is conserved layer by
layer. The relevance of input token j for the prediction at position i (target ``w(i)``) is::

    R_{i,j} = Σ_D x^{(0)}_j ⊙ ∂̃ logit_{w(i)}(i) / ∂x^{(0)}_j          (∂̃: gradient through the modified forward)

Conservation: ``Σ_j R_{i,j} = logit_{w(i)}(i) − Σ_b b · ∂̃logit/∂b``, where b runs over the additive biases, which
absorb relevance and pass none to tokens: the in-projection bias (if any), the conv bias (Mamba-1 and Mamba-2
default to one), the out-projection bias (if any) and the LM-head bias (if any). The Δ bias (``dt_proj.bias`` /
``dt_bias``) sits inside the detached Δ and takes nothing. With those biases zero, ``Σ_j R_{i,j}`` equals the logit
up to rounding.

The paper defines MambaLRP for Mamba-1 (and FalconMamba, whose extra RMSNorms act on the detached Δ, B, C). The
rules extend to Mamba-2 without new choices: its SSD is linear in x once Δ, B, C are detached, its gated RMSNorm
is a gate (half rule) followed by an RMSNorm (detached denominator). This extension is ours and conserves
relevance in the same way (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from latim_captum._validation import check_size
from latim_captum.adapters import ModelAdapter

from ._common import group_score, model_inputs, query_rows, replicate_rows, resolve_targets
from .replay import check_replay, replay_logits

__all__ = ["mamba_lrp"]


def mamba_lrp(
    model: nn.Module | ModelAdapter,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    layers: object = None,
    target: int | Sequence[int] | Tensor | None = None,
    position: int | None = None,
    dtype: torch.dtype = torch.float32,
    row_batch: int = 32,
) -> Tensor:
    """MambaLRP relevance ``R[b, i, j]`` of input token j for the target logit at position i.

    Args:
        model: a Hugging Face Mamba / FalconMamba / Mamba2 model with an LM head, or its adapter.
        input_ids: ``[B, N]`` token ids (or ``inputs_embeds``: ``[B, N, D]``).
        attention_mask: ``[B, N]`` padding mask (padded rows are 0; padded tokens get no relevance from others).
        layers: must be None: relevance is propagated through the whole model.
        target: token whose logit row i explains: an int, ``[B]`` or ``[B, N]``; default the predicted next token.
        position: compute only this query row (one backward pass instead of N).
        dtype: compute dtype of the replayed forward (float32 or float64).
        row_batch: query rows explained per backward pass: the input is replicated once per row, so one pass
            gives every row of the group (more memory, far fewer passes; rows are independent, so the values are
            those of one pass per row).

    Returns:
        ``[B, N, N]`` (zero above the diagonal), or ``[B, N]`` (row ``position``) when ``position`` is given.

    Raises:
        ValueError: ``layers`` is not None.
        NotImplementedError: a model family without a replay.

    Example:
        >>> rel = mamba_lrp(model, ids, position=-1)     # doctest: +SKIP
        >>> rel.sum(-1)                                  # ≈ the target logit minus its bias share  # doctest: +SKIP
    """
    if layers is not None:
        raise ValueError(f"mamba_lrp explains the whole model; layers must be None, got {layers!r}")
    check_size("row_batch", row_batch)
    adapter, embeds, mask = model_inputs(model, input_ids, inputs_embeds, attention_mask, dtype, "mamba_lrp")
    bsz, n = embeds.shape[:2]
    rows = query_rows(position, n, mask)
    with torch.no_grad():
        replayed = replay_logits(adapter, embeds, mask, lrp=True)
    check_replay(adapter, embeds, mask, replayed)  # the LRP rules change no forward value: these are the logits
    targets = resolve_targets(target, replayed)
    out = embeds.new_zeros(bsz, len(rows), n)
    for g0 in range(0, len(rows), row_batch):
        group = rows[g0 : g0 + row_batch]
        r = len(group)
        with torch.enable_grad():
            leaf, rep_mask = replicate_rows(embeds, mask, r)  # one copy per query row: one backward for them all
            logits = replay_logits(adapter, leaf, rep_mask, lrp=True).view(bsz, r, n, -1)
            (grad,) = torch.autograd.grad(group_score(logits, group, targets), leaf)
        out[:, g0 : g0 + r] = (grad * leaf).sum(-1).detach().view(bsz, r, n)
    if mask is not None:
        out = out * mask[:, rows, None].to(out.dtype)
    return out[:, 0] if position is not None else out
