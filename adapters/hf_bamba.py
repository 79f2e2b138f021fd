"""HF ``BambaForCausalLM`` / ``BambaModel``: Mamba-2 mixers and rotary GQA attention, each followed by an MLP.

The Bamba mixer is HF's Mamba-2 mixer (same parameter names and maths: conv over ``[x | B | C]``, Δ clamped to
``time_step_limit``, gated group RMSNorm), so it reuses :func:`~adapters.hf_mamba2.mamba2_mixer_trace`; attention
is Llama-style with (partial) rotary embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace

from .base import CapturedLayer
from .hf_hybrid import HFHybridAdapter
from .hf_mamba2 import mamba2_mixer_trace

__all__ = ["HFBambaAdapter"]


class HFBambaAdapter(HFHybridAdapter):
    """Adapter for Hugging Face Bamba models.

    Example:
        >>> from transformers import BambaConfig, BambaForCausalLM
        >>> cfg = BambaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4,
        ...                   mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=4)
        >>> HFBambaAdapter(BambaForCausalLM(cfg)).n_layers
        2
    """

    name = "hf-bamba"
    causal_lm_class = "BambaForCausalLM"
    base_class = "BambaModel"
    model_class_names = (causal_lm_class, base_class)

    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        return mamba2_mixer_trace(block.mamba, captured, dtype, str(block.mamba.activation))
