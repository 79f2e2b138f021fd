"""HF ``MambaForCausalLM`` / ``MambaModel`` and ``FalconMambaForCausalLM`` / ``FalconMambaModel`` (Mamba-1).

Mixer (``MambaMixer``)::

    [x | z] = W_in h (+ b_in)            ψ = conv(x) + b_c        φ = act(ψ)        (padding zeroed)
    [Δ_low | B | C] = W_xproj φ          Δ = softplus(W_dt Δ_low + b_dt)          A = -exp(A_log)
    v = SSM(φ; Δ, A, B, C) + D ⊙ φ       out = W_o (v ⊙ SiLU(z)) (+ b_o)

FalconMamba additionally applies weightless RMSNorms to Δ_low, B and C; they only change the fixed parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace

from .base import CapturedLayer
from .hf_common import HFBackboneAdapter, weight
from .mixers import Mamba1Weights, layer_from_capture, mamba1_layer

__all__ = ["HFMambaAdapter", "HFFalconMambaAdapter", "hf_mamba1_weights", "mamba1_mixer_trace"]


def hf_mamba1_weights(
    mixer: nn.Module,
    dtype: torch.dtype,
    dt_bc_eps: float | None = None,
    dt_bc_norms: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]
    | None = None,
) -> Mamba1Weights:
    """The weights of a HF-style Mamba-1 mixer (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
    ``out_proj``) in ``dtype``; ``dt_bc_norms`` / ``dt_bc_eps`` are the norms some families apply to Δ_low, B and C
    (Jamba's learned ones, FalconMamba's weightless ones)."""
    return Mamba1Weights(
        in_proj_weight=weight(mixer.in_proj.weight, dtype),
        in_proj_bias=weight(mixer.in_proj.bias, dtype),
        conv_weight=weight(mixer.conv1d.weight, dtype)[:, 0, :],
        conv_bias=weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None,
        x_proj_weight=weight(mixer.x_proj.weight, dtype),
        dt_rank=int(mixer.time_step_rank),
        state_size=int(mixer.ssm_state_size),
        dt_proj_weight=weight(mixer.dt_proj.weight, dtype),
        dt_proj_bias=weight(mixer.dt_proj.bias, dtype),
        A_log=weight(mixer.A_log, dtype),
        D=weight(mixer.D, dtype),
        out_proj_weight=weight(mixer.out_proj.weight, dtype),
        out_proj_bias=weight(mixer.out_proj.bias, dtype),
        dt_bc_eps=dt_bc_eps,
        dt_bc_norms=dt_bc_norms,
    )


def mamba1_mixer_trace(
    mixer: nn.Module,
    captured: CapturedLayer,
    dtype: torch.dtype,
    activation: str,
    dt_bc_norms: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]
    | None = None,
    dt_bc_eps: float | None = None,
) -> tuple[LayerTrace, Tensor]:
    """Recompute a HF-style Mamba-1 mixer from its captured input (weights: :func:`hf_mamba1_weights`).

    Returns the trace (``layer`` unset: -1) and the recomputed mixer output.
    """
    weights = hf_mamba1_weights(mixer, dtype, dt_bc_eps=dt_bc_eps, dt_bc_norms=dt_bc_norms)
    return layer_from_capture(mamba1_layer, captured, weights, activation, dtype)


class HFMambaAdapter(HFBackboneAdapter):
    """Adapter for Hugging Face Mamba-1 models.

    Example:
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> HFMambaAdapter(model).n_layers
        2
    """

    name = "hf-mamba"
    causal_lm_class = "MambaForCausalLM"
    base_class = "MambaModel"
    model_class_names = (causal_lm_class, base_class)
    #: FalconMamba normalises Δ_low, B, C with weightless RMSNorms
    normalises_dt_bc = False

    def mixer_weights(self, block: nn.Module, dtype: torch.dtype) -> Mamba1Weights:
        """The block's mixer weights in ``dtype``: what :meth:`mixer_trace` recomputes from, and what the gradient
        baselines' differentiable replay (:mod:`latim_captum.baselines.replay`) runs."""
        mixer = self.mixer(block)
        eps = float(mixer.rms_eps) if self.normalises_dt_bc else None
        return hf_mamba1_weights(mixer, dtype, dt_bc_eps=eps)

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        weights = self.mixer_weights(block, dtype)
        return layer_from_capture(mamba1_layer, captured, weights, self.activation_name, dtype)


class HFFalconMambaAdapter(HFMambaAdapter):
    """Adapter for Hugging Face FalconMamba models (Mamba-1 with weightless RMSNorms on Δ_low, B, C)."""

    name = "hf-falcon-mamba"
    causal_lm_class = "FalconMambaForCausalLM"
    base_class = "FalconMambaModel"
    model_class_names = (causal_lm_class, base_class)
    normalises_dt_bc = True
