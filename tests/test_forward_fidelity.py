"""A model whose forward is not its weights' (an unmerged LoRA, a hook that steers an activation or adds to the
residual stream) is refused, not explained as the base model: by the LaTIM trace, by the baselines that rebuild the
forward from the weights (MambaLRP, Mamba-Attribution with attention gradients), on every family."""

from __future__ import annotations

import pytest
import torch
from test_hybrids import FAMILIES, build_hybrid
from torch import nn

from conftest import build, random_ids
from latim_captum.adapters import TraceMismatchError, verification_tolerance
from latim_captum.adapters.hf_granite import HFGraniteMoeHybridAdapter
from latim_captum.attr import LatimALTI, LatimALTILogit, LatimL2, MambaAttribution, MambaLRP


def out_proj(model: nn.Module, layer: int = 0) -> nn.Module:
    return model.backbone.layers[layer].mixer.out_proj


def steer(scale: float):
    """A forward hook that scales the module's output, as activation-steering code does."""

    def hook(_module, _args, output):
        return output * scale

    return hook


class FakeLoraLinear(nn.Module):
    """The attributes peft's ``BaseTunerLayer`` exposes: ``.weight`` is the base weight, the forward adds ``B A``."""

    def __init__(self, base: nn.Linear, rank: int = 2, merged: bool = False, disable_adapters: bool = False):
        super().__init__()
        self.base_layer = base
        gen = torch.Generator().manual_seed(0)
        self.lora_A = nn.Parameter(0.3 * torch.randn(rank, base.in_features, generator=gen))
        self.lora_B = nn.Parameter(0.3 * torch.randn(base.out_features, rank, generator=gen))
        self.merged = merged
        self.disable_adapters = disable_adapters
        self.active_adapters = ["default"]

    @property
    def weight(self) -> torch.Tensor:  # as peft's: the base layer's
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, x):
        out = self.base_layer(x)
        if self.merged or self.disable_adapters:
            return out
        return out + x @ self.lora_A.T @ self.lora_B.T


def test_tolerance_is_tight_where_the_forward_is_ieee_fp32():
    assert verification_tolerance(torch.float32, "cpu") == 1e-4
    assert verification_tolerance(torch.float32, torch.device("cuda")) == 1e-2  # tf32 kernels and cuDNN
    assert verification_tolerance(torch.float32) == 1e-2  # no device known
    assert verification_tolerance(torch.float64, "cpu") == 1e-5  # HF's RMSNorms run in float32 even then
    assert verification_tolerance(torch.bfloat16, "cpu") == 5e-2
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # the CPU may then multiply in bf16
        assert verification_tolerance(torch.float32, "cpu") == 1e-2
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("scale", [1.003, 1.5])
def test_trace_refuses_a_steered_mixer(kind, scale):
    """0.3 % passed the old float32 tolerance (1e-2) silently: the maps were the unsteered model's."""
    model = build(kind)
    ids = random_ids(2, 7)
    LatimALTI(model).attribute(ids)  # the plain model is fine
    handle = out_proj(model).register_forward_hook(steer(scale))
    try:
        with pytest.raises(TraceMismatchError, match="hooks that change activations"):
            LatimALTI(model).attribute(ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("scale", [1.003, 1.5])
def test_replaying_baselines_refuse_a_steered_model(kind, scale):
    """MambaLRP and Mamba-Attribution rebuild the forward from the weights: before the check they explained the
    unsteered model without a word."""
    model = build(kind)
    ids = random_ids(2, 7)
    methods = [MambaLRP(model), MambaAttribution(model, gradient="attention")]
    for method in methods:
        method.attribute(ids, target=3)
    handle = out_proj(model, layer=1).register_forward_hook(steer(scale))
    try:
        for method in methods:
            with pytest.raises(TraceMismatchError, match="rebuilt from the weights"):
                method.attribute(ids, target=3)
    finally:
        handle.remove()


def test_unmerged_lora_is_refused_merged_or_disabled_is_explained(kind):
    model = build(kind)
    ids = random_ids(2, 7)
    mixer = model.backbone.layers[0].mixer
    base = mixer.out_proj
    expected = LatimALTILogit(model).attribute(ids, target=3)
    mixer.out_proj = FakeLoraLinear(base)
    try:
        for method in (LatimALTI(model), LatimALTILogit(model), MambaLRP(model)):
            with pytest.raises(TypeError, match="merge_and_unload"):
                method.attribute(ids, target=3)
        for flags in ({"merged": True}, {"disable_adapters": True}):  # the forward is the (merged) weights'
            mixer.out_proj = FakeLoraLinear(base, **flags)
            torch.testing.assert_close(LatimALTILogit(model).attribute(ids, target=3), expected)
    finally:
        mixer.out_proj = base


def add_to_output(vector: torch.Tensor):
    """A forward hook on a block that adds a steering vector to the residual stream it returns."""

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    return hook


@pytest.mark.parametrize("block_index", [0, 1])
@pytest.mark.parametrize("size", [0.01, 0.5])
def test_trace_refuses_a_vector_added_between_blocks(kind, block_index, size):
    """Every mixer is its weights' here, so each sublayer's own check passed: the maps gave the tokens a vector no
    sublayer made (ALTI-Logit's row summed to -0.02 against a logit of 0.60). ``block_index=1`` is the last block
    (its output feeds the final norm)."""
    model = build(kind)
    ids = random_ids(2, 7)
    LatimALTILogit(model).attribute(ids, target=3)
    vector = size * torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    handle = model.backbone.layers[block_index].register_forward_hook(add_to_output(vector))
    try:
        for method in (LatimL2(model), LatimALTI(model), LatimALTILogit(model)):
            with pytest.raises(TraceMismatchError, match="residual stream the traced sublayers add up to"):
                method.attribute(ids, target=3)
    finally:
        handle.remove()
    LatimALTILogit(model).attribute(ids, target=3)  # the hook is gone: fine again


@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_trace_refuses_a_vector_added_between_blocks(family):
    model, _ = build_hybrid(family)
    ids = random_ids(1, 6)
    LatimALTILogit(model).attribute(ids, target=3)
    vector = 0.3 * torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    handle = model.model.layers[0].register_forward_hook(add_to_output(vector))
    try:
        with pytest.raises(TraceMismatchError, match="remove hooks that change activations"):
            LatimALTILogit(model).attribute(ids, target=3)
    finally:
        handle.remove()


def test_hybrid_trace_checks_how_the_block_adds_its_mixer(monkeypatch):
    """An adapter that missed a residual scaling inside a block (here Granite's multiplier, 0.6) still recomputes
    every mixer exactly and the block's output is read from the model: only ``x' = x + M`` tells the mixer's share of
    the block from the MLP's."""
    model, _ = build_hybrid("granite")
    ids = random_ids(1, 6)
    LatimALTI(model).attribute(ids)
    monkeypatch.setattr(HFGraniteMoeHybridAdapter, "residual_multiplier", lambda self, block: 1.0)
    with pytest.raises(TraceMismatchError, match="x' = x"):
        LatimALTI(model).attribute(ids)
