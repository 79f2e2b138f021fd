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
import torch.nn.functional as F
from torch import Tensor, nn

from latim_captum.ssm import selective_scan_ref
from latim_captum.traces import LayerTrace, Mamba2SSM

from .base import CapturedLayer
from .hf_common import HFBackboneAdapter, activation_fn, apply_padding_mask, causal_depthwise_conv, weight

__all__ = ["HFMamba2Adapter", "gated_norm_scale", "mamba2_mixer_trace"]


def gated_norm_scale(v: Tensor, z: Tensor, norm_weight: Tensor, groups: int, eps: float) -> Tensor:
    """``γ_i = w ⊙ SiLU(z_i) ⊙ rsqrt(mean_group(u_i²) + ε)`` with ``u = v ⊙ SiLU(z)``, so ``norm(u) = γ ⊙ v``."""
    gate = F.silu(z)
    u = v * gate
    grouped = u.view(*u.shape[:-1], groups, -1)
    inv_rms = torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps).expand_as(grouped).reshape(u.shape)
    return norm_weight * gate * inv_rms


def mamba2_mixer_trace(
    mixer: nn.Module, captured: CapturedLayer, dtype: torch.dtype, activation: str
) -> tuple[LayerTrace, Tensor]:
    """Recompute a HF-style Mamba-2 mixer (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, gated ``norm``,
    ``out_proj``) from its captured input; returns the trace (``layer`` unset: -1) and the recomputed output.
    """
    mask = captured.mixer_mask
    mask_f = None if mask is None else mask.to(dtype)
    h = captured.mixer_input.to(dtype)
    d, heads, groups, state = mixer.intermediate_size, mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    projected = apply_padding_mask(h, mask_f) @ weight(mixer.in_proj.weight, dtype).T
    if mixer.in_proj.bias is not None:
        projected = projected + weight(mixer.in_proj.bias, dtype)
    z, xbc, dt = torch.split(projected, [d, mixer.conv_dim, heads], dim=-1)
    conv_w = weight(mixer.conv1d.weight, dtype)[:, 0, :]
    conv_b = weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None
    psi_all = causal_depthwise_conv(xbc, conv_w, conv_b)
    phi_all = apply_padding_mask(activation_fn(activation)(psi_all), mask_f)
    phi, b_ssm, c_ssm = torch.split(phi_all, [d, groups * state, groups * state], dim=-1)

    low, high = (float(v) for v in mixer.time_step_limit)
    delta = torch.clamp(F.softplus(dt + weight(mixer.dt_bias, dtype)), min=low, max=high)
    bsz, n = h.shape[:2]
    ssm = Mamba2SSM(
        delta=delta,
        A=-torch.exp(weight(mixer.A_log, dtype)),
        B=b_ssm.reshape(bsz, n, groups, state),
        C=c_ssm.reshape(bsz, n, groups, state),
        head_dim=mixer.head_dim,
    )
    skip = weight(mixer.D, dtype).repeat_interleave(mixer.head_dim)
    v = selective_scan_ref(ssm, phi) + skip * phi
    gamma = gated_norm_scale(v, z, weight(mixer.norm.weight, dtype), groups, float(mixer.norm.variance_epsilon))
    out_w = weight(mixer.out_proj.weight, dtype)
    out_b = weight(mixer.out_proj.bias, dtype)
    recomputed = (gamma * v) @ out_w.T
    if out_b is not None:
        recomputed = recomputed + out_b
    trace = LayerTrace(
        layer=-1,
        residual=captured.block_input.to(dtype),
        mixer_input=h,
        mixer_output=captured.mixer_output.to(dtype),
        mask=mask_f,
        conv_input=xbc[..., :d],
        conv_weight=conv_w[:d],
        conv_bias=None if conv_b is None else conv_b[:d],
        pre_activation=psi_all[..., :d],
        activation=activation,
        ssm=ssm,
        skip=skip,
        out_gate=gamma,
        out_weight=out_w,
        out_bias=out_b,
    )
    return trace, recomputed


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

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        return mamba2_mixer_trace(block.mixer, captured, dtype, self.activation_name)
