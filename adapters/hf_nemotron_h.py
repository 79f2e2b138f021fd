"""HF ``NemotronHForCausalLM`` / ``NemotronHModel``: single-sublayer blocks, each a Mamba-2 mixer, an attention, an
MLP or a MoE (``config.layers_block_type``, the old ``hybrid_override_pattern`` ``M`` / ``*`` / ``-`` / ``E``)::

    y = x + F(LN(x))        F = block.mixer, one of NemotronHMamba2Mixer, NemotronHAttention, NemotronHMLP/MoE

so each block maps to exactly one residual sublayer of the trace (``n_sublayers == n_layers``, sublayer ``b`` is
block ``b``): a Mamba-2 sublayer (HF's Mamba-2 maths: gate applied before the group RMSNorm, Δ clamped below at
``time_step_min``), a rotary-free attention sublayer (decomposed given ``A``), or a token-wise MLP/MoE sublayer
read as ``y − x``. NemotronH has no multipliers.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace, TokenwiseTrace

from .base import CapturedLayer
from .hf_hybrid import HFHybridAdapter, _Verified
from .hf_mamba2 import mamba2_mixer_trace

__all__ = ["HFNemotronHAdapter"]

_KINDS = {"linear_attention": "mamba", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}


class HFNemotronHAdapter(HFHybridAdapter):
    """Adapter for Hugging Face NemotronH models (Nemotron-H, Nemotron Nano 2/3): one sublayer per block.

    Example:
        >>> from transformers import NemotronHConfig, NemotronHForCausalLM
        >>> cfg = NemotronHConfig(vocab_size=50, hidden_size=32, intermediate_size=48, layers_block_type=[
        ...     "linear_attention", "mlp", "full_attention", "mlp"], num_attention_heads=4, num_key_value_heads=2,
        ...     head_dim=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=2, ssm_state_size=8, chunk_size=4)
        >>> adapter = HFNemotronHAdapter(NemotronHForCausalLM(cfg))
        >>> adapter.n_layers, adapter.n_sublayers
        (4, 4)
    """

    name = "hf-nemotron-h"
    causal_lm_class = "NemotronHForCausalLM"
    base_class = "NemotronHModel"
    model_class_names = (causal_lm_class, base_class)
    backbone_attr = "model"
    embeddings_attr = "embeddings"
    final_norm_attr = "norm_f"

    def block_kind(self, block: nn.Module) -> str:
        """``"mamba"``, ``"attention"``, ``"mlp"`` or ``"moe"``."""
        return _KINDS[block.block_type]

    def mixer(self, block: nn.Module) -> nn.Module:
        return block.mixer

    def sublayers_per_block(self, block: nn.Module) -> int:
        return 1

    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        return mamba2_mixer_trace(block.mixer, captured, dtype, str(block.mixer.activation))

    def block_traces(self, idx, block, cap, attn_kwargs, mask, dtype) -> list[_Verified | TokenwiseTrace]:
        """The block's one sublayer: a verified Mamba/attention mixer, or the MLP/MoE read as ``y − x``."""
        kind = self.block_kind(block)
        residual = cap.block_input.to(dtype)
        added = cap.block_output.to(dtype) - residual
        if kind in ("mamba", "attention"):
            mixer, recomputed = self.mixer_sublayer(block, cap, attn_kwargs, mask, dtype)
            # what the block added (the model's own sum x + F rounds in its dtype), so that the trace's residual chain
            # is the model's; it differs from the mixer's output by that rounding only, and is verified against it
            return [_Verified(replace(mixer, mixer_output=added), recomputed)]
        ffn = TokenwiseTrace(layer=idx, residual=residual, mixer_output=added, mask=mask, kind=kind)
        # the MLP/MoE is read from the block: check that the block adds exactly its module's output
        what = "block output, y = x + F(LN(x)) (F: the MLP/MoE module's own output)"
        return [_Verified(ffn, residual + cap.mixer_output.to(dtype), False, cap.block_output.to(dtype), what), ffn]
