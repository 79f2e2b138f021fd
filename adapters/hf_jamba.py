"""HF ``JambaForCausalLM`` / ``JambaModel``: Mamba-1 mixers and GQA attention (no positional encoding), each
followed by an MLP or a sparse MoE.

The Jamba mixer is Mamba-1 with *learned* RMSNorms on Δ_low, B and C (``dt_layernorm``, ``b_layernorm``,
``c_layernorm``): like FalconMamba's weightless ones they only change the fixed SSM parameters, so
:func:`~adapters.hf_mamba.mamba1_mixer_trace` takes them as its ``dt_bc_norms``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace

from .base import CapturedLayer
from .hf_common import weight
from .hf_hybrid import HFHybridAdapter
from .hf_mamba import mamba1_mixer_trace

__all__ = ["HFJambaAdapter", "rms_norm"]


def rms_norm(norm: nn.Module, dtype: torch.dtype):
    """``t ↦ w ⊙ t · rsqrt(mean(t²) + ε)`` of a HF RMSNorm module, computed in ``dtype`` (not its float32)."""
    w, eps = weight(norm.weight, dtype), float(norm.variance_epsilon)

    def apply(t: Tensor) -> Tensor:
        return w * t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps)

    return apply


class HFJambaAdapter(HFHybridAdapter):
    """Adapter for Hugging Face Jamba models.

    Example:
        >>> from transformers import JambaConfig, JambaForCausalLM
        >>> cfg = JambaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
        ...                   num_experts=2, mamba_d_state=4, mamba_dt_rank=4)
        >>> HFJambaAdapter(JambaForCausalLM(cfg)).n_layers
        2
    """

    name = "hf-jamba"
    causal_lm_class = "JambaForCausalLM"
    base_class = "JambaModel"
    model_class_names = (causal_lm_class, base_class)

    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        mixer = block.mamba
        norms = tuple(rms_norm(n, dtype) for n in (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm))
        return mamba1_mixer_trace(mixer, captured, dtype, str(mixer.activation), norms)
