"""How far TF32 products move a Mamba-2 model's logits: mamba-ssm's chunk scan with its matrix products' inputs
rounded to TF32, emulated on the CPU, against HF's PyTorch forward.

mamba-ssm's Mamba-2 chunk scan is Triton, whose ``tl.dot`` takes float32 inputs as TF32 (10-bit mantissa) unless
``TRITON_F32_DEFAULT=ieee``. On an H100 the unfused Mamba-2 training forward differed from HF's PyTorch one by 5e-3
(ReLU) and 2e-2 (no activation) of logits up to 7.4, past the trainers' device check (1e-3 of the logits), where
Mamba-1's CUDA kernels differed by 2e-5. This script asks whether TF32 alone moves the logits that far: the
within-chunk form of the scan (the inputs here fit one chunk),
``y_i = Σ_{j≤i} (C_i·B_j) exp(Σ_{j<k≤i} Δ_k A) Δ_j x_j + D x_i``, computed with the two products' inputs in float32
and then rounded to TF32 (:func:`latim_captum._precision.round_tf32`, as PTX's ``cvt.rna.tf32.f32``), on the model of
``tests/test_unfused_cuda.py`` (2 layers, d_model 256, head_dim 64, 101 tokens, perturbed weights). The float32
column checks the emulation itself (it must match HF to ~1e-5).

Usage::

    python benchmarks/tf32_chunk_scan.py
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import perturb_  # noqa: E402  (the tests' weight perturbation, so the model is the CUDA test's)
from latim_captum._precision import round_tf32  # noqa: E402
from latim_captum.tasks.models import build_model  # noqa: E402
from latim_captum.tasks.unfused import (  # noqa: E402
    REFERENCE_OPS,
    ScanOps,
    install_unfused_forward_,
    mamba2_tail_on,
    quadratic_scan,
)


def one_chunk_scan(x, dt, A, B, C, chunk_size, D, dt_bias, dt_limit, *, rounding=lambda t: t) -> Tensor:
    """A chunk scan (:func:`~latim_captum.tasks.unfused.mamba2_tail_on`) for inputs of one chunk
    (``L ≤ chunk_size``), as the kernel's within-chunk step computes it: ``(C Bᵀ ∘ decay ∘ Δ) x``, each product's
    inputs passed through ``rounding`` (the quadratic form, :func:`~latim_captum.tasks.unfused.quadratic_scan`).
    Shapes: ``x [b, L, H, P]``, ``dt [b, L, H]``, ``B, C [b, L, G, N]``; returns ``[b, L, H, P]``."""
    if x.shape[1] > chunk_size:
        raise ValueError(f"one chunk only: {x.shape[1]} tokens > chunk_size {chunk_size}")
    return quadratic_scan(x, dt, A, B, C, chunk_size, D, dt_bias, dt_limit, rounding=rounding)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--acts", nargs="+", default=["relu", "linear", "silu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="model initialisation seeds")
    args = parser.parse_args(argv)
    ids = torch.randint(0, 32, (2, 101), generator=torch.Generator().manual_seed(0))  # the device check's inputs
    print("| act | init seed | logits up to | float32 emulation − HF | TF32 emulation − HF | device check bound |")
    print("| --- | --- | --- | --- | --- | --- |")
    for act in args.acts:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_model("mamba2", layers=2, d_model=256, state=16, vocab=32, head_dim=64, seq_len=101, act=act)
            model = perturb_(model, seed=1).float().eval()
            with torch.no_grad():
                reference = model(input_ids=ids).logits
            gaps = []
            for rounding in (lambda t: t, round_tf32):
                patched = copy.deepcopy(model)

                def chunk_scan(*a, _rounding=rounding):
                    return one_chunk_scan(*a, rounding=_rounding)

                ops = ScanOps(REFERENCE_OPS.conv, REFERENCE_OPS.selective_scan, mamba2_tail_on(chunk_scan))
                install_unfused_forward_(patched, ops, on_cpu=True)
                with torch.no_grad():
                    gaps.append(float((patched(input_ids=ids).logits - reference).abs().max()))
            scale = float(reference.abs().max())
            print(f"| {act} | {seed} | {scale:.2f} | {gaps[0]:.1e} | {gaps[1]:.1e} | {1e-3 * max(1.0, scale):.1e} |")


if __name__ == "__main__":
    main()
