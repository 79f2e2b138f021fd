"""The chunked selective scan equals the step-by-step oracle (eq 10 / 13) to float64 round-off."""

from __future__ import annotations

import pytest
import torch

import latim_captum as lc
from conftest import build, left_pad_mask, random_ids
from latim_captum.activations import activation_function
from latim_captum.ssm import selective_scan, selective_scan_chunked, selective_scan_ref
from latim_captum.traces import Mamba1SSM, Mamba2SSM

F64 = torch.float64


def _mamba1(bsz: int, n: int, d: int = 6, state: int = 5, seed: int = 0) -> Mamba1SSM:
    gen = torch.Generator().manual_seed(seed)
    return Mamba1SSM(
        delta=torch.rand(bsz, n, d, generator=gen, dtype=F64) * 2,
        A=-torch.rand(d, state, generator=gen, dtype=F64) * 8,
        B=torch.randn(bsz, n, state, generator=gen, dtype=F64),
        C=torch.randn(bsz, n, state, generator=gen, dtype=F64),
    )


def _mamba2(bsz: int, n: int, seed: int = 0) -> Mamba2SSM:
    gen = torch.Generator().manual_seed(seed)
    heads, groups, state = 4, 2, 3
    return Mamba2SSM(
        delta=torch.rand(bsz, n, heads, generator=gen, dtype=F64) * 2,
        A=-torch.rand(heads, generator=gen, dtype=F64) * 8,
        B=torch.randn(bsz, n, groups, state, generator=gen, dtype=F64),
        C=torch.randn(bsz, n, groups, state, generator=gen, dtype=F64),
        head_dim=3,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 131])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_scan_equals_recurrence(variant, n, chunk):
    ssm = _mamba1(2, n) if variant == "mamba1" else _mamba2(2, n)
    d = ssm.delta.shape[-1] * (ssm.head_dim if variant == "mamba2" else 1)
    phi = torch.randn(2, n, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = selective_scan_ref(ssm, phi)
    assert _rel(selective_scan_chunked(ssm, phi, chunk), ref) < 1e-10, f"{variant} N={n} chunk={chunk}: eq 10/13"
    assert _rel(selective_scan(ssm, phi), ref) < 1e-10


def test_chunked_scan_strong_decay_has_no_overflow():
    """Δ·A summed over a long sequence reaches -1e4: a global cumsum would give exp(+1e4) = inf."""
    ssm = _mamba2(1, 300)
    ssm = Mamba2SSM(delta=ssm.delta * 20, A=ssm.A, B=ssm.B, C=ssm.C, head_dim=ssm.head_dim)
    phi = torch.randn(1, 300, 12, dtype=F64)
    out = selective_scan_chunked(ssm, phi, 64)
    assert torch.isfinite(out).all()
    assert _rel(out, selective_scan_ref(ssm, phi)) < 1e-10


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_chunked_scan_on_padded_traces(kind):
    """Left padding (Δ, B, C, φ from a real traced model with a padding mask) changes nothing."""
    model = build(kind, seed=3)
    ids = random_ids(2, 37, seed=2)
    tr = lc.trace(model, ids, attention_mask=left_pad_mask(2, 37, [0, 9]), dtype=F64)
    for layer in tr.layers:
        phi = activation_function(layer.activation)(layer.pre_activation)
        if layer.mask is not None:
            phi = phi * layer.mask[..., None]
        ref = selective_scan_ref(layer.ssm, phi)
        for chunk in (4, 64):
            assert _rel(selective_scan_chunked(layer.ssm, phi, chunk), ref) < 1e-10


def test_chunk_must_be_positive():
    ssm = _mamba1(1, 3)
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        selective_scan_chunked(ssm, torch.zeros(1, 3, 6, dtype=F64), 0)


def test_benchmark_skips_points_predicted_over_budget():
    """The speed benchmark's skip rule: time quadratic in N, against the point budget and the time left."""
    import time

    from latim_captum.bench_speed import _skip_reason

    far = time.perf_counter() + 1000
    assert _skip_reason(None, 1, 512, 60, far) is None
    assert _skip_reason(2.0, 512, 1024, 60, far) is None  # 8 s predicted
    assert "point-budget" in _skip_reason(2.0, 512, 4096, 60, far)  # 128 s predicted
    assert "left" in _skip_reason(2.0, 512, 1024, 60, time.perf_counter() + 5)
