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
