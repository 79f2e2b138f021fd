"""The unfused training forward on the real kernels (CUDA, mamba-ssm and causal-conv1d installed): the same model
as HF's PyTorch path, what the trainers' forward check also asks before training with ``--kernels unfused``."""

from __future__ import annotations

import pytest
import torch

from conftest import perturb_
from latim_captum.tasks.models import build_model, check_device_forward

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _trains_in_bf16(model: torch.nn.Module) -> None:
    """It trains as the trainers run it (bf16 autocast): one backward gives finite gradients on every parameter."""
    model.cuda().train()
    ids = torch.randint(0, 32, (4, 101), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
@pytest.mark.parametrize("act", ["relu", "linear", "silu"])
def test_unfused_kernels_are_the_model(variant, act):
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm (CUDA build)")
    from latim_captum.tasks.unfused import install_unfused_forward_, kernel_ops

    # the paper-scale widths' layout (head_dim 64, in-projection a multiple of 8), two layers, fp32; seeded, so the
    # model is the same whatever ran before (benchmarks/tf32_chunk_scan.py's init seed 0)
    torch.manual_seed(0)
    model = build_model(variant, layers=2, d_model=256, state=16, vocab=32, head_dim=64, seq_len=101, act=act)
    model = perturb_(model, seed=1)
    assert install_unfused_forward_(model, kernel_ops()) == 2
    # raises past 1e-3 of the logits or 1e-2 of a parameter's gradient
    check = check_device_forward(model, torch.device("cuda"), seq_len=101)
    print(f"{variant} {act}: unfused kernels vs HF's PyTorch path, largest logit difference {check.logits:.2e}, "
          f"gradient {check.grads:.2e}")  # fmt: skip
    _trains_in_bf16(model)


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
@pytest.mark.parametrize("new", ["relu", "linear"])
def test_a_switching_model_on_the_kernels_is_its_cpu_reference(variant, new):
    """Mid-switch (α = 0.5: a blend no HF activation computes), the kernels' forward and gradients are those of the
    same unfused forward on the plain-PyTorch reference kernels on the CPU."""
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm (CUDA build)")
    import copy

    from latim_captum.tasks.switch import install_switch_, set_alpha_
    from latim_captum.tasks.unfused import REFERENCE_OPS, install_unfused_forward_, kernel_ops

    torch.manual_seed(0)
    model = perturb_(build_model(variant, layers=2, d_model=256, state=16, vocab=32, head_dim=64, seq_len=101), seed=1)
    reference = copy.deepcopy(model)
    for m, ops, on_cpu in ((model, kernel_ops(), False), (reference, REFERENCE_OPS, True)):
        set_alpha_(install_switch_(m, new), 0.5)
        install_unfused_forward_(m, ops, on_cpu=on_cpu)
    model.cuda().train()
    ids = torch.randint(0, 32, (2, 101))
    results = []
    from latim_captum.tasks.models import full_fp32_matmuls

    for m, device in ((reference, "cpu"), (model, "cuda")):
        with full_fp32_matmuls():
            logits = m(input_ids=ids.to(device)).logits
        grads = torch.autograd.grad(logits.float().square().mean(), list(m.parameters()))
        results.append((logits.detach().cpu(), [g.cpu() for g in grads]))
    (ref_logits, ref_grads), (got_logits, got_grads) = results
    assert float((got_logits - ref_logits).abs().max()) < 1e-3 * float(ref_logits.abs().max())
    for (name, _), g, r in zip(model.named_parameters(), got_grads, ref_grads):
        assert float((g - r).norm()) <= 1e-2 * float(r.norm()) + 1e-8, name


@pytest.mark.parametrize("act", ["relu", "linear", "silu"])
def test_the_dual_form_on_cuda_is_the_model(act):
    """``--kernels dual`` needs no mamba-ssm: on CUDA (float32) it is HF's PyTorch path on the CPU, values and
    gradients, and trains under bf16 autocast with finite gradients (the 2026-12-06 Table 5 trainings' device checks
    agreed to 1.5e-4 of the logits or better for SiLU and ReLU, 2.9e-3 for no activation, inside the check's bound of
    1e-3 of the largest logit)."""
    from latim_captum.tasks.unfused import DUAL_OPS, install_unfused_forward_

    torch.manual_seed(0)
    model = build_model("mamba2", layers=2, d_model=256, state=16, vocab=32, head_dim=64, seq_len=101, act=act)
    model = perturb_(model, seed=1)
    assert install_unfused_forward_(model, DUAL_OPS) == 2
    check = check_device_forward(model, torch.device("cuda"), seq_len=101)
    print(f"dual {act}: logits {check.logits:.2e}, gradients {check.grads:.2e}")
    _trains_in_bf16(model)
