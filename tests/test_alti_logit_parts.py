"""benchmarks/alti_logit_parts.py: its pairings of one strategy score what the method table's ALTI-Logit scores
(aggregated and per layer), and its one-layer rollout swaps, both ways round, are the mixed pairings where one
layer's ALTI map is all R reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from latim_captum import reconstruction_error
from latim_captum.copying.data import CopyTask
from latim_captum.copying.metrics import ROWS, faithfulness
from latim_captum.methods import get_method
from latim_captum.models import copy_model_path
from latim_captum.tasks.reports import load_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("alti_logit_parts", ROOT / "benchmarks" / "alti_logit_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_pairings_match_the_method_table(tmp_path, variant):
    path = copy_model_path(variant)
    n = 3
    assert _script().main(["--model", str(path), "--samples", str(n), "--batch", "2", "--out", str(tmp_path)]) == 0
    assert torch.is_grad_enabled()  # the script's main leaves the caller's autograd state alone
    report = json.loads((tmp_path / "alti-logit-parts.json").read_text())
    (model_report,) = report["models"]
    pairings = {(p["delta"], p["rollout"]): p for p in model_report["pairings"]}
    assert len(pairings) == 4

    model, _, meta = load_model_dir(path)
    task = CopyTask(**meta["task"])
    ids = task.sample(128, meta.get("seed", 0) + 1)[:n]
    for act, suffix in (("silu", ""), ("silu_gate", "_silu_gate")):
        maps = get_method("alti_logit" + suffix)(model, ids).float()
        layer_maps = get_method("alti_logit_layers" + suffix)(model, ids).float()  # [B, L, N, N]
        for rows in ROWS:
            want = faithfulness(maps, task.length, rows=rows)
            got = pairings[(act, act)]["aggregate"][rows]
            for key in ("auc", "ap", "recall_at_k"):
                assert got[key] == pytest.approx(want[key], abs=1e-6), (act, rows, key)
            for layer, got_layer in enumerate(pairings[(act, act)]["layers"]):
                want_layer = faithfulness(layer_maps[:, layer], task.length, rows=rows)
                assert got_layer[rows]["auc"] == pytest.approx(want_layer["auc"], abs=1e-6), (act, rows, layer)

    # the embedded models have 2 layers: R is read only through layer 1's ALTI map, so swapping that one map is
    # the mixed pairing; the two mixtures score apart from the pure ones here, so a swap of the wrong (unread) map
    # would show
    for key, (d_act, r_act) in (("one_layer_silu_rollout", ("silu_gate", "silu")),
                                ("one_layer_exact_rollout", ("silu", "silu_gate"))):  # fmt: skip
        assert pairings[(d_act, r_act)]["aggregate"] != pairings[(d_act, d_act)]["aggregate"]
        (swap,) = model_report[key]
        assert swap["layer"] == 1
        for rows in ROWS:
            assert swap[rows] == pairings[(d_act, r_act)]["aggregate"][rows]
    # without the rollout: each layer's Δ alone and diag(u·x⁰) + Σ_l Δ^(l), from the layer maps here
    import latim_captum
    from latim_captum.maps.layer import layer_maps
    from latim_captum.methods import next_token_targets

    with torch.no_grad():
        tr = latim_captum.trace(model, ids)
        u = tr.readout.projection(next_token_targets(ids))
        for act in ("silu", "silu_gate"):
            deltas = torch.stack([layer_maps(lay, act, ("logit",), projection=u)["logit"] for lay in tr.layers], 1)
            summed = torch.diag_embed((u * tr.embeddings).sum(-1)) + deltas.sum(1)
            got = model_report["no_rollout"][act]
            for rows in ROWS:
                want = faithfulness(summed, task.length, rows=rows)["auc"]
                assert got["aggregate"][rows]["auc"] == pytest.approx(want, abs=1e-6), (act, rows)
            for layer in range(deltas.shape[1]):
                want = faithfulness(deltas[:, layer], task.length, rows="predict")["auc"]
                assert got["layers"][layer]["predict"]["auc"] == pytest.approx(want, abs=1e-6), (act, layer)
    # batched 2 + 1 in the script, whole here: the squared sums add up to the same dataset error
    want_error = reconstruction_error(model, ids, activation="silu")
    assert model_report["silu_decomposition_error"] == pytest.approx(want_error.tolist(), rel=1e-5)
    md = (tmp_path / "alti-logit-parts.md").read_text()
    assert "Δ silu, R silu_gate" in md and f"{n} held-out strings" in md and "Without the rollout" in md


def test_a_swapped_rollout_step_moves_only_the_terms_above_it():
    script = _script()
    gen = torch.Generator().manual_seed(1)
    parts = {"alti": {act: torch.rand(2, 4, 5, 5, generator=gen) for act in script.STRATEGIES}}
    deltas = torch.randn(2, 4, 5, 5, generator=gen)
    base = script.terms(deltas, parts["alti"]["silu_gate"])
    for layer in range(3):
        maps = script.swapped_rollout(parts, layer, "silu_gate", "silu")
        assert torch.equal(maps[:, layer], parts["alti"]["silu"][:, layer])
        got = script.terms(deltas, maps)
        assert torch.equal(got[:, : layer + 1], base[:, : layer + 1])  # terms at or below the swap read R below it
        flow = torch.eye(5).expand(2, 5, 5)
        for lower in range(layer + 1):
            flow = maps[:, lower] @ flow
        assert torch.allclose(got[:, layer + 1], deltas[:, layer + 1] @ flow)
        assert not torch.allclose(got[:, layer + 1], base[:, layer + 1])


def test_terms_roll_out_the_layers_below():
    script = _script()
    gen = torch.Generator().manual_seed(0)
    deltas = torch.randn(2, 3, 4, 4, generator=gen)
    maps = torch.rand(2, 3, 4, 4, generator=gen)
    got = script.terms(deltas, maps)
    assert torch.allclose(got[:, 0], deltas[:, 0])
    assert torch.allclose(got[:, 1], deltas[:, 1] @ maps[:, 0])
    assert torch.allclose(got[:, 2], deltas[:, 2] @ maps[:, 1] @ maps[:, 0])
