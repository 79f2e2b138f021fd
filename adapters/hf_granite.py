"""HF ``GraniteMoeHybridForCausalLM`` / ``GraniteMoeHybridModel``: Bamba-style Mamba-2 mixers and attention, then
a shared MLP plus an optional sparse MoE, with Granite's multipliers.

Every multiplier is accounted for: ``embedding_multiplier`` acts before the first block (the trace's embeddings are
the scaled ones), ``attention_multiplier`` is the attention's softmax scale (inside ``A``), ``residual_multiplier``
scales each sublayer's output before it joins the residual (folded into ``W_o``/``b_o`` of the mixer; the MLP/MoE
output is read after it), and ``logits_scaling`` divides the logits (folded into the readout's unembedding).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latim_captum.traces import LayerTrace

from .base import CapturedLayer
from .hf_hybrid import HFHybridAdapter
from .hf_mamba2 import mamba2_mixer_trace

__all__ = ["HFGraniteMoeHybridAdapter"]


class HFGraniteMoeHybridAdapter(HFHybridAdapter):
    """Adapter for Hugging Face GraniteMoeHybrid models (Granite 4.0)."""

    name = "hf-granitemoehybrid"
    causal_lm_class = "GraniteMoeHybridForCausalLM"
    base_class = "GraniteMoeHybridModel"
    model_class_names = (causal_lm_class, base_class)

    @property
    def final_norm(self) -> nn.Module:
        return self.backbone.norm

    def feed_forward(self, block: nn.Module) -> nn.Module:
        return block.block_sparse_moe if block.block_sparse_moe is not None else block.shared_mlp

    def ffn_kind(self, block: nn.Module) -> str:
        # the shared MLP's class is GraniteMoeHybridMLP: the family's name holds "moe" with no experts at all
        return "moe" if block.block_sparse_moe is not None else "mlp"

    def feed_forward_modules(self, block: nn.Module) -> tuple[nn.Module, ...]:
        # y = x' + (MoE(h) + shared_mlp(h)) · m_residual, the MoE optional
        return tuple(m for m in (block.block_sparse_moe, block.shared_mlp) if m is not None)

    def feed_forward_norm(self, block: nn.Module) -> nn.Module:
        return block.post_attention_layernorm

    def residual_multiplier(self, block: nn.Module) -> float:
        # the block's own (HF copies the config's into each decoder layer; the forward reads the layer's)
        return float(getattr(block, "residual_multiplier", self.model.config.residual_multiplier))

    @property
    def logits_multiplier(self) -> float:
        return 1.0 / float(self.model.config.logits_scaling)

    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        return mamba2_mixer_trace(block.mamba, captured, dtype, str(block.mamba.activation))
