"""The tiled path of hybrids' attention and MLP/MoE sublayers against the reference, on every hybrid family."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_hybrids import FAMILIES, build_hybrid

import latim_captum
from conftest import left_pad_mask, random_ids
from latim_captum.maps import layer as layer_module
from latim_captum.maps import layer_maps, layer_maps_ref
from latim_captum.maps.sublayer_tiles import parallel_maps_fast
from latim_captum.traces import AttentionTrace, ParallelTrace, TokenwiseTrace

MEASURES = ("l1", "l2", "alti", "logit")


def _traced(family: str, seed: int = 3):
    model, _ = build_hybrid(family, seed=seed)
    ids, mask = random_ids(2, 9, seed=seed), left_pad_mask(2, 9, [0, 2])
    with warnings.catch_warnings():  # hybrids warn once about left padding; the maps are compared all the same
        warnings.simplefilter("ignore")
        tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    projection = torch.randn(2, 9, tr.embeddings.shape[-1], generator=gen, dtype=torch.float64)
    return tr, projection


# Zamba2's sublayers are all shared-block Mamba layers (its attention lives inside them): nothing here to check
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "zamba2"])
def test_attention_and_tokenwise_tiles_equal_the_reference(family):
    """Every measure, several row blocks (block 2 on 9 rows), padded rows, and a range of query rows."""
    tr, projection = _traced(family)
    checked = set()
    for layer in tr.layers:
        if not isinstance(layer, (AttentionTrace, TokenwiseTrace)):
            continue
        checked.add(type(layer).__name__)
        ref = layer_maps_ref(layer, "silu_gate", MEASURES, projection=projection)
        fast = layer_maps(layer, "silu_gate", MEASURES, projection=projection, backend="fast", block_rows=2)
        for m in MEASURES:
            torch.testing.assert_close(fast[m], ref[m], atol=1e-12, rtol=1e-10, msg=f"{type(layer).__name__} {m}")
            assert float(ref[m].abs().max()) > 0, m
        part = layer_maps(layer, "silu_gate", MEASURES, projection=projection, backend="fast", rows=(4, 7))
        for m in MEASURES:
            torch.testing.assert_close(part[m], ref[m][:, 4:7], atol=1e-12, rtol=1e-10)
        bare_ref = layer_maps(layer, "silu_gate", ("alti_no_residual",), backend="ref")["alti_no_residual"]
        bare = layer_maps(layer, "silu_gate", ("alti_no_residual",), backend="fast")["alti_no_residual"]
        torch.testing.assert_close(bare, bare_ref, atol=1e-12, rtol=1e-10)
    assert "TokenwiseTrace" in checked  # every family here has MLP/MoE sublayers
    assert "AttentionTrace" in checked or family == "falcon_h1"  # FalconH1's attention runs beside its Mamba


@pytest.mark.parametrize("activation", ["silu_gate", "silu", "taylor1"])
def test_parallel_tiles_equal_the_reference(activation):
    """FalconH1's parallel sublayers (Mamba-2 and attention summed): every measure on the tiles, several tile sides
    (1, 2, 4 on 9 rows), a range of query rows, ALTI without the residual, each activation strategy."""
    tr, projection = _traced("falcon_h1")
    parallel = [layer for layer in tr.layers if isinstance(layer, ParallelTrace)]
    assert parallel
    for layer in parallel:
        ref = layer_maps_ref(layer, activation, MEASURES, projection=projection)
        for block in (1, 2, 4, None):
            fast = layer_maps(layer, activation, MEASURES, projection=projection, backend="fast", block_rows=block)
            for m in MEASURES:
                torch.testing.assert_close(fast[m], ref[m], atol=1e-12, rtol=1e-10, msg=f"block {block} {m}")
                assert float(ref[m].abs().max()) > 0, m
        part = parallel_maps_fast(layer, activation, MEASURES, projection=projection, rows=(3, 8), block=2)
        for m in MEASURES:
            torch.testing.assert_close(part[m], ref[m][:, 3:8], atol=1e-12, rtol=1e-10)
        bare_ref = layer_maps(layer, activation, ("alti_no_residual",), backend="ref")["alti_no_residual"]
        bare = layer_maps(layer, activation, ("alti_no_residual",), backend="fast")["alti_no_residual"]
        torch.testing.assert_close(bare, bare_ref, atol=1e-12, rtol=1e-10)


def test_parallel_tiles_read_the_sum_not_the_parts():
    """ℓ2 of the summed vectors differs from the sum of the parts' ℓ2 (the tiles must add vectors, not norms)."""
    tr, _ = _traced("falcon_h1")
    layer = next(layer for layer in tr.layers if isinstance(layer, ParallelTrace))
    fast = parallel_maps_fast(layer, "silu_gate", ("l2",))["l2"]
    parts = sum(layer_maps(part, "silu_gate", ("l2",), backend="ref")["l2"] for part in layer.parts)
    assert float((fast - parts).abs().max()) > 1e-3


def test_the_fast_backend_takes_the_tiles(monkeypatch):
    """backend="fast" (and "auto") reaches the tiles for attention and MLP sublayers, not the reference."""
    tr, projection = _traced("jamba")
    seen = []
    for name, tag in (("attention_maps_fast", "a"), ("tokenwise_maps_fast", "t"), ("parallel_maps_fast", "p")):
        real = getattr(layer_module, name)
        monkeypatch.setattr(layer_module, name, lambda *a, _r=real, _t=tag, **k: seen.append(_t) or _r(*a, **k))
    fast = latim_captum.interactions(tr, method="l2", backend="fast")
    assert "a" in seen and "t" in seen
    torch.testing.assert_close(fast, latim_captum.interactions(tr, method="l2", backend="ref"), atol=1e-10, rtol=1e-8)
    res_fast = latim_captum.alti_logit(tr, backend="fast")
    res_ref = latim_captum.alti_logit(tr, backend="ref")
    torch.testing.assert_close(res_fast.scores, res_ref.scores, atol=1e-10, rtol=1e-8)
    seen.clear()
    tr, _ = _traced("falcon_h1")
    fast = latim_captum.alti_logit(tr, backend="fast")
    assert "p" in seen
    torch.testing.assert_close(fast.scores, latim_captum.alti_logit(tr, backend="ref").scores, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(("family", "kind"), [("bamba", AttentionTrace), ("falcon_h1", ParallelTrace)])
def test_reduced_precision_of_the_attention_products(family, kind):
    """tf32 and bf16 operands stay close to the compute dtype (bf16: 8 bits of mantissa); ALTI rows still sum to 1.
    Attention sublayers, and FalconH1's parallel ones (attention and Mamba-2 products both reduced)."""
    tr, projection = _traced(family, seed=5)
    layer = next(layer for layer in tr.layers if isinstance(layer, kind))
    ref = layer_maps(layer, "silu_gate", ("l2", "alti", "logit"), projection=projection, backend="fast")
    for precision, tol in (("bf16", 3e-2),):  # tf32: CUDA only (tests/test_fast_cuda.py)
        got = layer_maps(
            layer, "silu_gate", ("l2", "alti", "logit"), projection=projection, backend="fast", precision=precision
        )
        for m in ("l2", "logit"):
            assert float((got[m] - ref[m]).abs().max() / ref[m].abs().max()) < tol, (precision, m)
        torch.testing.assert_close(got["alti"].sum(-1)[1, 2:], torch.ones(7, dtype=torch.float64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "zamba2"])
def test_tiles_on_cuda_equal_the_reference(family):
    """On CUDA, ``backend="auto"`` takes the tiles for every sublayer of each hybrid and gives the reference's maps
    (float64 trace: the tiles' own error, not TF32's), and a whole ALTI-Logit result matches the reference path's.
    Both come from one CUDA trace: with mamba-ssm installed, transformers runs its CUDA-only kernels for these
    models' forward on any device, so no CPU trace can be made beside it."""
    model, _ = build_hybrid(family, seed=4, kernel_widths=True)  # widths mamba-ssm's kernels take, if installed
    ids, mask = random_ids(2, 9, seed=4), left_pad_mask(2, 9, [0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.cuda()
        tr = latim_captum.trace(model, ids.cuda(), attention_mask=mask.cuda(), dtype=torch.float64)
    projection = torch.randn(2, 9, tr.embeddings.shape[-1], dtype=torch.float64, device="cuda")
    for layer in tr.layers:
        if not isinstance(layer, (AttentionTrace, TokenwiseTrace, ParallelTrace)):
            continue
        ref = layer_maps_ref(layer, "silu_gate", MEASURES, projection=projection)
        auto = layer_maps(layer, "silu_gate", MEASURES, projection=projection, backend="auto", block_rows=4)
        for m in MEASURES:
            assert auto[m].device.type == "cuda"
            torch.testing.assert_close(auto[m], ref[m], atol=1e-12, rtol=1e-10, msg=f"{type(layer).__name__} {m}")
    got = latim_captum.alti_logit(tr, backend="auto")
    want = latim_captum.alti_logit(tr, backend="ref")
    torch.testing.assert_close(got.scores, want.scores, atol=1e-10, rtol=1e-8)
