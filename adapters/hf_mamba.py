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
import torch.nn.functional as F
from torch import Tensor, nn

from latim_captum.ssm import selective_scan_ref
from latim_captum.traces import LayerTrace, Mamba1SSM

from .base import CapturedLayer
from .hf_common import HFBackboneAdapter, activation_fn, apply_padding_mask, causal_depthwise_conv, weight

__all__ = ["HFMambaAdapter", "HFFalconMambaAdapter", "mamba1_mixer_trace"]


def _rms(x: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


def mamba1_mixer_trace(
    mixer: nn.Module,
    captured: CapturedLayer,
    dtype: torch.dtype,
    activation: str,
    dt_bc_norm: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]
    | None = None,
) -> tuple[LayerTrace, Tensor]:
    """Recompute a HF-style Mamba-1 mixer (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
    ``out_proj``) from its captured input; ``dt_bc_norm`` are the norms some families apply to Δ_low, B and C.

    Returns the trace (``layer`` unset: -1) and the recomputed mixer output.
    """
    mask = captured.mixer_mask
    mask_f = None if mask is None else mask.to(dtype)
    h = captured.mixer_input.to(dtype)
    d = mixer.intermediate_size
    projected = apply_padding_mask(h, mask_f) @ weight(mixer.in_proj.weight, dtype).T
    if mixer.in_proj.bias is not None:
        projected = projected + weight(mixer.in_proj.bias, dtype)
    x, z = projected[..., :d], projected[..., d:]
    conv_w = weight(mixer.conv1d.weight, dtype)[:, 0, :]
    conv_b = weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None
    psi = causal_depthwise_conv(x, conv_w, conv_b)
    phi = apply_padding_mask(activation_fn(activation)(psi), mask_f)

    dt_low, b_ssm, c_ssm = torch.split(
        phi @ weight(mixer.x_proj.weight, dtype).T,
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=-1,
    )
    if dt_bc_norm is not None:
        dt_low, b_ssm, c_ssm = (norm(t) for norm, t in zip(dt_bc_norm, (dt_low, b_ssm, c_ssm)))
    delta = F.softplus(dt_low @ weight(mixer.dt_proj.weight, dtype).T + weight(mixer.dt_proj.bias, dtype))
    ssm = Mamba1SSM(delta=delta, A=-torch.exp(weight(mixer.A_log, dtype)), B=b_ssm, C=c_ssm)
    skip = weight(mixer.D, dtype)
    gate = F.silu(z)
    out_w = weight(mixer.out_proj.weight, dtype)
    out_b = weight(mixer.out_proj.bias, dtype)

    v = selective_scan_ref(ssm, phi) + skip * phi
    recomputed = (v * gate) @ out_w.T
    if out_b is not None:
        recomputed = recomputed + out_b
    trace = LayerTrace(
        layer=-1,
        residual=captured.block_input.to(dtype),
        mixer_input=h,
        mixer_output=captured.mixer_output.to(dtype),
        mask=mask_f,
        conv_input=x,
        conv_weight=conv_w,
        conv_bias=conv_b,
        pre_activation=psi,
        activation=activation,
        ssm=ssm,
        skip=skip,
        out_gate=gate,
        out_weight=out_w,
        out_bias=out_b,
    )
    return trace, recomputed


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

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        dt_bc_norm = None
        if self.normalises_dt_bc:
            eps = float(block.mixer.rms_eps)
            dt_bc_norm = (lambda t: _rms(t, eps),) * 3
        return mamba1_mixer_trace(block.mixer, captured, dtype, self.activation_name, dt_bc_norm)


class HFFalconMambaAdapter(HFMambaAdapter):
    """Adapter for Hugging Face FalconMamba models (Mamba-1 with weightless RMSNorms on Δ_low, B, C)."""

    name = "hf-falcon-mamba"
    causal_lm_class = "FalconMambaForCausalLM"
    base_class = "FalconMambaModel"
    model_class_names = (causal_lm_class, base_class)
    normalises_dt_bc = True
