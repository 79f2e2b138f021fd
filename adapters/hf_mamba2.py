"""HF ``Mamba2ForCausalLM`` / ``Mamba2Model`` (Mamba-2).

Mixer (``Mamba2Mixer``)::

    [z | xBC | dt] = W_in h (+ b_in)     [x | B | C] = act(conv(xBC) + b_c)       (padding zeroed)
    Δ = clamp(softplus(dt + dt_bias), time_step_limit)       A = -exp(A_log)  (one scalar per head)
    v = SSD(x; Δ, A, B, C) + D ⊙ x       u = v ⊙ SiLU(z)
    out = W_o (w ⊙ u ⊙ rsqrt(mean_group(u²) + ε)) (+ b_o) = W_o (γ ⊙ v),   γ = w ⊙ SiLU(z) ⊙ rsqrt(...)   (eq 24)

Only the x channels are decomposed; B and C (also conv outputs) are fixed parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace

from .base import CapturedLayer
from .hf_common import HFBackboneAdapter, gated_norm_groups, weight
from .mixers import Mamba2Weights, gated_norm_scale, layer_from_capture, mamba2_layer

__all__ = ["HFMamba2Adapter", "gated_norm_scale", "hf_mamba2_weights", "mamba2_mixer_trace"]


def hf_mamba2_weights(mixer: nn.Module, dtype: torch.dtype, conv_bias: bool) -> Mamba2Weights:
    """The weights of a HF-style Mamba-2 mixer in ``dtype`` (the conv bias only where the mixer applies it)."""
    return Mamba2Weights(
        in_proj_weight=weight(mixer.in_proj.weight, dtype),
        in_proj_bias=weight(mixer.in_proj.bias, dtype),
        conv_weight=weight(mixer.conv1d.weight, dtype)[:, 0, :],
        conv_bias=weight(mixer.conv1d.bias, dtype) if conv_bias else None,
        heads=int(mixer.num_heads),
        head_dim=int(mixer.head_dim),
        groups=int(mixer.n_groups),
        state_size=int(mixer.ssm_state_size),
        dt_bias=weight(mixer.dt_bias, dtype),
        dt_limit=tuple(float(v) for v in mixer.time_step_limit),
        A_log=weight(mixer.A_log, dtype),
        D=weight(mixer.D, dtype),
        norm_weight=weight(mixer.norm.weight, dtype),
        norm_eps=float(mixer.norm.variance_epsilon),
        norm_groups=gated_norm_groups(mixer.norm, int(mixer.norm.weight.shape[0])),
        norm_before_gate=False,
        out_proj_weight=weight(mixer.out_proj.weight, dtype),
        out_proj_bias=weight(mixer.out_proj.bias, dtype),
    )


def mamba2_mixer_trace(
    mixer: nn.Module, captured: CapturedLayer, dtype: torch.dtype, activation: str
) -> tuple[LayerTrace, Tensor]:
    """Recompute a HF-style Mamba-2 mixer (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, gated ``norm``,
    ``out_proj``) from its captured input; returns the trace (``layer`` unset: -1) and the recomputed output.
    """
    weights = hf_mamba2_weights(mixer, dtype, conv_bias=bool(mixer.use_conv_bias))
    return layer_from_capture(mamba2_layer, captured, weights, activation, dtype)


class HFMamba2Adapter(HFBackboneAdapter):
    """Adapter for Hugging Face Mamba-2 models.

    Example:
        >>> from transformers import Mamba2Config, Mamba2ForCausalLM
        >>> cfg = Mamba2Config(hidden_size=32, expand=2, num_heads=8, head_dim=8, n_groups=2, state_size=8,
        ...                    chunk_size=4, num_hidden_layers=2, vocab_size=50)
        >>> HFMamba2Adapter(Mamba2ForCausalLM(cfg)).n_layers
        2
    """

    name = "hf-mamba2"
    causal_lm_class = "Mamba2ForCausalLM"
    base_class = "Mamba2Model"
    model_class_names = (causal_lm_class, base_class)

    def mixer_weights(self, block: nn.Module, dtype: torch.dtype) -> Mamba2Weights:
        """The block's mixer weights in ``dtype`` (the gated norm's groups as the installed module takes them):
        what :meth:`mixer_trace` recomputes from, and what the gradient baselines' differentiable replay
        (:mod:`latim_captum.baselines.replay`) runs."""
        mixer = self.mixer(block)
        return hf_mamba2_weights(mixer, dtype, conv_bias=bool(mixer.use_conv_bias))

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        weights = self.mixer_weights(block, dtype)
        return layer_from_capture(mamba2_layer, captured, weights, self.activation_name, dtype)
