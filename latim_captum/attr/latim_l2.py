"""LaTIM (ℓp): the norm of each token's contribution vector, per layer (eq 5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from latim_captum import catalog
from latim_captum.activations import DEFAULT_ACTIVATION
from latim_captum.adapters import ModelAdapter
from latim_captum.aggregate import lp_measure

from .latim_measure import LatimMeasure

__all__ = ["LatimL2"]


class LatimL2(LatimMeasure):
    r"""LaTIM (ℓp) as a Captum attribution: ``C_ij = ‖T_i(x_j)‖_p`` at one layer (eq 5, ``p = 2`` by default).

    ``T_i(x_j)`` is token j's contribution vector to the mixer output at position i (eqs 16-25). Scores are
    non-negative and target-free (``target`` is validated, then ignored). ``layer`` defaults to the last layer; a
    list or ``"all"`` stacks a layer dimension after the batch.

    Args:
        model: a supported Mamba model (HF Mamba / FalconMamba / Mamba-2, with or without LM head).
        p: the norm's order (``p >= 1``, ``math.inf`` allowed).
        activation: the additive ``f`` of eq 19: ``"silu_gate"`` (the default, exact for SiLU models), ``"silu"``
            (the paper's), ``"identity"``, ``"taylor1"``, ``"taylor2"``.
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`): ``"auto"`` (the tiles, on every device), ``"ref"``
            (the readable reference), ``"fast"`` or ``"triton"`` (the Triton kernels: the fastest on a GPU); same
            values.
        precision: the tiled paths' ``W_o`` product, ``"highest"``, ``"tf32"`` or ``"bf16"``.

    ``attribute`` without ``return_matrix`` computes only the query row (O(N·d·D) per layer).

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimL2
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> ids = torch.tensor([[3, 1, 4, 1, 5]])
        >>> LatimL2(model).attribute(ids).shape                   # last token, last layer
        torch.Size([1, 5])
        >>> LatimL2(model, p=1).attribute(ids, layer="all").shape
        torch.Size([1, 2, 5])
    """

    method_spec = catalog.get("l2")
    measure = "l2"

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        p: float = 2.0,
        activation: str = DEFAULT_ACTIVATION,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        precision: str = "highest",
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p >= 1):
            raise ValueError(f"p must be a number >= 1 (or math.inf), got {p!r}")
        super().__init__(model, activation=activation, dtype=dtype, backend=backend, precision=precision)
        self.p = float(p)

    def layer_measure(self) -> str:
        return lp_measure(self.p)

    def __repr__(self) -> str:
        p = "inf" if math.isinf(self.p) else f"{self.p:g}"
        return f"LatimL2(p={p}, activation={self.options['activation']!r})"
