"""One registry of token-to-token attribution methods, so benchmarks and the CLI treat them alike.

A method is one :class:`Method` entry: ``name -> fn(model, input_ids) -> maps``, where ``maps`` is
``[B, L, N, N]`` for a per-layer method (one map per layer, ``maps[b, l, i, j]`` = how much token j matters to query
row i at layer l) or ``[B, N, N]`` for a method that explains the whole model (one aggregated map). Rows are query
positions, columns input positions; every map is causal (zero above the diagonal).

Built in:

- ``l2``, ``alti`` (per layer) and ``alti_logit`` (aggregated), each as ``<name>`` (activation ``silu``, the paper's
  default) and ``<name>_silu_gate`` (exact): :func:`latim_captum.interactions` / :func:`latim_captum.alti_logit`.
  ALTI-Logit's target at row i is the true next token ``input_ids[i + 1]`` (the last row reuses its own token).
- Captum gradient methods (aggregated): for each query row i, the gradient of the logit of the true next token
  ``input_ids[i + 1]`` at position i w.r.t. the input embeddings ``e_j`` (``[N, D]``), reduced over D:
  ``saliency`` = ``‖∂logit/∂e_j‖_2`` (Captum ``Saliency``, abs=True, then ℓ2 over D);
  ``input_x_gradient`` = ``Σ_d e_jd ∂logit/∂e_jd`` (Captum ``InputXGradient``, summed over D as Captum's
  ``LLMGradientAttribution`` does); ``integrated_gradients`` = Captum ``IntegratedGradients`` on the embeddings
  from a zero-embedding baseline (``n_steps=16``), summed over D. Rows are batched (the input replicated per
  row), up to 256 sequences per pass.
- Baselines: ``mamba_attention`` (per layer), ``mamba_attribution``, ``mamba_lrp`` (aggregated, target = the true
  next token), from ``latim_captum.baselines``.

Example:
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=16))
    >>> ids = torch.tensor([[1, 2, 3, 15, 1, 2, 3]])
    >>> get_method("l2")(model, ids).shape, get_method("alti_logit")(model, ids).shape
    (torch.Size([1, 2, 7, 7]), torch.Size([1, 7, 7]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import baselines

__all__ = [
    "DEFAULT_MAX_SEQUENCES",
    "METHOD_REGISTRY",
    "Method",
    "available_methods",
    "get_method",
    "next_token_targets",
    "register_method",
]


#: replicated sequences per backward pass of the row-replicating methods (a GPU with mamba-ssm's kernels holds this
#: easily at N ≈ 100; the PyTorch fallback paths need far fewer on a CPU)
DEFAULT_MAX_SEQUENCES = 256


@dataclass(frozen=True)
class Method:
    """A registered attribution method.

    Attributes:
        name: registry key (CLI ``--method``).
        label: name for tables and figures.
        per_layer: True if ``fn`` returns ``[B, L, N, N]``, False for one aggregated ``[B, N, N]`` map.
        fn: ``fn(model, input_ids) -> maps``; ``fn(model, input_ids, backend=..., precision=...)`` for the
            ``"latim"`` family,
            ``fn(model, input_ids, max_sequences)`` if ``replicates_rows``.
        family: ``"latim"``, ``"gradient"`` or ``"baseline"``.
        replicates_rows: the method replicates the input once per query row for batched backward passes;
            ``max_sequences`` bounds how many replicas are in flight (memory ∝ max_sequences · N).
    """

    name: str
    label: str
    per_layer: bool
    fn: Callable[..., Tensor]
    family: str
    replicates_rows: bool = False

    def __call__(
        self,
        model: nn.Module,
        input_ids: Tensor,
        *,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        backend: str = "auto",
        precision: str = "highest",
    ) -> Tensor:
        """The maps; ``max_sequences`` bounds row-replicating methods; ``backend`` and ``precision`` pick LaTIM's
        path (:data:`latim_captum.BACKENDS`: ``"auto"``, ``"ref"``, ``"fast"``, ``"triton"``, same maps to 1e-4, the
        fast one also much faster on a CPU; ``precision`` of its ``W_o`` product), unused by the other families."""
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
        if self.family == "latim":
            maps = self.fn(model, input_ids, backend=backend, precision=precision)
        elif self.replicates_rows:
            maps = self.fn(model, input_ids, max_sequences)
        else:
            maps = self.fn(model, input_ids)
        expected = 4 if self.per_layer else 3
        if maps.dim() != expected:
            raise RuntimeError(f"method {self.name!r} returned a {maps.dim()}-d map, expected {expected}-d")
        return maps


METHOD_REGISTRY: dict[str, Method] = {}


def register_method(name: str, label: str, per_layer: bool, family: str, replicates_rows: bool = False):
    """Decorator: add ``fn(model, input_ids) -> maps`` to :data:`METHOD_REGISTRY` under ``name``."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHOD_REGISTRY[name] = Method(
            name=name, label=label, per_layer=per_layer, fn=fn, family=family, replicates_rows=replicates_rows
        )
        return fn

    return wrap


def next_token_targets(input_ids: Tensor) -> Tensor:
    """``[B, N]``: the true next token ``input_ids[:, i + 1]`` at each row; the last row keeps its own token."""
    return torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)


# --- LaTIM ---------------------------------------------------------------------------------------------------------


def _latim(method: str, activation: str) -> Callable[[nn.Module, Tensor], Tensor]:
    from .api import alti_logit, interactions

    if method == "alti_logit":
        return lambda model, ids, backend="auto", precision="highest": (
            alti_logit(
                model, ids, activation=activation, target=next_token_targets(ids), backend=backend, precision=precision
            ).scores
        )
    return lambda model, ids, backend="auto", precision="highest": interactions(
        model, ids, method=method, activation=activation, backend=backend, precision=precision
    )


for _m, _label in (("l2", "LaTIM (ℓ2)"), ("alti", "LaTIM (ALTI)"), ("alti_logit", "LaTIM (ALTI-Logit)")):
    for _act in ("silu", "silu_gate"):
        _name = _m if _act == "silu" else f"{_m}_{_act}"
        _lab = _label if _act == "silu" else f"{_label} exact"
        register_method(_name, _lab, per_layer=_m != "alti_logit", family="latim")(_latim(_m, _act))


# --- Captum gradient methods ----------------------------------------------------------------------------------------


def _gradient_maps(model: nn.Module, input_ids: Tensor, kind: str, max_batch: int = DEFAULT_MAX_SEQUENCES) -> Tensor:
    """``[B, N, N]`` gradient maps; row i explains the logit of ``input_ids[i + 1]`` at position i.

    Rows are batched: the sequence is replicated once per query row (``[R·B, N, D]``) and replica r reads the logit
    at its own row, so one forward/backward gives R rows (a replica's gradient only flows from its own row's logit).
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    embed = model.get_input_embeddings()
    targets = next_token_targets(input_ids)
    bsz, n = input_ids.shape
    was_training = model.training
    model.eval()
    out = torch.zeros(bsz, n, n, dtype=torch.float32, device=input_ids.device)

    def forward(e: Tensor, rows: Tensor) -> Tensor:
        logits = model(inputs_embeds=e, use_cache=False).logits
        return logits[torch.arange(e.shape[0], device=e.device), rows].float()

    try:
        with torch.no_grad():
            embeds = embed(input_ids).detach()
        chunk = max(1, max_batch // bsz)
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            reps = r1 - r0
            x = embeds[None].expand(reps, -1, -1, -1).reshape(reps * bsz, n, -1).clone().requires_grad_(True)
            rows = torch.arange(r0, r1, device=x.device).repeat_interleave(bsz)
            tgt = targets[:, r0:r1].T.reshape(-1)
            if kind == "saliency":
                attr = Saliency(forward).attribute(x, target=tgt, abs=True, additional_forward_args=(rows,))
                scores = attr.float().norm(dim=-1)
            elif kind == "input_x_gradient":
                attr = InputXGradient(forward).attribute(x, target=tgt, additional_forward_args=(rows,))
                scores = attr.float().sum(-1)
            else:
                attr = IntegratedGradients(forward).attribute(
                    x,
                    baselines=torch.zeros_like(x),
                    target=tgt,
                    additional_forward_args=(rows,),
                    n_steps=16,
                    internal_batch_size=max_batch,
                )
                scores = attr.float().sum(-1)
            scores = scores.detach().reshape(reps, bsz, n).transpose(0, 1)  # [B, reps, N]
            out[:, r0:r1] = scores
    finally:
        model.train(was_training)
    return out


for _kind, _label in (
    ("saliency", "Saliency (‖∇‖₂)"),
    ("input_x_gradient", "Input×Gradient"),
    ("integrated_gradients", "Integrated Gradients"),
):
    register_method(_kind, _label, per_layer=False, family="gradient", replicates_rows=True)(
        lambda model, ids, max_sequences, _k=_kind: _gradient_maps(model, ids, _k, max_batch=max_sequences)
    )


# --- Baselines (latim_captum.baselines) ---------------------------------------------------------------------------
# Each entry calls `latim_captum.baselines.<name>` as `fn(model, input_ids)`; the gradient-based ones
# (Mamba-Attribution, MambaLRP) explain the true next token, like ALTI-Logit and the Captum methods above.
# Mamba-Attention is per layer ([B, L, N, N]); the other two aggregate the whole model ([B, N, N]).

BASELINES = {
    "mamba_attention": "Mamba-Attention",
    "mamba_attribution": "Mamba-Attribution",
    "mamba_lrp": "MambaLRP",
}


#: baselines that replicate the input once per query row for batched backward passes (their ``row_batch``)
ROW_REPLICATING_BASELINES = ("mamba_lrp", "mamba_attribution")


def _baseline(name: str) -> Callable[..., Tensor]:
    fn = getattr(baselines, name)

    if name in ROW_REPLICATING_BASELINES:  # keep ≤ max_sequences sequences in flight

        def call_rows(model: nn.Module, input_ids: Tensor, max_sequences: int) -> Tensor:
            row_batch = max(1, max_sequences // len(input_ids))
            return fn(model, input_ids, target=next_token_targets(input_ids), row_batch=row_batch)

        return call_rows

    def call(model: nn.Module, input_ids: Tensor) -> Tensor:
        if name == "mamba_attention":
            return fn(model, input_ids)
        return fn(model, input_ids, target=next_token_targets(input_ids))

    return call


for _name, _label in BASELINES.items():
    register_method(
        _name,
        _label,
        per_layer=_name == "mamba_attention",
        family="baseline",
        replicates_rows=_name in ROW_REPLICATING_BASELINES,
    )(_baseline(_name))


def available_methods(include_baselines: bool = True) -> list[str]:
    """Registered method names (the baselines only with ``include_baselines``)."""
    names = []
    for name, method in METHOD_REGISTRY.items():
        if method.family == "baseline" and not include_baselines:
            continue
        names.append(name)
    return names


def get_method(name: str) -> Method:
    """The registered :class:`Method` called ``name``; a clear ``ValueError`` for unknown or missing ones."""
    if name not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_REGISTRY)}")
    return METHOD_REGISTRY[name]
