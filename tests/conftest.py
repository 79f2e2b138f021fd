"""Tiny offline models for the tests: built from configs, weights moved away from their init."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # tests/test_triton_tile.py runs the fused kernel in Triton's interpreter: it must be on before anything (here
    # transformers) first imports triton, which decides then how its own library functions are compiled
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import (  # noqa: E402
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

VOCAB = 40


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its initial value (ones/zeros/arange inits hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32).to(param.dtype)
            if name.endswith("A_log"):
                param.add_(0.5 * noise)
            elif name.endswith("dt_bias") or name.endswith("dt_proj.bias"):
                param.add_(0.5 * noise)
            elif name.endswith(".D") or "norm" in name:
                param.mul_(1 + scale * noise).add_(0.1 * noise)
            else:
                param.add_(scale * noise * param.std().clamp_min(0.05))
    return model


def assert_ops_forward_is_the_model(model: torch.nn.Module, ops, ids: torch.Tensor) -> None:
    """The unfused training forward on ``ops`` (:mod:`latim_captum.tasks.unfused`) computes ``model`` (a float64
    two-layer model in eval mode, HF's PyTorch path) on ``ids``: its logits and the gradients of their squared sum.

    HF's PyTorch path computes parts of the scan in float32 even in a float64 model (A, B, x, Δ's bias are cast), so
    the two agree to float32 rounding: measured ≤ 2.3e-7 of the largest logit and ≤ 1.0e-6 of each gradient's
    largest entry for the sequential references; a wrong term moves the logits by 1e-2 and more
    (``test_unfused.py::test_each_kernel_is_used``)."""
    from latim_captum.tasks.unfused import install_unfused_forward_

    params = list(model.parameters())
    reference = model(input_ids=ids).logits
    ref_grads = torch.autograd.grad(reference.square().sum(), params)
    assert install_unfused_forward_(model, ops, on_cpu=True) == 2
    got = model(input_ids=ids).logits
    grads = torch.autograd.grad(got.square().sum(), params)
    scale = float(reference.detach().abs().max())
    assert float((got - reference).detach().abs().max()) < 1e-6 * scale
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert float((g - r).abs().max()) < 5e-6 * max(float(r.abs().max()), 1e-3), name


def build(kind: str, *, act: str = "silu", layers: int = 2, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny perturbed model: ``kind`` in ``mamba1``, ``falcon``, ``mamba2``."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, hidden_act=act, use_cache=False)
    if kind == "mamba1":
        cfg = MambaConfig(hidden_size=32, state_size=4, **common, **overrides)
        model = MambaForCausalLM(cfg)
    elif kind == "falcon":
        cfg = FalconMambaConfig(hidden_size=32, state_size=4, **common, **overrides)
        model = FalconMambaForCausalLM(cfg)
    elif kind == "mamba2":
        cfg = Mamba2Config(
            hidden_size=32,
            expand=2,
            num_heads=8,
            head_dim=8,
            n_groups=2,
            state_size=8,
            chunk_size=4,
            **common,
            **overrides,
        )
        model = Mamba2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return perturb_(model.eval(), seed=seed + 1)


KINDS = ("mamba1", "falcon", "mamba2")


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def random_ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def left_pad_mask(batch: int, n: int, pads: list[int]) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    return mask


def has_cuda() -> bool:
    return torch.cuda.is_available()
