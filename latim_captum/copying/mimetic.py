"""Mimetic initialisation (Trockman et al., 2024, "Mimetic initialization helps state space models learn to recall").

Their idea: initialise an SSM layer so that its implicit attention ``M_ij = C_i·(Π_{k=j+1..i} a_k) B_j`` already
looks like self-attention with ``q = k``:

1. **State decay ≈ 1** ("A ≈ 1"): with ``a_k = exp(Δ_k A)`` near 1 the layer forgets nothing at init and behaves
   like linear attention over the whole prefix. We set ``A = −exp(A_log)`` to ``−a_scale`` with ``a_scale`` small
   (``1e-2``): ``exp(Δ·A) ≥ exp(−0.1·0.01) ≈ 0.999`` for Mamba's default Δ range.
2. **Tied query/key projections** (``W_C = W_B``): ``C_i·B_j = x_i^T W^T W x_j``, a positive-semidefinite,
   diagonal-dominant score, so each token initially attends most to tokens like itself — the pattern copying needs.
   Mamba-1: the B and C rows of ``x_proj``. Mamba-2: the B and C rows of ``in_proj`` and their conv filters.
3. Mamba-2 only: the conv filters of the B and C channels start as the identity (only the current tap), so the
   conv does not smear the query and key over neighbouring tokens; Mamba-1 keeps its conv (its state is per
   channel and the conv carries the shift that copying needs).

The LaTIM paper (App. B.1) applies it to layer 4 of 8 only, "with their optimal configuration (which differs from
Mamba 1 to 2)". The search tool only gave us the abstract of Trockman et al., not their tables, so items 1–3 are
our reading of the method, not a verified copy of their optimal settings; every switch is an argument here and in
``train.py`` so the configuration can be changed without code changes.

Example:
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> m = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=8))
    >>> mimetic_init_(m, layers=[1])
    >>> x = m.backbone.layers[1].mixer.x_proj.weight
    >>> bool((x[-4:] == x[-8:-4]).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..adapters import get_adapter

__all__ = ["mimetic_init_"]


@torch.no_grad()
def _mamba1(mixer: nn.Module, a_scale: float, tie_bc: bool) -> None:
    if a_scale > 0:
        mixer.A_log.fill_(math.log(a_scale))
    if tie_bc:
        s = mixer.ssm_state_size
        w = mixer.x_proj.weight  # rows: [dt_rank | B (s) | C (s)]
        w[-s:] = w[-2 * s : -s]


@torch.no_grad()
def _mamba2(mixer: nn.Module, a_scale: float, tie_bc: bool, identity_conv_bc: bool) -> None:
    if a_scale > 0:
        mixer.A_log.fill_(math.log(a_scale))
    gs = mixer.n_groups * mixer.ssm_state_size
    d_inner = mixer.intermediate_size
    # in_proj rows: [z (d_inner) | x (d_inner) | B (gs) | C (gs) | dt (heads)]; conv channels: [x | B | C]
    b_rows = slice(2 * d_inner, 2 * d_inner + gs)
    c_rows = slice(2 * d_inner + gs, 2 * d_inner + 2 * gs)
    conv = mixer.conv1d
    if identity_conv_bc:
        conv.weight[d_inner:] = 0
        conv.weight[d_inner:, :, -1] = 1  # the current token's tap is the last (causal left padding)
        if conv.bias is not None:
            conv.bias[d_inner:] = 0
    if tie_bc:
        mixer.in_proj.weight[c_rows] = mixer.in_proj.weight[b_rows]
        conv.weight[d_inner + gs :] = conv.weight[d_inner : d_inner + gs]
        if conv.bias is not None:
            conv.bias[d_inner + gs :] = conv.bias[d_inner : d_inner + gs]


def mimetic_init_(
    model: nn.Module,
    layers: Sequence[int],
    *,
    a_scale: float = 1e-2,
    tie_bc: bool = True,
    identity_conv_bc: bool | None = None,
) -> None:
    """Apply mimetic initialisation in place to the mixers of ``layers`` (0-based) of an HF Mamba/Mamba-2 LM.

    Args:
        model: ``MambaForCausalLM`` or ``Mamba2ForCausalLM`` (freshly initialised).
        layers: 0-based layer indices (the paper: ``[3]``, its layer 4 of 8).
        a_scale: ``A`` is set to ``−a_scale`` (state decay ≈ 1); ``0`` leaves ``A`` alone.
        tie_bc: copy the B projection into the C projection (``W_C = W_B``).
        identity_conv_bc: Mamba-2: identity conv filters on the B/C channels (default True for Mamba-2).
    """
    adapter = get_adapter(model)
    blocks = adapter.blocks
    for idx in layers:
        if not -len(blocks) <= idx < len(blocks):
            raise ValueError(f"mimetic layer {idx} out of range for {len(blocks)} layers")
        mixer = adapter.mixer(blocks[idx])
        if hasattr(mixer, "x_proj"):
            _mamba1(mixer, a_scale, tie_bc)
        elif hasattr(mixer, "n_groups"):
            _mamba2(mixer, a_scale, tie_bc, True if identity_conv_bc is None else identity_conv_bc)
        else:
            raise TypeError(f"mimetic init supports HF Mamba / Mamba-2 mixers, got {type(mixer).__name__}")
