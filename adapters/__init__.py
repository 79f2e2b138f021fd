"""Model adapters, installed as ``latim_captum.adapters``: the only model-specific code in the package.

Adding a model family means adding one module with a :class:`ModelAdapter` subclass and listing it in
:data:`ADAPTERS`.

Example:
    >>> from latim_captum.adapters import get_adapter
    >>> adapter = get_adapter(model)  # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from .base import (
    CapturedLayer,
    ModelAdapter,
    ResidualChain,
    TraceMismatchError,
    execution_device,
    onloaded,
    relative_error,
    verification_tolerance,
)
from .hf_bamba import HFBambaAdapter
from .hf_falcon_h1 import HFFalconH1Adapter
from .hf_granite import HFGraniteMoeHybridAdapter
from .hf_hybrid import HFHybridAdapter
from .hf_jamba import HFJambaAdapter
from .hf_mamba import HFFalconMambaAdapter, HFMambaAdapter
from .hf_mamba2 import HFMamba2Adapter
from .hf_nemotron_h import HFNemotronHAdapter
from .hf_zamba2 import HFZamba2Adapter
from .mamba_ssm import MambaSSMAdapter

__all__ = [
    "ADAPTERS",
    "CapturedLayer",
    "HFHybridAdapter",
    "MambaSSMAdapter",
    "ModelAdapter",
    "ResidualChain",
    "TraceMismatchError",
    "execution_device",
    "get_adapter",
    "onloaded",
    "register_adapter",
    "relative_error",
    "supported_model_classes",
    "verification_tolerance",
]

#: adapter classes tried in order by :func:`get_adapter`
ADAPTERS: list[type[ModelAdapter]] = [
    HFMambaAdapter,
    HFFalconMambaAdapter,
    HFMamba2Adapter,
    HFJambaAdapter,
    HFBambaAdapter,
    HFGraniteMoeHybridAdapter,
    HFNemotronHAdapter,
    HFFalconH1Adapter,
    HFZamba2Adapter,
]


def _mamba_ssm_importable() -> bool:
    try:  # fails on CPU-only machines (it imports its CUDA extension at top level)
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, OSError from a mismatched CUDA build, ...
        return False
    return True


if _mamba_ssm_importable():
    ADAPTERS.append(MambaSSMAdapter)


def register_adapter(adapter: type[ModelAdapter]) -> type[ModelAdapter]:
    """Add an adapter class (usable as a decorator); later registrations are tried first."""
    if adapter not in ADAPTERS:
        ADAPTERS.insert(0, adapter)
    return adapter


def supported_model_classes() -> list[str]:
    """Names of every model class some registered adapter handles."""
    return [name for adapter in ADAPTERS for name in adapter.model_class_names]


def get_adapter(model: nn.Module | ModelAdapter, *, shapes_only: bool = False) -> ModelAdapter:
    """The adapter for ``model`` (an adapter passes through).

    A subclass of a supported class is supported (the adapter of the closest class in its hierarchy is used).
    ``shapes_only=True`` also takes a model on the meta device, for what its shapes alone tell
    (:meth:`~latim_captum.adapters.base.ModelAdapter.sizes`, as :mod:`latim_captum.plan` reads them); nothing may
    run it.

    Raises:
        TypeError: no registered adapter supports the model (the message names the supported classes), or the model
            is wrapped (``DataParallel``, ``DistributedDataParallel``, ``torch.compile``: pass the wrapped module).
        ValueError: the model's weights are on the meta device (not loaded).
    """
    if isinstance(model, ModelAdapter):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _check_unwrapped(model)
    matches = [(depth, k) for k, adapter in enumerate(ADAPTERS) if (depth := adapter.match_depth(model)) is not None]
    if matches:
        if not shapes_only:
            _check_materialised(model)
        return ADAPTERS[min(matches)[1]](model)  # the closest class; ties: the first in ADAPTERS
    raise TypeError(
        f"{type(model).__name__} is not a supported Mamba model; supported classes: "
        f"{', '.join(supported_model_classes())}"
    )


#: wrappers whose forward runs elsewhere (replicas in other threads, compiled graphs that skip module hooks), and the
#: attribute that holds the model they wrap
_WRAPPERS = {"DataParallel": "module", "DistributedDataParallel": "module", "OptimizedModule": "_orig_mod"}


def _check_unwrapped(model: nn.Module) -> None:
    """``TypeError`` for a wrapper, naming the attribute that holds the model: LaTIM hooks the model's own modules
    and runs one plain forward pass, which a wrapper's replicas or compiled graph would bypass."""
    for klass in type(model).__mro__:
        attr = _WRAPPERS.get(klass.__name__)
        if attr is not None and isinstance(getattr(model, attr, None), nn.Module):
            inner = type(getattr(model, attr)).__name__
            raise TypeError(
                f"{type(model).__name__} wraps a {inner}; pass the model itself (model.{attr}): LaTIM runs one plain "
                "forward pass of it under hooks, which the wrapper would bypass"
            )


def _offloaded(module: nn.Module) -> bool:
    """Whether accelerate offloads ``module``'s weights (CPU or disk): they sit on meta between forwards and its hook
    brings the values in (:func:`~latim_captum.adapters.base.onloaded` does the same for the trace)."""
    return bool(getattr(getattr(module, "_hf_hook", None), "offload", False))


def _check_materialised(model: nn.Module) -> None:
    """``ValueError`` for a model whose weights are on the meta device (shapes without values) and not offloaded by
    accelerate."""
    offloaded = {id(p) for m in model.modules() if _offloaded(m) for p in m.parameters(recurse=False)}
    meta = next((name for name, p in model.named_parameters() if p.is_meta and id(p) not in offloaded), None)
    if meta is not None:
        raise ValueError(
            f"{type(model).__name__} has weights on the meta device ({meta}, ...): it has shapes but no values; load "
            "its weights first (e.g. from_pretrained without a meta device_map, or to_empty() then load_state_dict())"
        )
