"""One query row per answer token, for every method of the study, without any ``N × N`` map where the method allows.

Each method gives ``[B, R, N]`` (aggregated over the model) or ``[B, R, L, N]`` (one row per layer) for the ``R``
rows ``rows`` (the rows that predict the answer tokens) and the token ``targets[b, r]`` each row explains:

- LaTIM per layer (``l1``, ``l2``, ``alti``, optionally ``_<activation>``; bare names use the paper's ``silu`` like
  the registry): rows ``[min rows, max rows]`` of each layer's map, ``C^{(l)}_{qj} = ‖T^{(l)}_q(x_j)‖`` (eq 5) or
  ALTI's (eq 6), from :func:`latim_captum.maps.layer.layer_maps` with ``rows=`` (memory O(rows·N); one trace).
- LaTIM ALTI-Logit (``alti_logit[_<activation>]``): :func:`latim_captum.alti_logit_row` per row (eq 8 for one
  query, the single-query path: O(N·d) memory beyond the trace), on one shared trace.
- Captum gradients on the input embeddings ``e_j`` for the logit of ``targets[b, r]`` at row ``q_r``:
  ``saliency`` = ``‖∂logit/∂e_j‖_2``, ``input_x_gradient`` = ``Σ_d e_jd ∂logit/∂e_jd``, ``integrated_gradients``
  = Captum's IG from the zero embedding (``n_steps`` steps), summed over ``d``. The input is replicated once per row.
- Baselines with ``position=q`` (one row each): ``mamba_attention`` (per layer), ``mamba_attribution`` and
  ``mamba_lrp`` (aggregated, target = ``targets[b, r]``).

Example:
    >>> rows = answer_row_scores("l2", model, ids, rows=[5, 6], targets=ids[:, 6:8])   # doctest: +SKIP
    >>> rows.shape                                                # [B, 2, layers, N]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..activations import ACTIVATIONS, check_activation
from ..api import alti_logit, trace
from ..baselines import mamba_attention, mamba_attribution, mamba_lrp
from ..gradient_rows import GRADIENT_KINDS, gradient_rows
from ..maps.layer import layer_maps
from ..maps.options import LatimMemoryError
from ..single_query import alti_logit_row

__all__ = ["GRADIENT_METHODS", "LATIM_MEASURES", "answer_row_scores", "method_family", "parse_latim"]

LATIM_MEASURES: tuple[str, ...] = ("l1", "l2", "alti", "alti_logit")
GRADIENT_METHODS: tuple[str, ...] = GRADIENT_KINDS
BASELINE_METHODS: tuple[str, ...] = ("mamba_attention", "mamba_attribution", "mamba_lrp")


def parse_latim(name: str) -> tuple[str, str] | None:
    """``(measure, activation)`` of a LaTIM method name (``l2`` → ``("l2", "silu")``, ``alti_logit_silu_gate`` →
    ``("alti_logit", "silu_gate")``), None for any other name.

    Example:
        >>> parse_latim("l2"), parse_latim("alti_logit_silu_gate"), parse_latim("saliency")
        (('l2', 'silu'), ('alti_logit', 'silu_gate'), None)
    """
    for measure in sorted(LATIM_MEASURES, key=len, reverse=True):
        if name == measure:
            return measure, "silu"
        if name.startswith(measure + "_") and name[len(measure) + 1 :] in ACTIVATIONS:
            return measure, name[len(measure) + 1 :]
    return None


def method_family(name: str) -> str:
    """``"latim"``, ``"gradient"`` or ``"baseline"``; ``ValueError`` for an unknown name."""
    if parse_latim(name) is not None:
        return "latim"
    if name in GRADIENT_METHODS:
        return "gradient"
    if name in BASELINE_METHODS:
        return "baseline"
    known = ", ".join([*LATIM_MEASURES, *GRADIENT_METHODS, *BASELINE_METHODS])
    raise ValueError(f"unknown method {name!r}; choose from {known} (LaTIM names take _<activation> too)")


def is_per_layer(name: str) -> bool:
    """True for the methods that give one row per layer."""
    parsed = parse_latim(name)
    return name == "mamba_attention" or (parsed is not None and parsed[0] != "alti_logit")


def answer_row_scores(
    name: str,
    model: nn.Module,
    input_ids: Tensor,
    *,
    rows: Sequence[int],
    targets: Tensor,
    backend: str = "auto",
    max_sequences: int = 64,
    n_steps: int = 16,
) -> Tensor:
    """The scores of method ``name`` for query rows ``rows`` of ``input_ids`` ``[B, N]``.

    Args:
        rows: the query rows (0-based), one int each, shared by the batch.
        targets: ``[B, R]`` token each row explains (ALTI-Logit, gradients, Mamba-Attribution, MambaLRP).
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`).
        max_sequences: replicated sequences per forward/backward pass of the gradient methods and row batch of the
            row-replicating baselines.
        n_steps: Integrated Gradients' steps.

    Returns:
        ``[B, R, N]``, or ``[B, R, L, N]`` for the per-layer methods.
    """
    rows = [int(r) for r in rows]
    bsz, n = input_ids.shape
    if not rows or min(rows) < 0 or max(rows) >= n:
        raise ValueError(f"rows must be in 0..{n - 1}, got {rows}")
    if tuple(targets.shape) != (bsz, len(rows)):
        raise ValueError(f"targets must be [B, R] = [{bsz}, {len(rows)}], got {tuple(targets.shape)}")
    family = method_family(name)
    if family == "latim":
        measure, activation = parse_latim(name)
        return _latim_rows(model, input_ids, measure, activation, rows, targets, backend)
    if family == "gradient":
        return gradient_rows(
            model, input_ids, name, rows=rows, targets=targets, max_sequences=max_sequences, n_steps=n_steps
        )
    out = []
    for k, q in enumerate(rows):
        if name == "mamba_attention":
            out.append(mamba_attention(model, input_ids, position=q))  # [B, L, N]
        elif name == "mamba_attribution":
            out.append(mamba_attribution(model, input_ids, position=q, target=targets[:, k], row_batch=max_sequences))
        else:
            out.append(mamba_lrp(model, input_ids, position=q, target=targets[:, k], row_batch=max_sequences))
    return torch.stack(out, dim=1).float()


def _latim_rows(
    model: nn.Module, ids: Tensor, measure: str, activation: str, rows: list[int], targets: Tensor, backend: str
) -> Tensor:
    tr = trace(model, ids)
    check_activation(activation, tr.activation or "silu")
    if measure == "alti_logit":
        if len(rows) > 1:
            # each row's recursion needs the ALTI rows ≤ q of every layer, i.e. nearly the whole maps: one full map
            # serves every answer row at the cost of one row, when the memory guard lets it
            full = tr.readout.logits.argmax(-1)
            full[:, rows] = targets.to(full.device)
            try:
                scores = alti_logit(tr, activation=activation, target=full, backend=backend).scores
            except LatimMemoryError:
                pass
            else:
                return scores[:, rows].float()
        path = "fast" if backend == "auto" else backend  # the single-query path's own default
        out = [
            alti_logit_row(tr, position=q, activation=activation, target=targets[:, k], backend=path).scores
            for k, q in enumerate(rows)
        ]
        return torch.stack(out, dim=1).float()
    lo, hi = min(rows), max(rows) + 1
    pick = torch.tensor([q - lo for q in rows], device=ids.device)
    per_layer = [
        layer_maps(layer, activation, (measure,), backend=backend, rows=(lo, hi))[measure].index_select(1, pick)
        for layer in tr.layers
    ]
    return torch.stack(per_layer, dim=2).float()  # [B, R, L, N]
