"""The one method table: every attribution method the package offers, and where each front end finds it.

An entry says what a method is (its family, the measure it reduces, whether it gives one map per layer or one
aggregated map, whether it explains a target token) and under which names the front ends offer it: the plain
functions (:data:`latim_captum.api.METHODS` for LaTIM), the registry of :mod:`latim_captum.methods` (benchmarks,
the CLI), the Captum classes of :mod:`latim_captum.attr` and the Inseq methods of :mod:`latim_captum.inseq`. Each
front end reads this table; adding a LaTIM method whose measure :mod:`latim_captum.maps` already reduces is one
entry here (``docs/contributing.rst`` has the recipe).

LaTIM methods appear in the registry once per activation strategy of :data:`REGISTRY_ACTIVATIONS`: ``l2`` (the
paper's ``silu``) and ``l2_silu_gate`` (exact for SiLU models).

Example:
    >>> get("alti_logit").uses_target, get("l2").per_layer
    (True, True)
    >>> registry_entry("alti_silu_gate")
    (MethodSpec(name='alti', ...), 'silu_gate')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "FAMILIES",
    "MethodSpec",
    "METHOD_TABLE",
    "REGISTRY_ACTIVATIONS",
    "get",
    "latim_methods",
    "registry_names",
    "registry_entry",
]

#: ``"latim"`` (this package's decomposition), ``"gradient"`` (Captum's gradient methods), ``"baseline"`` (the
#: paper's baselines for Mamba)
FAMILIES: tuple[str, ...] = ("latim", "gradient", "baseline")


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method.

    Attributes:
        name: the method's key (``interactions(method=...)`` for LaTIM; the registry and ``latim --method``).
        label: name for tables and figures.
        family: one of :data:`FAMILIES`.
        per_layer: one map per layer (``[B, L, N, N]``) rather than one aggregated map (``[B, N, N]``).
        uses_target: the map explains a target token's logit (and changes with the target).
        measure: LaTIM only: what :mod:`latim_captum.maps` reduces per layer (an ℓp name, ``"alti"``,
            ``"alti_no_residual"``), ``"alti_logit"`` (the aggregated ALTI-Logit of eq 8) or ``"alti_logit_layers"``
            (eq 8's term of each layer).
        captum: the class name in :mod:`latim_captum.attr` (None: no Captum class).
        inseq: the Inseq identifiers (``inseq.load_model(model, name)``).
        demo: run by ``latim demo`` and the copying benchmark by default.
    """

    name: str
    label: str
    family: str
    per_layer: bool
    uses_target: bool
    measure: str | None = None
    captum: str | None = None
    inseq: tuple[str, ...] = field(default=())
    demo: bool = True

    def __repr__(self) -> str:
        return f"MethodSpec(name={self.name!r}, ...)"


#: registry name suffix → activation strategy of the LaTIM methods' registry entries
REGISTRY_ACTIVATIONS: dict[str, str] = {"": "silu", "_silu_gate": "silu_gate"}

METHOD_TABLE: tuple[MethodSpec, ...] = (
    MethodSpec("l1", "LaTIM (ℓ1)", "latim", True, False, measure="l1", captum="LatimL1", inseq=("latim_l1",),
               demo=False),
    MethodSpec("l2", "LaTIM (ℓ2)", "latim", True, False, measure="l2", captum="LatimL2", inseq=("latim_l2",)),
    MethodSpec("alti", "LaTIM (ALTI)", "latim", True, False, measure="alti", captum="LatimALTI",
               inseq=("latim_alti",)),
    MethodSpec("alti_no_residual", "LaTIM (ALTI, no residual)", "latim", True, False, measure="alti_no_residual",
               captum="LatimALTINoResidual", inseq=("latim_alti_no_residual",)),
    MethodSpec("alti_logit", "LaTIM (ALTI-Logit)", "latim", False, True, measure="alti_logit",
               captum="LatimALTILogit", inseq=("latim", "latim_alti_logit")),
    MethodSpec("alti_logit_layers", "LaTIM (ALTI-Logit, per layer)", "latim", True, True,
               measure="alti_logit_layers", captum="LatimALTILogitLayers", inseq=("latim_alti_logit_layers",)),
    MethodSpec("saliency", "Saliency (‖∇‖₂)", "gradient", False, True),
    MethodSpec("input_x_gradient", "Input×Gradient", "gradient", False, True),
    MethodSpec("integrated_gradients", "Integrated Gradients", "gradient", False, True),
    MethodSpec("mamba_attention", "Mamba-Attention", "baseline", True, False, captum="MambaAttention",
               inseq=("mamba_attention",)),
    MethodSpec("mamba_attribution", "Mamba-Attribution", "baseline", False, True, captum="MambaAttribution",
               inseq=("mamba_attribution",)),
    MethodSpec("mamba_lrp", "MambaLRP", "baseline", False, True, captum="MambaLRP", inseq=("mamba_lrp",)),
)  # fmt: skip

_BY_NAME = {spec.name: spec for spec in METHOD_TABLE}


def get(name: str) -> MethodSpec:
    """The entry called ``name``; a ``ValueError`` naming the choices otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def latim_methods() -> tuple[MethodSpec, ...]:
    """The LaTIM entries, in table order."""
    return tuple(spec for spec in METHOD_TABLE if spec.family == "latim")


def _registry() -> Iterator[tuple[str, MethodSpec, str | None]]:
    for spec in METHOD_TABLE:
        if spec.family == "latim":
            for suffix, activation in REGISTRY_ACTIVATIONS.items():
                yield spec.name + suffix, spec, activation
        else:
            yield spec.name, spec, None


def registry_names(demo_only: bool = False) -> list[str]:
    """Every registry name: each LaTIM entry once per :data:`REGISTRY_ACTIVATIONS`, the others once (with
    ``demo_only``, those of the entries ``latim demo`` runs)."""
    return [name for name, spec, _ in _registry() if spec.demo or not demo_only]


def registry_entry(name: str) -> tuple[MethodSpec, str | None]:
    """The entry and activation strategy (None outside LaTIM) behind a registry name; ``ValueError`` otherwise."""
    for key, spec, activation in _registry():
        if key == name:
            return spec, activation
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(registry_names())}")
