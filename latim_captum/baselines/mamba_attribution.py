"""Mamba-Attribution (Ali et al., 2024): gradient-weighted hidden attention, aggregated over layers with rollout.

For the prediction at query position i (target logit ``y = logit_{w(i)}(i)``), each selected layer l gives a map
``Ã^{(l)}`` over the rows ``i' ≤ i``; the maps are rolled out with the residual identity (Abnar & Zuidema)::

    Â^{(l)} = rownorm(Ã^{(l)} + I)          R = Â^{(l_last)} ⋯ Â^{(l_first)}          map[i, :] = R[i, :]

Two definitions of ``Ã^{(l)}``:

``gradient="hidden"`` (default): the reference code (``vim/xai_utils.py: generate_mamba_attr``). It weights the
positive, row-min-max-normalised, channel-averaged hidden attention (:func:`attention_rows` with ``positive=True``)
column-wise by a per-token saliency of the block's input hidden states ``x^{(l-1)}``::

    s^{(l)}_j = minmax_{j ≤ i}( max_D (∂y/∂x^{(l-1)}_j)^+ )            Ã^{(l)}_{i',j} = P^{+(l)}_{i',j} · s^{(l)}_j

The reference explains one (class-token) row; for a causal LM we use each row's own target, so row i of the map
needs the gradient of ``y_i`` (one backward pass per row) and the rows ``i' ≤ i`` of every layer. The gradient is
the model's own (its autograd forward), so every adapter is supported.

``gradient="attention"``: Chefer et al.'s Transformer-Attribution rule applied to the hidden attention, the form
the paper describes: ``Ã^{(l)} = mean_c (∂y/∂M^{(l)} ⊙ M^{(l)})^+`` (mean over channels; Mamba-2: over heads, with
``∂y/∂M`` taken per head). ``∂y/∂M`` is the total derivative (through every later layer, Δ, B and C included) of
a differentiable replay of the forward (:mod:`latim_captum.baselines.replay`) where each layer's token mixing is
``Σ_s M_{i,s} ⊙ φ_s``; the replay reproduces the model's logits. Hugging Face Mamba / FalconMamba / Mamba2 only.
``Ã`` has the scale of a logit gradient times ``M``, usually far below 1, so ``rownorm(Ã + I)`` is close to the
identity (mean diagonal ≈ 0.999 on tiny models): Chefer's rollout as defined, without the ``"hidden"`` variant's
min-max normalisation.

How this differs from the reference code: ``generate_mamba_attr`` explains one (class-token) row and keeps one
fused vector per layer, which its rollout broadcasts into every row of the layer's matrix (``[1, N] + I``); here
each row ``i'`` of a layer's matrix is that row's own hidden attention (``P^{+(l)}_{i', :}``), the causal-LM
reading of the same rule. On 4-layer tiny models the two differ by up to 0.04 per entry.

In both, entries above the diagonal and padded rows/columns are 0 and every computed row sums to 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks, eval_mode
from latim_captum._validation import check_size, rollout_layers
from latim_captum.adapters import ModelAdapter
from latim_captum.adapters.base import _first_tensor
from latim_captum.aggregate import normalize_rows
from latim_captum.ssm import hidden_attention_anchored
from latim_captum.traces import Mamba2SSM, SSMParams

from ._common import (
    as_trace,
    group_score,
    model_inputs,
    query_rows,
    replicate_rows,
    resolve_targets,
    row_minmax,
)
from .mamba_attention import layer_attention
from .replay import check_replay, replay_logits

__all__ = ["GRADIENTS", "mamba_attribution", "rollout_row"]

GRADIENTS: tuple[str, ...] = ("hidden", "attention")


def rollout_row(maps: list[Tensor], row: int) -> Tensor:
    """Row ``row`` of ``rownorm(Ã_L + I) ⋯ rownorm(Ã_1 + I)`` for maps ``[B, r, r]`` (``r > row``), ``[B, r]``.

    Example:
        >>> rollout_row([torch.zeros(1, 2, 2)], 1)   # no attention: all mass stays on the token itself
        tensor([[0., 1.]])
    """
    bsz, r, _ = maps[0].shape
    eye = torch.eye(r, dtype=maps[0].dtype, device=maps[0].device)
    out = eye[row].expand(bsz, r).clone()
    for layer_map in reversed(maps):
        out = torch.einsum("bk,bkj->bj", out, normalize_rows(layer_map + eye))
    return out


def _hidden_saliency(
    adapter: ModelAdapter,
    embeds: Tensor,
    mask: Tensor | None,
    rows: list[int],
    target,
    selected: list[int],
    row_batch: int,
) -> dict[int, Tensor]:
    """``max_D (∂y_i/∂x^{(l-1)})^+`` for each query row i: ``{i: [L_sel, B, N]}``.

    One forward pass of the input replicated ``r = min(row_batch, rows)`` times, then one backward pass per group of
    ``r`` rows (copy k carries row k of the group; copies are independent, so each gets its own row's gradient):
    ``r`` × the activations' memory for ``1/r`` of the backward passes (``row_batch=1``: one pass per row)."""
    model = adapter.model
    bsz, n, _ = embeds.shape
    r = min(row_batch, len(rows))
    captured: list[Tensor] = []

    def pre_hook(_module, args, kwargs):
        captured.append(_first_tensor(args, kwargs, "hidden_states"))

    with CallHooks() as hooks, eval_mode(model):  # this call's forward only; each module's flag restored
        for block in adapter.blocks:
            hooks.pre(block, pre_hook, with_kwargs=True)
        with torch.enable_grad():  # callers (e.g. Captum's attribute) may run under no_grad
            leaf, rep_mask = replicate_rows(embeds.to(adapter.model_dtype), mask, r)
            logits = _logits(adapter, leaf, rep_mask).view(bsz, r, n, -1)
    targets = resolve_targets(target, logits[:, 0])
    inputs = [captured[layer] for layer in selected]
    out = {}
    with torch.enable_grad():
        for g0 in range(0, len(rows), r):
            group = rows[g0 : g0 + r]
            grads = torch.autograd.grad(group_score(logits, group, targets), inputs, retain_graph=g0 + r < len(rows))
            per_row = torch.stack([g.to(embeds.dtype).clamp(min=0).amax(-1).view(bsz, r, n) for g in grads])
            for k, i in enumerate(group):
                out[i] = per_row[:, :, k]  # [L_sel, B, N]
    return out


def _logits(adapter: ModelAdapter, embeds: Tensor, mask: Tensor | None) -> Tensor:
    logits = adapter.output_logits(adapter.forward(None, embeds, mask))
    if logits is None:
        raise ValueError(f"{type(adapter.model).__name__} has no LM head; Mamba-Attribution needs logits")
    return logits


def _positive_channel_mean(weighted: Tensor) -> Tensor:
    """Chefer's ``mean_c (·)^+`` of ``∂y/∂M ⊙ M`` (``[B, N, N, c]`` → ``[B, N, N]``)."""
    return weighted.clamp(min=0).mean(-1)


def _attention_gradients(
    adapter: ModelAdapter,
    embeds: Tensor,
    mask: Tensor | None,
    rows: list[int],
    target,
    selected: list[int],
    reduce: Callable[[Tensor], Tensor] = _positive_channel_mean,
) -> dict[int, list[Tensor]]:
    """``reduce(∂y_i/∂M ⊙ M)`` per selected layer for each query row i (default ``mean_c (·)^+``):
    ``{i: [[B, N, N], ...]}``; ``∂y/∂M ⊙ M`` is ``[B, N, N, c]`` (c: channels, Mamba-2 heads).

    ``∂y/∂M`` is the total derivative, as Chefer's rule reads an attention map's gradient: ``M`` stays in the graph
    (a zero leaf is added to it), so a change of layer l's ``M`` also reaches every later layer's Δ, B and C. A
    detached ``M`` (the leaf itself) held those fixed: only the last layer was exact, earlier layers' maps were off
    by up to 10 % (FalconMamba, 6 layers)."""
    probes: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (zero leaf, value of M), per head for Mamba-2

    def mixing(layer: int, ssm: SSMParams, phi: Tensor) -> Tensor:
        full = hidden_attention_anchored(ssm)  # [B, N, N, d]: eq 15, Mamba-1's around anchors
        per_head = isinstance(ssm, Mamba2SSM)
        value = full[..., :: ssm.head_dim] if per_head else full  # Mamba-2: M is shared by a head's channels
        probe = torch.zeros_like(value, requires_grad=True)
        probes[layer] = (probe, value.detach())
        probed = value + probe
        per_channel = probed.repeat_interleave(ssm.head_dim, dim=-1) if per_head else probed
        return torch.einsum("bisc,bsc->bic", per_channel, phi)

    with torch.enable_grad():
        logits = replay_logits(adapter, embeds, mask, mixing=mixing)
    check_replay(adapter, embeds, mask, logits)
    targets = resolve_targets(target, logits)
    inputs = [probes[idx][0] for idx in selected]
    values = [probes[idx][1] for idx in selected]
    out = {}
    with torch.enable_grad():  # callers (e.g. Captum's attribute) may run under no_grad
        for i in rows:
            score = logits[:, i].gather(-1, targets[:, i, None]).sum()
            grads = torch.autograd.grad(score, inputs, retain_graph=True)
            out[i] = [reduce(g * m).detach() for g, m in zip(grads, values)]
    return out


def _valid(mask: Tensor | None, n: int, bsz: int, device) -> Tensor:
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    valid = causal.expand(bsz, n, n)
    if mask is not None:
        keep = mask.bool()
        valid = valid & keep[:, :, None] & keep[:, None, :]
    return valid


def mamba_attribution(
    model: nn.Module | ModelAdapter,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    layers: int | Sequence[int] | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    position: int | None = None,
    gradient: str = "hidden",
    dtype: torch.dtype = torch.float32,
    row_batch: int = 8,
) -> Tensor:
    """Mamba-Attribution: ``A[b, i, j]`` = rolled-out gradient-weighted hidden attention of prediction i on token j.

    Args:
        model: a supported Mamba model with an LM head, or its adapter (not a trace: it needs gradients).
        input_ids: ``[B, N]`` token ids (or ``inputs_embeds``: ``[B, N, D]``).
        attention_mask: ``[B, N]`` padding mask.
        layers: layers entering the rollout (None = all; the reference starts at a chosen layer, e.g.
            ``layers=range(15, 24)``), in any order: the rollout follows the model's order; a repeat is an error.
        target: token whose logit row i explains: an int, ``[B]`` or ``[B, N]``; default the predicted next token.
        position: compute only this query row (one backward pass instead of N).
        gradient: ``"hidden"`` (reference code, default) or ``"attention"`` (Chefer-style ``∂y/∂M ⊙ M``); see the
            module docstring.
        dtype: compute dtype (float32 or float64) of the hidden attention and the replay; the ``"hidden"``
            saliency is the model's own autograd, in the model's dtype.
        row_batch: query rows per backward pass with ``gradient="hidden"``: the input is replicated ``row_batch``
            times for one forward pass; the values do not depend on it. Larger suits a GPU, small ones (8) a CPU.

    Returns:
        ``[B, N, N]`` (lower-triangular, rows sum to 1 except padded rows, which are 0), or ``[B, N]`` (row
        ``position``) when ``position`` is given.

    Example:
        >>> attr = mamba_attribution(model, ids, position=-1)       # doctest: +SKIP
        >>> attr.sum(-1)                                           # doctest: +SKIP
        tensor([1.])
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
    check_size("row_batch", row_batch)
    adapter, embeds, mask = model_inputs(model, input_ids, inputs_embeds, attention_mask, dtype, "mamba_attribution")
    bsz, n = embeds.shape[:2]
    selected = rollout_layers(layers, adapter.n_layers)
    rows = query_rows(position, n, mask)
    valid = _valid(mask, n, bsz, embeds.device)
    top = max(rows) + 1
    if gradient == "hidden":
        saliency = _hidden_saliency(adapter, embeds, mask, rows, target, selected, row_batch)
        tr = as_trace(adapter, None, embeds, mask, dtype)
        positive = [layer_attention(tr.layers[idx], list(range(top)), "minmax", positive=True) for idx in selected]
    else:
        weighted = _attention_gradients(adapter, embeds, mask, rows, target, selected)
    out = embeds.new_zeros(bsz, len(rows), n)
    for k, i in enumerate(rows):
        if gradient == "hidden":
            cols = valid[:, i]  # tokens j ≤ i that are not padding
            s = row_minmax(saliency[i], cols.expand_as(saliency[i]), dims=(2,))  # [L, B, N]
            maps = [p[:, : i + 1, : i + 1] * s_l[:, None, : i + 1] for p, s_l in zip(positive, s)]
        else:
            maps = [(w * valid)[:, : i + 1, : i + 1] for w in weighted[i]]
        out[:, k, : i + 1] = rollout_row(maps, i)
    if mask is not None:
        out = out * mask[:, rows, None].to(out.dtype)
    return out[:, 0] if position is not None else out
