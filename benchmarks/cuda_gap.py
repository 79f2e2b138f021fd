"""Where a model's CUDA run departs from its CPU run, layer by layer, and what that does to the Captum classes.

Diagnoses ``tests/test_captum_attr.py::test_cuda`` on a GPU: for the same perturbed tiny model on CPU and on CUDA it
prints, per block, the relative gap of the mixer's input and output between the two devices, our recomputation's
error against the CUDA mixer, and each Captum class's CUDA-vs-CPU gap. Run it with and without mamba-ssm's kernels
on the path to see what the kernels change.

Usage (repository root, CUDA machine): ``python benchmarks/cuda_gap.py [mamba1 mamba2 ...]``
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import build, random_ids  # noqa: E402
from latim_captum import LatimALTI, LatimALTILogit, LatimL2  # noqa: E402
from latim_captum.adapters import get_adapter  # noqa: E402
from latim_captum.api import reconstruction_error  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script itself


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def mixer_io(model: torch.nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each mixer's (input, output) in one forward pass."""
    adapter = get_adapter(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [
        block.mixer.register_forward_hook(lambda _m, args, out: seen.append((args[0].detach(), out.detach())))
        for block in adapter.blocks
    ]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    seen.append((logits, logits))
    return seen


def report(kind: str) -> None:
    print(
        f"== {kind}: torch {torch.__version__}, matmul tf32 {torch.backends.cuda.matmul.allow_tf32}, "
        f"cudnn tf32 {torch.backends.cudnn.allow_tf32}"
    )
    try:
        import mamba_ssm  # noqa: F401

        print("   mamba-ssm importable: kernels may be used")
    except Exception as exc:  # noqa: BLE001 (a diagnostic: any import failure means no kernels)
        print(f"   mamba-ssm not importable ({type(exc).__name__})")
    cpu = build(kind, seed=12)
    gpu = build(kind, seed=12).to(DEVICE)
    ids = random_ids(2, 9, seed=12)
    io_cpu, io_gpu = mixer_io(cpu, ids), mixer_io(gpu, ids.to(DEVICE))
    for k, ((xi, yo), (gi, go)) in enumerate(zip(io_cpu[:-1], io_gpu[:-1])):
        print(f"   layer {k}: mixer input gap {rel(gi, xi):.2e}, mixer output gap {rel(go, yo):.2e}")
    print(f"   logits gap {rel(io_gpu[-1][0], io_cpu[-1][0]):.2e}")
    for device_name, model, x in ((DEVICE, gpu, ids.to(DEVICE)), ("cpu", cpu, ids)):
        errs = reconstruction_error(model, x, activation="silu_gate")
        print(
            f"   Σ_j T_i(x_j) vs the mixer's output on {device_name} (silu_gate), per layer: "
            + ", ".join(f"{float(e):.2e}" for e in errs)
        )
    for cls, kw in ((LatimL2, {}), (LatimALTI, {}), (LatimALTILogit, {"activation": "silu_gate"})):
        try:
            got = cls(gpu, **kw).attribute(ids.to(DEVICE))
            ref = cls(cpu, **kw).attribute(ids)
            gap = float((got.cpu() - ref).abs().max())
            print(
                f"   {cls.__name__}: max |cuda − cpu| {gap:.2e}, relative {rel(got, ref):.2e}, "
                f"scale {float(ref.abs().max()):.2e}"
            )
        except Exception:  # noqa: BLE001 (print the whole cause, then go on with the next class)
            print(f"   {cls.__name__} raised:")
            traceback.print_exc(file=sys.stdout)


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["mamba1", "mamba2"]:
        try:
            report(kind)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stdout)
