"""Per-layer ALTI-Logit (eq 8's term of each layer) and ALTI without the residual, on every front end."""

from __future__ import annotations

import pytest
import torch
from test_hybrids import build_hybrid

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum.aggregate import alti_scores
from latim_captum.methods import get_method

TOL = 1e-9  # float64, exact strategy: rounding only
#: how closely the model's own float64 forward can be matched: HF's Mamba-2 computes its scan and gated norm in
#: float32 whatever the model's dtype, Mamba-1 stays in float64
MODEL_TOL = {"mamba1": 1e-9, "mamba2": 1e-6}


def _rows_ok(mask: torch.Tensor | None, shape) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool) if mask is None else mask.bool()


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_layer_terms_add_up_to_alti_logit_and_to_each_layers_share(kind):
    """Σ_l C^(l) + diag(u·x^(0)) is eq 8, and row i of layer l sums to u_i·(mixer_output^(l)_i − offset^(l)), read
    from the model's own sublayer output (a quantity the maps never see). The model runs in float64, so that its
    own outputs carry no float32 rounding."""
    model = build(kind, layers=3, seed=11).double()
    ids, mask = random_ids(2, 9, seed=5), left_pad_mask(2, 9, [0, 2])
    opts = {"attention_mask": mask, "activation": "silu_gate", "dtype": torch.float64}
    per_layer = latim_captum.alti_logit_layers(model, ids, **opts)
    whole = latim_captum.alti_logit(model, ids, **opts)
    assert per_layer.scores.shape == (2, 3, 9, 9)
    rebuilt = per_layer.scores.sum(1) + torch.diag_embed(per_layer.embedding)
    torch.testing.assert_close(rebuilt, whole.scores, atol=TOL, rtol=0)
    keep = mask.bool()
    scale = float(per_layer.layer_totals.abs().max())
    assert scale > 1e-2  # the layers move the logit: the check below is not 0 == 0
    gap = (per_layer.scores.sum(-1) - per_layer.layer_totals).permute(0, 2, 1)[keep]
    assert float(gap.abs().max()) < MODEL_TOL[kind] * max(scale, 1.0)
    # the model's mixer outputs, by hooks, against layer_totals' reading of the trace
    outs = []
    hooks = [blk.mixer.register_forward_hook(lambda m, a, o: outs.append(o.double())) for blk in model.backbone.layers]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    u = tr.readout.direction(per_layer.targets) * tr.readout.norm_scale[..., None]
    for layer, out in enumerate(outs):
        share = (u * (out - tr.layers[layer].offset)).sum(-1)
        torch.testing.assert_close(share[keep], per_layer.layer_totals[:, layer][keep], atol=TOL, rtol=TOL)
    # causal
    assert float(per_layer.scores.triu(1).abs().max()) == 0.0
    # a selection is the same as the slice of all layers
    some = latim_captum.alti_logit_layers(model, ids, layers=[-1, 0], **opts)
    torch.testing.assert_close(some.scores, per_layer.scores[:, [2, 0]])


def test_layer_terms_of_a_logit_difference():
    model = build("mamba1", layers=2, seed=3).double()
    ids = random_ids(1, 8, seed=2)
    opts = {"activation": "silu_gate", "dtype": torch.float64, "target": 5, "contrast": 7}
    res = latim_captum.alti_logit_layers(model, ids, **opts)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    diff = logits[..., 5] - logits[..., 7]
    total = res.scores.sum((1, 3)) + res.embedding
    # HF hands its logits back in float32 whatever the model's dtype: that rounding is all that may separate them
    torch.testing.assert_close(total, diff - res.offset, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.logits, diff, atol=1e-6, rtol=1e-6)
    assert float(diff.abs().max()) > 1e-2


@pytest.mark.parametrize("family", ["jamba", "zamba2"])
def test_layer_terms_on_hybrids(family):
    """MLP sublayers and Zamba2's embedding columns: the terms still add up to eq 8 and to each sublayer's share."""
    model, _ = build_hybrid(family, seed=4)
    ids = random_ids(1, 7, seed=1)
    opts = {"activation": "silu_gate", "dtype": torch.float64}
    res = latim_captum.alti_logit_layers(model, ids, **opts)
    whole = latim_captum.alti_logit(model, ids, **opts)
    torch.testing.assert_close(res.scores.sum(1) + torch.diag_embed(res.embedding), whole.scores, atol=1e-8, rtol=0)
    scale = max(float(res.layer_totals.abs().max()), 1.0)
    assert float((res.scores.sum(-1) - res.layer_totals).abs().max()) < 1e-7 * scale


def test_fast_path_equals_reference_for_the_new_measures():
    model = build("mamba1", layers=2, seed=9)
    ids = random_ids(2, 10, seed=4)
    for method in ("alti_logit_layers", "alti_no_residual"):
        ref = latim_captum.interactions(model, ids, method=method, backend="ref", dtype=torch.float64)
        fast = latim_captum.interactions(model, ids, method=method, backend="fast", dtype=torch.float64)
        torch.testing.assert_close(fast, ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_alti_without_residual_compares_with_the_mixer_output(kind):
    """Eq 6 with y_i the sublayer's own output Σ_j T_i(x_j) + offset and no residual in T'_i(x_i): checked against
    the contributions, and different from ALTI with the residual (the option is not ignored)."""
    model = build(kind, layers=2, seed=13).double()
    ids = random_ids(1, 8, seed=6)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    bare = latim_captum.interactions(tr, method="alti_no_residual", activation="silu_gate")
    alti = latim_captum.interactions(tr, method="alti", activation="silu_gate")
    for layer in range(2):
        t = latim_captum.contributions(tr, layer=layer, activation="silu_gate")  # [B, N, N, D]
        mixer_output = tr.layers[layer].mixer_output
        own = t.sum(-2) + tr.layers[layer].offset  # exact strategy: the mixer output
        assert float((own - mixer_output).abs().max()) < MODEL_TOL[kind] * float(mixer_output.abs().max())
        expected = alti_scores(t, torch.zeros_like(own), mixer_output)
        torch.testing.assert_close(bare[:, layer], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(bare.sum(-1), torch.ones_like(bare.sum(-1)))
    assert float((bare - alti).abs().max()) > 1e-2
    assert float(bare.triu(1).abs().max()) == 0.0


def test_captum_classes_of_the_new_methods():
    model = build("mamba1", layers=3, seed=2).double()
    ids = random_ids(2, 7, seed=8)
    method = latim_captum.LatimALTILogitLayers(model, dtype=torch.float64)
    attr, delta = method.attribute(ids, layer=1, target=4, return_convergence_delta=True)
    assert attr.shape == (2, 7) and float(delta.abs().max()) < 1e-9
    again = method.compute_convergence_delta(attr, end_point=ids, target=4, layer=1)
    torch.testing.assert_close(again, delta, atol=1e-9, rtol=0)
    # a wrong layer's attributions do not pass the delta of layer 1
    other = method.attribute(ids, layer=0, target=4)
    assert float(method.compute_convergence_delta(other, end_point=ids, target=4, layer=1).abs().max()) > 1e-4
    # every layer plus the query's embedding term is ALTI-Logit's row
    every = method.attribute(ids, layer="all", target=4)  # [B, L, N]
    whole = latim_captum.LatimALTILogit(model, dtype=torch.float64).attribute(ids, target=4)
    res = latim_captum.alti_logit_layers(model, ids, target=4, dtype=torch.float64)
    embedding = torch.zeros_like(whole)
    embedding[:, -1] = res.embedding[:, -1]
    torch.testing.assert_close(every.sum(1) + embedding, whole, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="per layer: pass layer= one int"):
        method.compute_convergence_delta(attr, end_point=ids, layer="all")
    # attributions of several layers: a delta without layer= is refused rather than read at the last layer
    with pytest.raises(ValueError, match="these attributions are of a list of layers or 'all'"):
        method.compute_convergence_delta(every, end_point=ids, target=4)
    # attributions made with layer=1 keep their layer when other calls come in between
    torch.testing.assert_close(method.compute_convergence_delta(attr, end_point=ids, target=4), delta, atol=1e-9,
                               rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="convergence delta needs one map"):
        method.attribute(ids, layer=[0, 1], return_convergence_delta=True)
    bare = latim_captum.LatimALTINoResidual(model).attribute(ids, layer=0)
    torch.testing.assert_close(bare.sum(-1), torch.ones(2))


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_a_separate_delta_reads_the_layer_attributed(kind):
    """Captum's generic pattern (attribute, then compute_convergence_delta without the method's own options) gets
    the delta of the layer that was attributed, not of the default layer."""
    model = build(kind, layers=3, seed=4).double()
    ids = random_ids(2, 6, seed=2)
    method = latim_captum.LatimALTILogitLayers(model, dtype=torch.float64)
    before = method.attribute(ids, target=3)  # default layer: the last
    torch.testing.assert_close(
        method.compute_convergence_delta(before, end_point=ids, target=3),
        method.compute_convergence_delta(before, end_point=ids, target=3, layer=-1),
    )
    for layer in (0, 1):
        attr = method.attribute(ids, layer=layer, target=3)
        delta = method.compute_convergence_delta(attr, end_point=ids, target=3)
        scale = max(1.0, float(attr.sum(-1).abs().max()))
        assert float(delta.abs().max()) < MODEL_TOL[kind] * scale, layer
        # the same attributions against another layer's share are off: the layer read is not a constant
        wrong = method.compute_convergence_delta(attr, end_point=ids, target=3, layer=2)
        assert float(wrong.abs().max()) > 1e-4, layer
    # the row attributed is read too: layer 0's term of row 2 against row 2's share, not the last row's
    attr = method.attribute(ids, layer=0, target=3, position=2)
    delta = method.compute_convergence_delta(attr, end_point=ids, target=3)
    assert float(delta.abs().max()) < MODEL_TOL[kind] * max(1.0, float(attr.sum(-1).abs().max()))
    at_last = method.compute_convergence_delta(attr, end_point=ids, target=3, position=None)
    assert float(at_last.abs().max()) > 1e-4


def test_registry_and_refusals():
    model = build("mamba2", layers=2, seed=1)
    ids = random_ids(1, 6, seed=3)
    maps = get_method("alti_logit_layers_silu_gate")(model, ids)
    assert maps.shape == (1, 2, 6, 6)
    expected = latim_captum.alti_logit_layers(
        model, ids, target=torch.cat([ids[:, 1:], ids[:, -1:]], 1), activation="silu_gate"
    ).scores
    torch.testing.assert_close(maps, expected)
    with pytest.raises(ValueError, match="explains no target token"):
        latim_captum.interactions(model, ids, method="l2", target=3)
