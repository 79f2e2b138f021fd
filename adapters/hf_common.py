"""Shared structure of the Hugging Face Mamba families: ``backbone.layers[i].mixer``, ``norm_f``, ``lm_head``.

Family adapters (``hf_mamba``, ``hf_mamba2``) subclass :class:`HFBackboneAdapter` and add only the mixer maths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ModelAdapter, mro_depth

__all__ = [
    "HFBackboneAdapter",
    "causal_depthwise_conv",
    "apply_padding_mask",
    "weight",
    "gated_norm_groups",
]


def weight(param: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A detached copy of a parameter in the compute dtype (None stays None)."""
    return None if param is None else param.detach().to(dtype)


def apply_padding_mask(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Zero padded positions, as the HF mixers do before the in-projection and after the conv."""
    return hidden if mask is None else hidden * mask[:, :, None].to(hidden.dtype)


def causal_depthwise_conv(x: Tensor, conv_weight: Tensor, conv_bias: Tensor | None) -> Tensor:
    """``ψ_s = Σ_k w_k ⊙ x_{s-K+1+k} + b`` for ``x: [B, N, C]`` and ``conv_weight: [C, K]``; returns ``[B, N, C]``."""
    kernel = conv_weight.shape[-1]
    out = F.conv1d(x.transpose(1, 2), conv_weight[:, None, :], conv_bias, padding=kernel - 1, groups=x.shape[-1])
    return out[..., : x.shape[1]].transpose(1, 2)


def gated_norm_groups(norm: nn.Module, width: int) -> int:
    """Channel groups over which a Mamba-2 gated RMSNorm takes its mean square, as the installed module does it.

    ``rsqrt(mean_group(u²) + ε)`` over ``width / group_size`` groups. Read from the module, not the config: the
    same ``n_groups`` config normalises over *all* channels in transformers ≤ 5.17 (``MambaRMSNormGated`` had no
    ``group_size``) and per group later, so a trace must follow the code that actually ran.

    Example:
        >>> gated_norm_groups(model.backbone.layers[0].mixer.norm, 128)  # doctest: +SKIP
        2
    """
    if getattr(norm, "group_size", None) is not None:
        return width // int(norm.group_size)
    if getattr(norm, "n_groups", None) is not None:
        return int(norm.n_groups)
    return 1


class HFBackboneAdapter(ModelAdapter):
    """Adapter base for HF models laid out as ``<Family>ForCausalLM.backbone`` / ``<Family>Model``.

    Subclasses list their ``causal_lm_class``/``base_class`` names and implement :meth:`mixer_trace`.
    """

    causal_lm_class: ClassVar[str] = ""
    base_class: ClassVar[str] = ""
    #: where the parts live: ``model.<backbone_attr>`` (absent on a base model), then on the backbone
    backbone_attr: ClassVar[str] = "backbone"
    embeddings_attr: ClassVar[str] = "embeddings"
    final_norm_attr: ClassVar[str] = "norm_f"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return cls.match_depth(model) is not None

    @classmethod
    def match_depth(cls, model: nn.Module) -> int | None:
        return mro_depth(model, [name for name in (cls.causal_lm_class, cls.base_class) if name])

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, self.backbone_attr, self.model)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return list(self.backbone.layers)

    def mixer(self, block: nn.Module) -> nn.Module:
        return block.mixer

    def pre_norm(self, block: nn.Module) -> nn.Module:
        """The block's RMSNorm before its mixer (what the gradient baselines' replay runs)."""
        return block.norm

    @property
    def embeddings(self) -> nn.Module:
        return getattr(self.backbone, self.embeddings_attr)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.backbone, self.final_norm_attr)

    @property
    def lm_head(self) -> nn.Module | None:
        return getattr(self.model, "lm_head", None)

    @property
    def activation_name(self) -> str:
        return str(self.model.config.hidden_act)
