"""Continued training that switches a trained SiLU model's conv activation gradually to another (the paper's
App. B.3, how its Table 5 ReLU and Identity models were made).

The paper does not retrain its ReLU and no-activation models from scratch: it continues training the SiLU model
while the conv activation moves from SiLU to the new one,

    φ_α(ψ) = (1 − α)·SiLU(ψ) + α·new(ψ),     α(step) = min(1, step / (total − decay))²

with a warm-up–stable–decay learning rate whose decay phase (the last ``decay`` steps) is the one where the model
runs on the new activation alone (α = 1). A run that ends there is exactly a ``hidden_act = new`` model, which is
what it is saved as. A run cut before α reaches 1 computes neither model: its folder records α
(``config.latim_switch_alpha``) and the new activation (``config.latim_switch_to``) under ``hidden_act =``
:data:`CUT_ACT`, a name no transformers activation has, so transformers' own loaders (``from_pretrained``, Inseq's
``load_model``) refuse the folder as :func:`latim_captum._loading.load_pretrained` does, until the run is resumed and
finished.

The blend lives in each mixer's ``act`` (:class:`SwitchActivation`). transformers releases differ in whether their
PyTorch path applies ``mixer.act`` or the activation named by ``mixer.activation`` (5.25 does the latter), and the
fused CUDA kernels apply SiLU or nothing, so a switching model trains on the unfused forward
(:mod:`latim_captum.tasks.unfused`), which applies ``mixer.act`` itself: the kernels on CUDA, the plain-PyTorch
references on the CPU.

Example:
    >>> act = SwitchActivation("relu")
    >>> act.alpha = switch_alpha(50, steps=200, decay=100)   # (50 / 100)² = 0.25
    >>> float(act(torch.tensor(-1.0)))  # 0.75 · SiLU(−1) + 0.25 · ReLU(−1)
    -0.2017...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CUT_ACT",
    "SWITCH_FROM",
    "SwitchActivation",
    "install_switch_",
    "mark_cut_",
    "set_alpha_",
    "switch_alpha",
    "uncut_",
]

#: the activation a switch starts from (the trained models' and the paper's)
SWITCH_FROM = "silu"
#: ``hidden_act`` of a model saved mid-switch: not in transformers' ``ACT2FN``, so building the model from its config
#: fails (a ``KeyError`` naming it) rather than giving the new activation's model weights that are not its own
CUT_ACT = "latim_switch_cut"


def switch_alpha(done: int, *, steps: int, decay: int) -> float:
    """``α = min(1, done / (steps − decay))²`` after ``done`` optimiser steps of a ``steps``-step run whose last
    ``decay`` steps run on the new activation alone (App. B.3); ``ValueError`` unless ``1 <= decay < steps`` (the
    run must end on steps at ``α = 1``, or it is neither activation's model)."""
    if not 1 <= decay < steps:
        raise ValueError(f"the switch needs 1 <= decay < steps, got decay {decay} of {steps} steps")
    return min(1.0, done / (steps - decay)) ** 2


class SwitchActivation(nn.Module):
    """``φ_α(ψ) = (1 − α)·SiLU(ψ) + α·new(ψ)``; ``alpha`` (a float, 0 at construction) is set from outside.

    At ``α = 0`` it is SiLU and at ``α = 1`` the new activation, exactly (no blend is computed at either end)."""

    def __init__(self, new: str) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.new_name = new
        self.new = ACT2FN[new]
        self.alpha = 0.0

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha >= 1.0:
            return self.new(x)
        if self.alpha <= 0.0:
            return F.silu(x)
        return torch.lerp(F.silu(x), self.new(x), self.alpha)

    def extra_repr(self) -> str:
        return f"silu -> {self.new_name}, alpha={self.alpha:.4f}"


def install_switch_(model: nn.Module, new: str) -> list[SwitchActivation]:
    """Give each Mamba mixer of ``model`` a :class:`SwitchActivation` to ``new`` as its ``act`` and ``new`` as its
    activation name, and the config ``hidden_act = new`` (what the model is once ``α = 1``). Returns the switches
    (α 0: the model still computes its SiLU self). ``ValueError`` for a model without Mamba mixers."""
    from .models import mamba_mixers

    switches = []
    for module in mamba_mixers(model):
        module.act = SwitchActivation(new)
        module.activation = new
        switches.append(module.act)
    if not switches:
        raise ValueError(f"{type(model).__name__} has no Mamba mixer whose activation could be switched")
    model.config.hidden_act = new
    return switches


def set_alpha_(switches: list[SwitchActivation], alpha: float) -> None:
    """Set every switch's ``α``."""
    for switch in switches:
        switch.alpha = float(alpha)


def mark_cut_(config, alpha: float) -> None:
    """Mark ``config`` as a model cut mid-switch at ``alpha`` < 1 (before it is saved): ``latim_switch_alpha``, the new
    activation as ``latim_switch_to`` and ``hidden_act =`` :data:`CUT_ACT`. ``ValueError`` for ``alpha`` >= 1."""
    if alpha >= 1.0:
        raise ValueError(f"a switch at alpha {alpha} has ended: the model is its new activation's, not cut")
    if config.hidden_act != CUT_ACT:
        config.latim_switch_to = config.hidden_act
    config.latim_switch_alpha = float(alpha)
    config.hidden_act = CUT_ACT


def uncut_(config) -> None:
    """Undo :func:`mark_cut_` on a loaded config (``hidden_act`` the new activation again), for the run that resumes
    the switch; any other config is left as it is."""
    if config.hidden_act == CUT_ACT:
        config.hidden_act = config.latim_switch_to
