"""One registry of token-to-token attribution methods, so benchmarks and the CLI treat them alike.

The registry is built from the method table (:mod:`latim_captum.catalog`): each LaTIM entry once per activation of
``catalog.REGISTRY_ACTIVATIONS``, every other entry once. A method is one :class:`Method` entry:
``name -> fn(model, input_ids) -> maps``, where ``maps`` is ``[B, L, N, N]`` for a per-layer method (one map per
layer, ``maps[b, l, i, j]`` = how much token j matters to query row i at layer l) or ``[B, N, N]`` for a method that
explains the whole model (one aggregated map). Rows are query positions, columns input positions; every map is causal
(zero above the diagonal).

Built in:

- ``l1``, ``l2``, ``alti``, ``alti_no_residual``, ``alti_logit_layers`` (per layer) and ``alti_logit``
  (aggregated), each as ``<name>`` (activation ``silu``, the paper's default) and ``<name>_silu_gate`` (exact):
  :func:`latim_captum.interactions` / :func:`latim_captum.alti_logit`.
  ALTI-Logit's target at row i is the true next token ``input_ids[i + 1]`` (the last row reuses its own token)
  unless the call asks for another (``target=``, below).
- Captum gradient methods (aggregated): for each query row i, the gradient of the logit of the true next token
  ``input_ids[i + 1]`` at position i w.r.t. the input embeddings ``e_j`` (``[N, D]``), reduced over D:
  ``saliency`` = ``‖∂logit/∂e_j‖_2`` (Captum ``Saliency``, abs=True, then ℓ2 over D);
  ``input_x_gradient`` = ``Σ_d e_jd ∂logit/∂e_jd`` (Captum ``InputXGradient``, summed over D as Captum's
  ``LLMGradientAttribution`` does); ``integrated_gradients`` = Captum ``IntegratedGradients`` on the embeddings
  from a zero-embedding baseline (``n_steps=16``), summed over D. Rows are batched (the input replicated per
  row), up to 256 sequences per pass.
- Baselines: ``mamba_attention`` (per layer), ``mamba_attribution``, ``mamba_lrp`` (aggregated, target = the true
  next token), from ``latim_captum.baselines``.

Every method that explains a logit (``spec.uses_target``) takes ``target=``: ``"next"`` (default, the true next
token at each row), ``"predicted"`` (the model's own argmax at each row, one extra forward pass) or a ``[B, N]``
tensor of token ids, one per row; the others refuse anything but the default.

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
from ._model_state import eval_mode
from ._validation import check_size
from .catalog import MethodSpec, registry_entry, registry_names
from .gradient_rows import gradient_rows

__all__ = [
    "DEFAULT_MAX_SEQUENCES",
    "METHOD_REGISTRY",
    "Method",
    "available_methods",
    "get_method",
    "next_token_targets",
    "register_method",
    "row_targets",
]


#: replicated sequences per backward pass of the row-replicating methods (a GPU with mamba-ssm's kernels holds this
#: easily at N ≈ 100; the PyTorch fallback paths need far fewer on a CPU)
DEFAULT_MAX_SEQUENCES = 256


@dataclass(frozen=True)
class Method:
    """A registered attribution method: a table entry (:class:`~latim_captum.catalog.MethodSpec`) with its callable.

    Attributes:
        name: registry key (CLI ``--method``).
        spec: the method table's entry.
        activation: the LaTIM activation strategy of this entry (None outside LaTIM).
        fn: ``fn(model, input_ids) -> maps``; ``fn(model, input_ids, backend=..., precision=...)`` for the
            ``"latim"`` family, ``fn(model, input_ids, max_sequences)`` if ``replicates_rows``; built-in methods
            that explain a logit also take ``targets=`` (``[B, N]`` token ids, one per row).
        replicates_rows: the method replicates the input once per query row for batched backward passes;
            ``max_sequences`` bounds how many replicas are in flight (memory ∝ max_sequences · N).
    """

    name: str
    spec: MethodSpec
    activation: str | None
    fn: Callable[..., Tensor]
    replicates_rows: bool = False

    @property
    def label(self) -> str:
        """Name for tables and figures (the exact activation strategy is marked)."""
        return f"{self.spec.label} exact" if self.activation == "silu_gate" else self.spec.label

    @property
    def takes_dtype(self) -> bool:
        """True if ``dtype=`` sets the compute dtype (LaTIM and the table's baselines); the gradient methods and
        methods of your own compute in the model's dtype."""
        return self.family == "latim" or (self.family == "baseline" and self.name in BASELINE_NAMES)

    @property
    def per_layer(self) -> bool:
        """True if :attr:`fn` returns ``[B, L, N, N]``, False for one aggregated ``[B, N, N]`` map."""
        return self.spec.per_layer

    @property
    def family(self) -> str:
        """``"latim"``, ``"gradient"`` or ``"baseline"``."""
        return self.spec.family

    def __call__(
        self,
        model: nn.Module,
        input_ids: Tensor,
        *,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        backend: str = "auto",
        precision: str = "highest",
        target: str | Tensor = "next",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The maps; ``max_sequences`` bounds row-replicating methods; ``backend`` and ``precision`` pick LaTIM's
        path (:data:`latim_captum.BACKENDS`: ``"auto"``, ``"ref"``, ``"fast"``, ``"triton"``, same maps to 1e-4, the
        fast one also much faster on a CPU; ``precision`` of its ``W_o`` product), unused by the other families;
        ``target`` is the token each row explains (:func:`row_targets`), for the methods that explain one; ``dtype``
        is the compute dtype (float32 or float64) of LaTIM and the table's baselines.

        Raises:
            ValueError: ``target`` other than ``"next"`` for a method that explains no token, or a bad ``target``;
                ``dtype`` other than float32 for the gradient methods and methods of your own (those compute in the
                model's dtype).
        """
        check_size("max_sequences", max_sequences)
        if not self.takes_dtype and dtype != torch.float32:
            raise ValueError(f"dtype={dtype}: method {self.name!r} computes in the model's dtype")
        kwargs: dict = {"dtype": dtype} if self.takes_dtype else {}
        if self.spec.uses_target:
            kwargs["targets"] = row_targets(model, input_ids, target)
        elif not (isinstance(target, str) and target == "next"):
            raise ValueError(f"method {self.name!r} explains no target token; target={target!r} has no effect on it")
        if self.family == "latim":
            maps = self.fn(model, input_ids, backend=backend, precision=precision, **kwargs)
        elif self.replicates_rows:
            maps = self.fn(model, input_ids, max_sequences, **kwargs)
        else:
            maps = self.fn(model, input_ids, **kwargs)
        expected = 4 if self.per_layer else 3
        if maps.dim() != expected:
            raise RuntimeError(f"method {self.name!r} returned a {maps.dim()}-d map, expected {expected}-d")
        return maps


def next_token_targets(input_ids: Tensor, last: Tensor | None = None) -> Tensor:
    """``[B, N]``: the true next token ``input_ids[:, i + 1]`` at each row; the last row, which has none, takes
    ``last`` (``[B]``, e.g. the model's prediction there) or keeps its own token."""
    tail = input_ids[:, -1:] if last is None else last.reshape(-1, 1).to(input_ids)
    return torch.cat([input_ids[:, 1:], tail], dim=1)


#: what ``target=`` of a registry method may name besides a tensor
TARGET_KINDS = ("next", "predicted")


def row_targets(model: nn.Module, input_ids: Tensor, target: str | Tensor = "next") -> Tensor:
    """``[B, N]`` token ids explained at each row: ``"next"`` the true next token (:func:`next_token_targets`),
    ``"predicted"`` the model's own argmax at each row (one forward pass, the model's train/eval flags kept), or a
    ``[B, N]`` tensor of ids, checked against the input's shape and the vocabulary.

    Raises:
        ValueError: an unknown kind, a tensor of another shape or dtype, or an id outside the vocabulary.
    """
    if isinstance(target, str):
        if target == "next":
            return next_token_targets(input_ids)
        if target == "predicted":
            with torch.no_grad(), eval_mode(model):
                return model(input_ids=input_ids, use_cache=False).logits.argmax(-1)
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGET_KINDS)} or a [B, N] tensor of ids")
    if not isinstance(target, Tensor) or target.shape != input_ids.shape:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be a [B, N] = {tuple(input_ids.shape)} tensor of token ids, got {shape}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"target must hold integer token ids, got dtype {target.dtype}")
    vocab = model.get_input_embeddings().num_embeddings
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise ValueError(f"target ids must lie in [0, {vocab}), got [{int(target.min())}, {int(target.max())}]")
    return target.to(input_ids.device)


# --- LaTIM ---------------------------------------------------------------------------------------------------------


def latim_map_fn(spec: MethodSpec, activation: str) -> Callable[..., Tensor]:
    """``fn(model, ids, backend="auto", precision="highest", dtype=torch.float32) -> maps`` of a LaTIM table entry
    under ``activation``; the methods that explain a logit read ``targets`` at each row (default the true next token,
    :func:`next_token_targets`)."""
    from .api import interactions

    def maps(
        model: nn.Module,
        ids: Tensor,
        backend: str = "auto",
        precision: str = "highest",
        targets: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        target = (next_token_targets(ids) if targets is None else targets) if spec.uses_target else None
        return interactions(
            model, ids, method=spec.measure, activation=activation, target=target, backend=backend,
            precision=precision, dtype=dtype,
        )  # fmt: skip

    return maps


# --- Captum gradient methods ----------------------------------------------------------------------------------------


def _gradient_maps(
    model: nn.Module,
    input_ids: Tensor,
    kind: str,
    max_batch: int = DEFAULT_MAX_SEQUENCES,
    targets: Tensor | None = None,
) -> Tensor:
    """``[B, N, N]`` gradient maps; row i explains the logit of ``targets[:, i]`` (default the true next token
    ``input_ids[i + 1]``) at position i (:func:`latim_captum.gradient_rows.gradient_rows` on every row)."""
    targets = next_token_targets(input_ids) if targets is None else targets
    rows = range(input_ids.shape[1])
    return gradient_rows(model, input_ids, kind, rows=rows, targets=targets, max_sequences=max_batch)


#: replicated sequences per backward pass of the row-replicating baselines (their ``row_batch``)
ROW_REPLICATING_BASELINES = ("mamba_lrp", "mamba_attribution")


def _baseline(name: str) -> Callable[..., Tensor]:
    # Each calls `latim_captum.baselines.<name>` as `fn(model, input_ids)`; the gradient-based ones (Mamba-Attribution,
    # MambaLRP) explain ``targets`` (default the true next token), like ALTI-Logit and the Captum methods above.
    fn = getattr(baselines, name)

    if name in ROW_REPLICATING_BASELINES:  # keep ≤ max_sequences sequences in flight

        def call_rows(
            model: nn.Module,
            ids: Tensor,
            max_sequences: int,
            targets: Tensor | None = None,
            dtype: torch.dtype = torch.float32,
        ) -> Tensor:
            row_batch = max(1, max_sequences // len(ids))
            targets = next_token_targets(ids) if targets is None else targets
            return fn(model, ids, target=targets, row_batch=row_batch, dtype=dtype)

        return call_rows

    def call(model: nn.Module, input_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:  # Mamba-Attention
        return fn(model, input_ids, dtype=dtype)

    return call


#: the table's baselines (their functions take ``dtype=``); a method registered under family "baseline" is not one
BASELINE_NAMES = ("mamba_attention", "mamba_attribution", "mamba_lrp")


def _method(name: str) -> Method:
    spec, activation = registry_entry(name)
    if spec.family == "latim":
        return Method(name, spec, activation, latim_map_fn(spec, activation))
    if spec.family == "gradient":

        def gradient(model: nn.Module, ids: Tensor, max_sequences: int, targets: Tensor | None = None) -> Tensor:
            return _gradient_maps(model, ids, spec.name, max_batch=max_sequences, targets=targets)

        return Method(name, spec, None, gradient, replicates_rows=True)
    return Method(name, spec, None, _baseline(spec.name), replicates_rows=spec.name in ROW_REPLICATING_BASELINES)


#: every method of the table under its registry name (see :func:`latim_captum.catalog.registry_names`)
METHOD_REGISTRY: dict[str, Method] = {name: _method(name) for name in registry_names()}


def register_method(name: str, label: str, per_layer: bool, family: str, replicates_rows: bool = False):
    """Decorator: add ``fn(model, input_ids) -> maps`` to :data:`METHOD_REGISTRY` under ``name`` (a method of your
    own, outside the table: it runs in the CLI and the benchmarks, not as a Captum class or Inseq method)."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        spec = MethodSpec(name, label, family, per_layer, uses_target=False, demo=False)
        METHOD_REGISTRY[name] = Method(name, spec, None, fn, replicates_rows=replicates_rows)
        return fn

    return wrap


def available_methods(include_baselines: bool = True, demo_only: bool = False) -> list[str]:
    """Registered method names (the baselines only with ``include_baselines``; with ``demo_only``, those the demo
    and the copying benchmark run by default)."""
    names = []
    for name, method in METHOD_REGISTRY.items():
        if method.family == "baseline" and not include_baselines:
            continue
        if demo_only and not method.spec.demo:
            continue
        names.append(name)
    return names


def get_method(name: str) -> Method:
    """The registered :class:`Method` called ``name``; a clear ``ValueError`` for unknown or missing ones."""
    if name not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_REGISTRY)}")
    return METHOD_REGISTRY[name]
