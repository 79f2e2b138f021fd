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
``act``        ``a(ψ_s^{(k)})``, ``a`` the model's activation     never but for a model without activation (eq 19
                                                                  with ``f := a``: ``silu`` on SiLU models,
                                                                  ``identity`` on linear ones, ReLU on ReLU ones)
``act_gate``   ``(a(ψ_s) / ψ_s) · ψ_s^{(k)}``, the ratio held     always, for any elementwise ``a`` with ``a(0) =
               fixed (0 where ``ψ_s = 0``)                        0`` (``silu_gate`` on SiLU models)
=============  =================================================  =================================================

``silu``, ``taylor1``, ``taylor2`` and ``silu_gate`` approximate or hold SiLU: on a model whose conv activation is
another (ReLU, GELU, none) they would decompose a function the model does not compute, so they are refused there
(:func:`check_activation` names ``act`` and ``act_gate``).

Every entry point defaults to :data:`DEFAULT_ACTIVATION` (``silu_gate``, exact for SiLU models); pass
``activation="silu"`` to reproduce the paper, ``"identity"`` for a model without the activation, ``"act_gate"`` for
an exact decomposition of any other activation.
"""

from __future__ import annotations

from collections.abc import Callable

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
    "activation_function",
    "divide_or_zero",
]

ACTIVATIONS: tuple[str, ...] = ("silu", "identity", "taylor1", "taylor2", "silu_gate", "act", "act_gate")
#: strategies written for SiLU (its approximations, its gate): refused on a model with another conv activation
SILU_STRATEGIES = frozenset({"silu", "taylor1", "taylor2", "silu_gate"})
#: the strategy every entry point uses unless told otherwise: ``silu_gate`` reconstructs a SiLU model exactly (the
#: convergence delta is rounding); the paper's ``"silu"`` stays selectable to reproduce its numbers
DEFAULT_ACTIVATION = "silu_gate"
SILU_NAMES = frozenset({"silu", "swish"})
IDENTITY_NAMES = frozenset({"linear", "identity", "none"})


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The elementwise conv activation a config names (``hidden_act``, a mixer's ``activation``).

    Example:
        >>> activation_function("relu")(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    if name in SILU_NAMES:
        return F.silu
    if name in IDENTITY_NAMES:
        return lambda t: t
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"unknown conv activation {name!r} (not one of transformers' ACT2FN)")
    return ACT2FN[name]


def check_activation(activation: str, model_activation: str) -> None:
    """Raise ``ValueError`` for an unknown strategy, or for a SiLU strategy (``silu``, ``taylor1``, ``taylor2``,
    ``silu_gate``) on a model whose conv activation is not SiLU."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if activation in SILU_STRATEGIES and model_activation not in SILU_NAMES:
        what = "holds σ(ψ) fixed" if activation == "silu_gate" else "approximates SiLU"
        exact = "'identity' or 'act_gate'" if model_activation in IDENTITY_NAMES else "'act_gate'"
        raise ValueError(
            f"activation={activation!r} {what}, and this model's conv activation is {model_activation!r}: use "
            f"{exact} (exact for it) or 'act' (the paper's eq 19 with f := its own activation)"
        )
    if activation in ("act", "act_gate"):
        activation_function(model_activation)  # an activation we cannot name is refused before any work


def divide_or_zero(values: Tensor, inputs: Tensor) -> Tensor:
    """``values / inputs``, 0 where ``inputs == 0`` (the share ``ratio · input`` is 0 there whatever the ratio)."""
    zero = inputs == 0
    return torch.where(zero, torch.zeros_like(inputs), values / torch.where(zero, torch.ones_like(inputs), inputs))


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


def tap_shares(taps: Tensor, pre_activation: Tensor, activation: str, model_activation: str = "silu") -> Tensor:
    """Apply the additive function ``f`` of eq 19 to each tap: ``φ_s ≈ Σ_k f(ψ_s^{(k)})``, ``[K, B, N, d]``.

    Args:
        taps: ``ψ_s^{(k)}`` from :func:`conv_taps`, ``[K, B, N, d]``.
        pre_activation: the real ``ψ_s = Σ_k ψ_s^{(k)}``, ``[B, N, d]`` (only the gate strategies read it).
        activation: one of :data:`ACTIVATIONS`.
        model_activation: the model's conv activation ``a`` (``act`` and ``act_gate`` apply it).

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
    if activation == "act":
        return activation_function(model_activation)(taps)
    if activation == "act_gate":
        return divide_or_zero(activation_function(model_activation)(pre_activation), pre_activation) * taps
    raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def tap_gains(taps: Tensor, pre_activation: Tensor, activation: str, model_activation: str = "silu") -> Tensor:
    """Per-channel gains ``r`` with ``f(ψ_s^{(k)}) = r_s^{(k)} ⊙ ψ_s^{(k)}`` (:func:`tap_shares` as a fixed linear map
    of its tap), ``[K, B, N, d]``.

    A tap that is itself a sum of parts (the conv input of a Zamba2 hybrid layer, split over source tokens) is then
    shared out linearly, each part getting ``r ⊙ part``: the parts' shares add up to the tap's share for every
    strategy, exact or not. ``silu``: ``σ(ψ^{(k)})``; ``identity``: 1; ``taylor1``: ½; ``taylor2``: ``½ + ψ^{(k)}/4``;
    ``silu_gate``: ``σ(ψ_s)``; ``act``: ``a(ψ^{(k)}) / ψ^{(k)}``; ``act_gate``: ``a(ψ_s) / ψ_s`` (ratios 0 where the
    divisor is).

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
    if activation == "act":
        return divide_or_zero(activation_function(model_activation)(taps), taps)
    if activation == "act_gate":
        gate = divide_or_zero(activation_function(model_activation)(pre_activation), pre_activation)
        return gate.expand_as(taps).clone()
    raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
