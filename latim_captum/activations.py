"""Additive activation strategies ``f`` of eq 19: how the conv taps of ``φ_s = act(ψ_s)`` are split over tokens.

The causal conv gives ``ψ_s = Σ_k ψ_s^{(k)}`` with ``ψ_s^{(k)} = W_c^{(k)} (W_x h_{s-K+1+k}) + δ_{k,K-1} b_c`` (eq 17;
the bias is counted once, on the current token's tap, footnote 3). LaTIM replaces ``act(ψ_s)`` by
``Σ_k f(ψ_s^{(k)})`` so that each tap, hence each token, gets its own share:

=============  =================================================  =================================================
strategy       ``f(ψ_s^{(k)})``                                   exact when
=============  =================================================  =================================================
``silu``       ``SiLU(ψ_s^{(k)})`` (the paper's choice)           never for SiLU models (an approximation)
``identity``   ``ψ_s^{(k)}``                                      the model has no activation (``hidden_act``
                                                                  ``"linear"``/``"identity"``)
``taylor1``    ``ψ_s^{(k)} / 2`` (SiLU to first order at 0)       never
``taylor2``    ``ψ/2 + ψ²/4`` (second order at 0)                 never
``silu_gate``  ``σ(ψ_s) · ψ_s^{(k)}``, ``σ(ψ_s)`` held fixed      always for SiLU models: ``Σ_k σ(ψ_s)ψ_s^{(k)} =``
                                                                  ``σ(ψ_s)ψ_s = SiLU(ψ_s)``
=============  =================================================  =================================================

Every entry point defaults to :data:`DEFAULT_ACTIVATION` (``silu_gate``, exact for SiLU models); pass
``activation="silu"`` to reproduce the paper, ``"identity"`` for a model without the activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACTIVATION",
    "IDENTITY_NAMES",
    "SILU_NAMES",
    "conv_taps",
    "tap_shares",
    "tap_gains",
    "check_activation",
]

ACTIVATIONS: tuple[str, ...] = ("silu", "identity", "taylor1", "taylor2", "silu_gate")
#: the strategy every entry point uses unless told otherwise: ``silu_gate`` reconstructs a SiLU model exactly (the
#: convergence delta is rounding); the paper's ``"silu"`` stays selectable to reproduce its numbers
DEFAULT_ACTIVATION = "silu_gate"
SILU_NAMES = frozenset({"silu", "swish"})
IDENTITY_NAMES = frozenset({"linear", "identity", "none"})


def check_activation(activation: str, model_activation: str) -> None:
    """Raise ``ValueError`` for an unknown strategy, or for ``silu_gate`` on a model whose activation is not SiLU."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if activation == "silu_gate" and model_activation not in SILU_NAMES:
        hint = " (use activation='identity', exact for it)" if model_activation in IDENTITY_NAMES else ""
        raise ValueError(
            f"activation='silu_gate' holds σ(ψ) fixed and is exact only for SiLU models; this model's conv "
            f"activation is {model_activation!r}{hint}"
        )


def conv_taps(conv_input: Tensor, conv_weight: Tensor, conv_bias: Tensor | None) -> Tensor:
    """Per-tap pre-activations ``ψ_s^{(k)}`` of the depthwise causal conv (eq 17), ``[K, B, N, d]``.

    Tap ``k`` of position ``s`` reads token ``s - (K-1) + k``; the bias rides on tap ``K-1`` (the current token).

    Example:
        >>> taps = conv_taps(torch.randn(1, 5, 3), torch.randn(3, 4), None)
        >>> taps.shape
        torch.Size([4, 1, 5, 3])
    """
    kernel = conv_weight.shape[-1]
    n = conv_input.shape[1]
    taps = conv_input.new_zeros(kernel, *conv_input.shape)
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift < n:
            taps[k, :, shift:] = conv_input[:, : n - shift] * conv_weight[:, k]
    if conv_bias is not None:
        taps[kernel - 1] += conv_bias
    return taps


def tap_shares(taps: Tensor, pre_activation: Tensor, activation: str) -> Tensor:
    """Apply the additive function ``f`` of eq 19 to each tap: ``φ_s ≈ Σ_k f(ψ_s^{(k)})``, ``[K, B, N, d]``.

    Args:
        taps: ``ψ_s^{(k)}`` from :func:`conv_taps`, ``[K, B, N, d]``.
        pre_activation: the real ``ψ_s = Σ_k ψ_s^{(k)}``, ``[B, N, d]`` (only ``silu_gate`` reads it).
        activation: one of :data:`ACTIVATIONS`.

    Example:
        >>> psi = torch.randn(1, 5, 3); taps = conv_taps(psi, torch.ones(3, 1), None)
        >>> torch.allclose(tap_shares(taps, psi, "silu_gate").sum(0), torch.nn.functional.silu(psi))
        True
    """
    if activation == "silu":
        return F.silu(taps)
    if activation == "identity":
        return taps.clone()
    if activation == "taylor1":
        return taps / 2
    if activation == "taylor2":
        return taps / 2 + taps.square() / 4
    if activation == "silu_gate":
        return torch.sigmoid(pre_activation) * taps
    raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def tap_gains(taps: Tensor, pre_activation: Tensor, activation: str) -> Tensor:
    """Per-channel gains ``r`` with ``f(ψ_s^{(k)}) = r_s^{(k)} ⊙ ψ_s^{(k)}`` (:func:`tap_shares` as a fixed linear map
    of its tap), ``[K, B, N, d]``.

    A tap that is itself a sum of parts (the conv input of a Zamba2 hybrid layer, split over source tokens) is then
    shared out linearly, each part getting ``r ⊙ part``: the parts' shares add up to the tap's share for every
    strategy, exact or not. ``silu``: ``σ(ψ^{(k)})``; ``identity``: 1; ``taylor1``: ½; ``taylor2``: ``½ + ψ^{(k)}/4``;
    ``silu_gate``: ``σ(ψ_s)``.

    Example:
        >>> psi = torch.randn(1, 5, 3); taps = conv_taps(psi, torch.randn(3, 2), None)
        >>> torch.allclose(tap_gains(taps, psi, "taylor2") * taps, tap_shares(taps, psi, "taylor2"))
        True
    """
    if activation == "silu":
        return torch.sigmoid(taps)
    if activation == "identity":
        return torch.ones_like(taps)
    if activation == "taylor1":
        return torch.full_like(taps, 0.5)
    if activation == "taylor2":
        return 0.5 + taps / 4
    if activation == "silu_gate":
        return torch.sigmoid(pre_activation).expand_as(taps).clone()
    raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
