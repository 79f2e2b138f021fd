"""Captum gradient rows on the input embeddings, several query rows per backward pass.

For query row ``q`` and token ``t = targets[b, r]`` explained there, with ``e_j`` the input embedding of token j
(``[N, D]``) and ``f = logit_t(q)``:

- ``saliency``: ``‖∂f/∂e_j‖_2`` (Captum ``Saliency`` with ``abs=True``, then ℓ2 over D);
- ``input_x_gradient``: ``Σ_d e_jd ∂f/∂e_jd`` (Captum ``InputXGradient``, summed over D as Captum's
  ``LLMGradientAttribution`` does);
- ``integrated_gradients``: Captum ``IntegratedGradients`` from the zero embedding (``n_steps`` steps), summed over D.

Rows are batched: the sequence is replicated once per query row (``[R·B, N, D]``) and replica ``r·B + b`` reads the
logit of ``targets[b, r]`` at its own row, so one forward/backward gives R rows (a replica's gradient flows only from
its own row's logit). :func:`gradient_rows_ref` is the plain reference: one ``torch.autograd.grad`` per row.

Example:
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=1, vocab_size=12))
    >>> ids = torch.tensor([[1, 2, 3, 4, 5]])
    >>> gradient_rows(model, ids, "saliency", rows=[1, 3], targets=ids[:, [2, 4]]).shape
    torch.Size([1, 2, 5])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._embedding_forward import logits_from_embeddings
from ._model_state import check_grad_mode, eval_mode
from ._validation import check_size

__all__ = ["GRADIENT_KINDS", "gradient_rows", "gradient_rows_ref"]

#: the gradient methods this module computes
GRADIENT_KINDS: tuple[str, ...] = ("saliency", "input_x_gradient", "integrated_gradients")


def _check(kind: str, input_ids: Tensor, rows: Sequence[int], targets: Tensor, max_sequences: int) -> list[int]:
    if kind not in GRADIENT_KINDS:
        raise ValueError(f"unknown gradient method {kind!r}; choose from {', '.join(GRADIENT_KINDS)}")
    bsz, n = input_ids.shape
    rows = [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= n:
        raise ValueError(f"rows must be in 0..{n - 1}, got {rows}")
    if tuple(targets.shape) != (bsz, len(rows)):
        raise ValueError(f"targets must be [B, R] = [{bsz}, {len(rows)}], got {tuple(targets.shape)}")
    check_size("max_sequences", max_sequences)
    check_grad_mode(kind)
    return rows


def gradient_rows(
    model: nn.Module,
    input_ids: Tensor,
    kind: str,
    *,
    rows: Sequence[int],
    targets: Tensor,
    max_sequences: int = 256,
    n_steps: int = 16,
) -> Tensor:
    """``[B, R, N]`` float32 scores of gradient method ``kind`` for query rows ``rows`` of ``input_ids`` ``[B, N]``.

    Args:
        rows: the R query rows (0-based), shared by the batch.
        targets: ``[B, R]`` token whose logit each row explains.
        max_sequences: replicated sequences per forward/backward pass (rows per pass = ``max_sequences // B``).
        n_steps: Integrated Gradients' steps.

    The model runs in eval mode (each module's own flag comes back) on its own embeddings' processing
    (:func:`latim_captum._embedding_forward.logits_from_embeddings`).
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    rows = _check(kind, input_ids, rows, targets, max_sequences)
    bsz, n = input_ids.shape

    def forward(e: Tensor, at: Tensor, rep_ids: Tensor) -> Tensor:
        logits = logits_from_embeddings(model, rep_ids, e)
        return logits[torch.arange(e.shape[0], device=e.device), at].float()

    out = []
    with eval_mode(model):
        with torch.no_grad():
            embeds = model.get_input_embeddings()(input_ids).detach()
        step = max(1, max_sequences // bsz)
        for r0 in range(0, len(rows), step):
            chunk = rows[r0 : r0 + step]
            reps = len(chunk)
            x = embeds[None].expand(reps, -1, -1, -1).reshape(reps * bsz, n, -1).clone().requires_grad_(True)
            at = torch.tensor(chunk, device=input_ids.device).repeat_interleave(bsz)
            rep_ids = input_ids[None].expand(reps, -1, -1).reshape(reps * bsz, n)
            args = (at, rep_ids)
            tgt = targets[:, r0 : r0 + reps].T.reshape(-1).to(input_ids.device)
            if kind == "saliency":
                attr = Saliency(forward).attribute(x, target=tgt, abs=True, additional_forward_args=args)
                scores = attr.float().norm(dim=-1)
            elif kind == "input_x_gradient":
                attr = InputXGradient(forward).attribute(x, target=tgt, additional_forward_args=args)
                scores = attr.float().sum(-1)
            else:
                attr = IntegratedGradients(forward).attribute(
                    x, baselines=torch.zeros_like(x), target=tgt, additional_forward_args=args, n_steps=n_steps,
                    internal_batch_size=max_sequences,
                )  # fmt: skip
                scores = attr.float().sum(-1)
            out.append(scores.detach().reshape(reps, bsz, n).transpose(0, 1))  # [B, reps, N]
    return torch.cat(out, dim=1)


def gradient_rows_ref(
    model: nn.Module, input_ids: Tensor, kind: str, *, rows: Sequence[int], targets: Tensor
) -> Tensor:
    """Plain reference of :func:`gradient_rows` for ``saliency`` and ``input_x_gradient``: one unbatched
    ``torch.autograd.grad`` of ``logit_t(q)`` per sample and row."""
    if kind not in ("saliency", "input_x_gradient"):
        raise ValueError(f"the reference covers saliency and input_x_gradient, not {kind!r}")
    rows = _check(kind, input_ids, rows, targets, 1)
    out = torch.zeros(input_ids.shape[0], len(rows), input_ids.shape[1])
    with eval_mode(model):
        for b in range(input_ids.shape[0]):
            ids = input_ids[b : b + 1]
            for k, q in enumerate(rows):
                e = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logit = logits_from_embeddings(model, ids, e)[0, q, int(targets[b, k])]
                (grad,) = torch.autograd.grad(logit, e)
                out[b, k] = grad[0].norm(dim=-1) if kind == "saliency" else (grad[0] * e[0]).sum(-1).detach()
    return out
