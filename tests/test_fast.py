"""The tiled fast path (latim_captum.maps.fast) against the reference oracle (contributions_ref + layer_maps_ref)."""

from __future__ import annotations

import pytest
import torch

import latim_captum as lc
from conftest import build, left_pad_mask, random_ids
from latim_captum.maps import LatimMemoryError, layer_maps_fast
from latim_captum.maps import layer_maps_ref as layer_maps
from latim_captum.maps.tiles import auto_block, tile_bytes
from latim_captum.single_query import alti_logit_row

MEASURES = ("l1", "l2", "alti", "logit")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


KEYS = [("mamba1", "silu"), ("falcon", "silu"), ("mamba2", "silu"), ("mamba1", "linear"), ("mamba2", "relu")]
STRATEGIES = {"silu": ("silu", "silu_gate"), "linear": ("identity", "act_gate"), "relu": ("act", "act_gate")}


@pytest.fixture(scope="module")
def traces():
    out = {}
    for kind, act in KEYS:
        model = build(kind, act=act, layers=2, seed=3, **({"conv_kernel": 3} if act == "linear" else {}))
        ids = random_ids(2, 21, seed=5)
        mask = left_pad_mask(2, 21, [0, 4])
        out[(kind, act)] = {
            dt: lc.trace(model, ids, attention_mask=mask, dtype=dt) for dt in (torch.float64, torch.float32)
        }
    return out


@pytest.mark.parametrize("key", KEYS)
def test_fast_maps_equal_reference(traces, key):
    """Every measure and tile size (1, smaller than / crossing the conv window, larger than N) matches the oracle."""
    activations = STRATEGIES[key[1]]
    blocks = (1, 3, 8, 64) if key[0] == "mamba1" and key[1] == "silu" else (3, 8, 64)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        tr = traces[key][dtype]
        proj = tr.readout.projection(tr.readout.logits.argmax(-1))
        for layer in tr.layers:
            for activation in activations:
                ref = layer_maps(layer, activation, MEASURES, projection=proj)
                for block in blocks:
                    # Mamba-1 anchors: one per row, several per tile (2 < 8), the default (one per tile here)
                    for anchor in (1, 2, None) if key[0] != "mamba2" and block >= 8 else (None,):
                        fast = layer_maps_fast(
                            layer, activation, MEASURES, projection=proj, block=block, anchor_rows=anchor
                        )
                        for m in MEASURES:
                            msg = f"{key} {activation} {dtype} block={block} anchor={anchor} layer {layer.layer} {m}"
                            assert _rel(fast[m], ref[m]) < tol, msg


def test_fast_rows_subset_and_strong_decay():
    """Only the requested rows are computed; a large |A|·Δ (decay underflow across tiles) still matches the ref."""
    model = build("mamba1", layers=1, seed=7)
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log.add_(3.0)  # |A| ≈ 20× larger: exp factors underflow off-diagonal
    tr = lc.trace(model, random_ids(1, 30, seed=2), dtype=torch.float64)
    layer = tr.layers[0]
    ref = layer_maps(layer, "silu", ("l2", "alti"))
    for anchor in (1, 3, None):
        fast = layer_maps_fast(layer, "silu", ("l2", "alti"), block=8, rows=(9, 17), anchor_rows=anchor)
        for m in ("l2", "alti"):
            assert fast[m].shape == (1, 8, 30), m
            assert _rel(fast[m], ref[m][:, 9:17]) < 1e-10, (m, anchor)
    with pytest.raises(ValueError, match=r"\(5, 40\)"):
        layer_maps_fast(layer, "silu", ("l2",), rows=(5, 40))


def test_backend_plumbing_gives_same_maps(traces):
    tr = traces[("mamba2", "silu")][torch.float64]
    for method in ("l2", "alti", "alti_logit"):
        ref = lc.interactions(tr, method=method, backend="ref")
        fast = lc.interactions(tr, method=method, backend="fast", block_rows=6)
        assert _rel(fast, ref) < 1e-10, method
    with pytest.raises(ValueError, match="'gpu'"):
        lc.interactions(tr, method="l2", backend="gpu")


def test_auto_block_and_memory_errors(traces):
    layer = traces[("mamba1", "silu")][torch.float32].layers[0]
    block = auto_block(layer, budget_bytes=tile_bytes(layer, 9, 9))
    assert 1 <= block <= 9 and tile_bytes(layer, block, block) <= tile_bytes(layer, 9, 9)
    with pytest.raises(LatimMemoryError, match="MiB"):
        auto_block(layer, budget_bytes=10)
    with pytest.raises(ValueError, match="'nope'"):
        layer_maps_fast(layer, "silu", ("nope",))
    with pytest.raises(ValueError, match="projection"):
        layer_maps_fast(layer, "silu", ("logit",))


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_single_query_row_equals_full_alti_logit(kind):
    """Horner's scheme over layers (w ← w P^{(l)} + Δ^{(l)}_q) gives row q of eq 8, and sums to the logit."""
    model = build(kind, layers=3, seed=11).double()
    ids = random_ids(2, 17, seed=4)
    mask = left_pad_mask(2, 17, [0, 3])
    tr = lc.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    full = lc.alti_logit(tr, activation="silu_gate", backend="ref")
    for position, chunk in ((-1, 5), (9, 2)):
        row = alti_logit_row(tr, position=position, activation="silu_gate", block=4, chunk=chunk)
        q = position % 17
        assert _rel(row.scores, full.scores[:, q]) < 1e-10, position
        assert torch.equal(row.targets, full.targets[:, q])
        # with padding, the same bound as the core's padded eq-8 test (test_aggregation)
        gap = (row.scores.sum(-1) - (row.logits - row.offset)).abs().max()
        assert float(gap) < 1e-4 * float(row.logits.abs().max()), "eq 8: row sums to the logit"
    with pytest.raises(ValueError, match="position 17"):
        alti_logit_row(tr, position=17)


def test_triton_kernel_without_triton_says_so(traces, monkeypatch):
    """``kernel="triton"`` names the missing package (CI has no triton; elsewhere its import is made to fail)."""
    import sys

    import latim_captum

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    for name in [m for m in sys.modules if m.startswith("latim_captum.maps.triton")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(latim_captum.maps, "triton", raising=False)
    layer = traces[("mamba2", "silu")][torch.float32].layers[0]
    with pytest.raises(ImportError, match="needs the triton package"):
        layer_maps_fast(layer, "silu", ("l2",), kernel="triton")
    with pytest.raises(ValueError, match="'cuda'"):
        layer_maps_fast(layer, "silu", ("l2",), kernel="cuda")
