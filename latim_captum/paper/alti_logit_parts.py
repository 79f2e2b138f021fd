"""ALTI-Logit (eq 8) taken apart, for the studies of which part makes or loses a task's signal
(``benchmarks/alti_logit_parts.py`` on the copy task, ``benchmarks/alignment_alti_logit_parts.py`` on the
alignment task).

Eq 8 is ``C = diag(u · x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}``: each layer's logit terms
``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i`` carried to the input tokens by the ALTI rollout ``R^{(l-1)}`` of the layers
below. :func:`layer_parts` gives every layer's ``Δ`` and ALTI map ``P`` under each activation strategy,
:func:`terms` and :func:`aggregate` put eq 8 back together from any of them, and :func:`check_same_path` holds a
one-strategy reassembly to :func:`latim_captum.maps.all_layers.alti_logit` before a study scores it.

Example:
    >>> parts = layer_parts(latim_captum.trace(model, ids), next_token_targets(ids))    # doctest: +SKIP
    >>> exact = terms(parts["logit"]["silu_gate"], parts["alti"]["silu_gate"])          # doctest: +SKIP
    >>> eq8 = aggregate(parts["direct"], exact)                                           # doctest: +SKIP
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .._environment import command_line, device_name
from ..aggregate import alti_logit_terms
from ..maps.all_layers import alti_logit
from ..maps.layer import layer_maps
from ..tasks.reports import write_report

__all__ = ["SAME_PATH_RTOL", "STRATEGIES", "aggregate", "check_same_path", "layer_parts", "terms", "write_study"]

#: the paper's strategy and the exact one
STRATEGIES = ("silu", "silu_gate")
#: a one-strategy reassembly reproduces alti_logit to this relative error (float32 sums in another order)
SAME_PATH_RTOL = 1e-4


def layer_parts(tr, targets: torch.Tensor, strategies: Sequence[str] = STRATEGIES) -> dict:
    """Every layer's Δ^{(l)} and ALTI map ``P^{(l)}`` (``[B, L, N, N]`` each) under each strategy:
    ``{"logit": {act: ...}, "alti": {act: ...}}``, and ``"direct"``: the embedding's own term ``u_i · x_i^{(0)}``
    (``[B, N]``). ``targets``: ``[B, N]`` token ids each row explains."""
    u = tr.readout.projection(targets)  # [B, N, D]
    out: dict = {"logit": {}, "alti": {}}
    for act in strategies:
        # no embedding columns: the task models are HF Mamba / Mamba-2 (the studies refuse anything else)
        maps = [layer_maps(layer, act, ("alti", "logit"), projection=u) for layer in tr.layers]
        for measure in ("logit", "alti"):
            out[measure][act] = torch.stack([m[measure] for m in maps], dim=1)
    out["direct"] = (u * tr.embeddings).sum(-1)
    return out


def terms(deltas: torch.Tensor, alti_maps: torch.Tensor) -> torch.Tensor:
    """``[B, L, N, N]`` per-layer terms ``Δ^{(l)} R^{(l-1)}`` of eq 8 for ``[B, L, N, N]`` Δ and ALTI maps
    (:func:`latim_captum.aggregate.alti_logit_terms`)."""
    return torch.stack(list(alti_logit_terms(deltas.unbind(1), alti_maps.unbind(1))), dim=1)


def aggregate(direct: torch.Tensor, layer_terms: torch.Tensor) -> torch.Tensor:
    """Eq 8: ``diag(u · x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}`` from the ``[B, L, N, N]`` terms (any per-layer maps)."""
    return torch.diag_embed(direct) + layer_terms.sum(1)


def check_same_path(tr, targets: torch.Tensor, parts: dict) -> None:
    """Eq 8 reassembled from each strategy's parts against the library's ALTI-Logit; a mismatch stops the run (a
    wrong map scored). ``RuntimeError`` names the strategy and the relative error."""
    for act in parts["logit"]:
        mine = aggregate(parts["direct"], terms(parts["logit"][act], parts["alti"][act]))
        lib = alti_logit(tr, targets, activation=act).scores
        err = float((mine - lib).abs().max() / lib.abs().max())
        if err > SAME_PATH_RTOL:
            raise RuntimeError(f"{act}: eq 8 reassembled from its parts is {err:.1e} (relative) from alti_logit")


def write_study(
    models: list[dict],
    script: str,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    render: Callable[[dict], str],
) -> tuple[Path, Path]:
    """A CPU study's report, ``<args.stem>.{md,json}`` under ``args.out``: the command (``python <script> ...``), the
    device and torch version, and every model's results."""
    report = {
        "command": command_line(f"python {script}", argv),
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "models": models,
    }
    return write_report(report, args.out, args.stem, render)
