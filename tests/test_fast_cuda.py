"""CUDA: the fast path on the GPU against the reference oracle (run by the lead on an H100)."""

from __future__ import annotations

import pytest
import torch

import latim_captum as lc
from conftest import build, left_pad_mask, random_ids
from latim_captum.maps import layer_maps_fast
from latim_captum.maps import layer_maps_ref as layer_maps  # the oracle (layer_maps dispatches to fast on CUDA)
from latim_captum.single_query import alti_logit_row

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_fast_on_cuda_matches_reference(kind):
    model = build(kind, layers=2, seed=13).cuda()
    ids = random_ids(2, 70, seed=1).cuda()
    mask = left_pad_mask(2, 70, [0, 6]).cuda()
    tr = lc.trace(model, ids, attention_mask=mask)
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    for layer in tr.layers:
        ref = layer_maps(layer, "silu_gate", ("l2", "alti", "logit"), projection=proj)
        for block in (16, None):
            fast = layer_maps_fast(layer, "silu_gate", ("l2", "alti", "logit"), projection=proj, block=block)
            for m, r in ref.items():
                err = float((fast[m] - r).abs().max() / r.abs().max())
                assert err < 1e-4, f"{kind} layer {layer.layer} {m} block={block}: {err:.2e}"
        for precision, tol in (("tf32", 2e-2), ("bf16", 5e-2)):
            fast = layer_maps_fast(layer, "silu_gate", ("l2",), precision=precision)["l2"]
            err = float((fast - ref["l2"]).abs().max() / ref["l2"].abs().max())
            assert err < tol, f"{kind} {precision}: {err:.2e}"
    assert lc.maps.resolve_backend("auto", ids.device) == "fast"
    full = lc.alti_logit(tr, activation="silu_gate")
    row = alti_logit_row(tr, position=-1, activation="silu_gate")
    assert float((row.scores - full.scores[:, -1]).abs().max() / full.scores[:, -1].abs().max()) < 1e-4
