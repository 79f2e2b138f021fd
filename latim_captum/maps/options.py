"""The engine's option names and their checks: backends, precisions, tile kernels and measures.

Every front end (functions, Captum classes, Inseq methods, the CLI) takes ``backend`` and ``precision`` by these
names and checks them here, so an unknown name fails the same way everywhere.

Example:
    >>> check_backend("fast"); resolve_backend("auto", torch.device("cpu"))
    'fast'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from latim_captum._precision import fp32_math
from latim_captum.aggregate import lp_order

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "KERNELS",
    "MEASURES",
    "TILED_MEASURES",
    "LatimMemoryError",
    "check_backend",
    "resolve_backend",
    "check_precision_name",
    "check_precision",
    "check_measures",
    "tiled_measures",
    "matmul_precision",
]

#: LaTIM's paths: ``"ref"`` (readable reference, the oracle), ``"fast"`` (PyTorch tiles), ``"triton"`` (the tiles'
#: Triton kernels, CUDA), ``"auto"`` (the PyTorch tiles, on every device)
BACKENDS: tuple[str, ...] = ("auto", "ref", "fast", "triton")
#: operand precision of the tiled paths' ``W_o`` product (reductions always run in the compute dtype)
PRECISIONS: tuple[str, ...] = ("highest", "tf32", "bf16")
#: implementations of the tiles: PyTorch ops, or the Triton kernels of :mod:`latim_captum.maps.triton`
KERNELS: tuple[str, ...] = ("torch", "triton")
#: per-layer measures by name; any ``"l<p>"`` (``p ≥ 1``) and ``"linf"`` are ℓp norms too. ``"alti_no_residual"``
#: is ALTI with the residual left out of the proximities (the sublayer's own output ``Σ_j T_i(x_j)`` in place of
#: ``y_i``; the paper's Table 1 read literally), made by :func:`~latim_captum.maps.layer.layer_maps` on any backend
MEASURES: tuple[str, ...] = ("l1", "l2", "alti", "logit", "alti_no_residual")
#: what the tiled paths reduce (ℓp of any order, ALTI, the logit); anything else takes the reference path
TILED_MEASURES: tuple[str, ...] = ("l1", "l2", "alti", "logit")


class LatimMemoryError(MemoryError):
    """A request cannot fit in the device's free memory; the message gives the estimate and what to do."""


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` naming ``backend`` unless it is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The path ``backend`` names on ``device``: ``"auto"`` is the PyTorch tiles on every device.

    They are the fastest path measured on each: on CUDA, the engine of every timing in ``docs/performance.md``; on a
    CPU, 4–17× faster than the reference for Mamba-1 (its decay factorised around anchors) and 0.9–2.4× for Mamba-2
    (``benchmarks/results/cpu-paths-2026-12-05.md``), and a hybrid's attention and MLP sublayers 1–675×
    (``hybrid-tiles-cpu-2026-12-04.md``). ``"ref"`` stays the readable oracle every path is tested against; the
    Triton kernels stay opt-in (they compile and autotune on first use). ``device`` is where the layer lives (every
    device resolves alike today).
    """
    check_backend(backend)
    return "fast" if backend == "auto" else backend


def check_precision_name(precision: str) -> None:
    """``ValueError`` naming ``precision`` unless it is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def check_precision(precision: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """``ValueError`` for an unknown ``precision``, a reduced one on a path that computes in the compute dtype, or
    ``"tf32"`` where it would change nothing (off CUDA: no TF32 units; a float64 compute dtype: TF32 rounds float32
    products only), which would otherwise return ``"highest"``'s maps under another name."""
    check_precision_name(precision)
    if precision != "highest" and resolve_backend(backend, device) == "ref":
        raise ValueError(
            f"precision={precision!r} sets the W_o product of backend='fast' or 'triton'; backend={backend!r} "
            f"takes the reference path on {device.type}, which computes in the compute dtype only"
        )
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision='tf32' runs the W_o product on CUDA's TF32 units; on {device.type} it would run "
                         "in IEEE float32, as 'highest' does ('bf16' rounds its operands on any device)")  # fmt: skip
    if precision == "tf32" and dtype == torch.float64:
        raise ValueError("precision='tf32' rounds float32 products; this compute dtype is float64, whose products "
                         "it leaves as they are (use 'bf16', or a float32 compute dtype)")  # fmt: skip


def check_measures(measures: Sequence[str]) -> None:
    """``ValueError`` naming the first measure that is neither in :data:`MEASURES` nor an ℓp norm."""
    for m in measures:
        if m not in MEASURES and lp_order(m) is None:
            raise ValueError(f"unknown measure {m!r}; choose from {', '.join(MEASURES)} or any 'l<p>' (p >= 1)")


def tiled_measures(measures: Sequence[str]) -> bool:
    """Whether the tiled paths reduce every one of ``measures``."""
    return all(m in TILED_MEASURES or lp_order(m) is not None for m in measures)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Allow TF32 matmuls inside the block only when ``precision == "tf32"`` (never TF32 convolutions); the global
    flags come back afterwards."""
    check_precision_name(precision)
    with fp32_math(tf32_matmul=precision == "tf32"):
        yield
