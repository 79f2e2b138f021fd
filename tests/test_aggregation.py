"""Table 1 aggregations: ℓp (eq 5), ALTI (eq 6), ALTI-Logit (eqs 7-8), and causality of every map."""

from __future__ import annotations

import pytest
import torch

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum.aggregate import alti_logit_combine, alti_logit_terms, alti_scores, fold_embedding_columns, rollout


@pytest.mark.parametrize("method", ["l1", "l2", "alti", "alti_logit"])
@pytest.mark.parametrize("activation", ["silu", "silu_gate", "taylor2"])
def test_maps_are_causal(kind, method, activation):
    """Decoder-only: token j > i never contributes to i, so entries above the diagonal are exactly 0."""
    maps = latim_captum.interactions(build(kind, seed=1), random_ids(2, 7), method=method, activation=activation)
    n = 7
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert bool((maps[..., upper] == 0).all()), f"{method} map has entries above the diagonal"
    assert maps.shape == ((2, n, n) if method == "alti_logit" else (2, 2, n, n))
    assert bool(torch.isfinite(maps).all())


def test_lp_norms_match_contribution_vectors(kind):
    """Eq 5: C_ij = ‖T_i(x_j)‖_p for p = 1, 2."""
    model = build(kind, seed=2)
    ids = random_ids(1, 6, seed=3)
    t = latim_captum.contributions(model, ids, layer=-1, dtype=torch.float64)
    for p in (1, 2):
        maps = latim_captum.interactions(model, ids, method=f"l{p}", layers=-1, dtype=torch.float64)
        assert torch.allclose(maps[:, 0], t.norm(p=p, dim=-1), atol=1e-12)


@pytest.mark.parametrize("activation", ["silu", "silu_gate", "identity"])
def test_alti_rows_sum_to_one(kind, activation):
    """Eq 6: ALTI rows are non-negative and sum to 1 (the residual is token i's own contribution)."""
    mask = left_pad_mask(2, 8, [0, 3])
    maps = latim_captum.interactions(
        build(kind, seed=3),
        random_ids(2, 8, seed=4),
        attention_mask=mask,
        method="alti",
        activation=activation,
        dtype=torch.float64,
    )
    assert bool((maps >= 0).all())
    assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-12)


def test_alti_formula_by_hand():
    """Eq 6 on hand-made vectors: y = x_i + T_i(x_0) + T_i(x_1)."""
    t = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # one row (i = 1), two sources
    x = torch.tensor([[[1.0, 1.0]]])
    y = t.sum(2) + x  # (2, 3)
    # T'_0 = (1, 0): ‖y‖1 - ‖y - T'_0‖1 = 5 - 4 = 1 ; T'_1 = (0, 2) + (1, 1) = (1, 3): 5 - 1 = 4
    assert torch.allclose(alti_scores(t, x, y, start=1), torch.tensor([[[0.2, 0.8]]]))


def test_rollout_and_alti_logit_with_embedding_columns_by_hand():
    """A sublayer with embedding columns ([A^x | A^e], [Δ^x | Δ^e], a Zamba2 hybrid layer) enters the rollout as
    R ← A^x R + A^e and ALTI-Logit as Δ^x R + Δ^e: the embedding e_k is input token k itself. Rows of R still sum
    to 1; a first such layer gives R = A^x + A^e."""
    gen = torch.Generator().manual_seed(0)
    n = 4

    def rows(cols: int) -> torch.Tensor:
        m = torch.rand(2, n, cols, generator=gen, dtype=torch.float64)
        return m / m.sum(-1, keepdim=True)

    def rand(cols: int) -> torch.Tensor:
        return torch.randn(2, n, cols, generator=gen, dtype=torch.float64)

    p1, p2, p3 = rows(n), rows(2 * n), rows(n)
    d1, d2, d3 = rand(n), rand(2 * n), rand(n)
    direct = torch.randn(2, n, generator=gen, dtype=torch.float64)
    r1 = p1
    r2 = p2[..., :n] @ r1 + p2[..., n:]
    torch.testing.assert_close(rollout([p1, p2, p3]), p3 @ r2)
    torch.testing.assert_close(rollout([p1, p2, p3]).sum(-1), torch.ones(2, n, dtype=torch.float64))
    torch.testing.assert_close(rollout([p2]), p2[..., :n] + p2[..., n:])
    expected = torch.diag_embed(direct) + d1 + (d2[..., :n] @ r1 + d2[..., n:]) + d3 @ r2
    torch.testing.assert_close(alti_logit_combine([d1, d2, d3], [p1, p2, p3], direct), expected)
    terms = list(alti_logit_terms([d1, d2, d3], [p1, p2, p3]))  # the per-layer maps the combine sums
    for got, want in zip(terms, [d1, d2[..., :n] @ r1 + d2[..., n:], d3 @ r2], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(fold_embedding_columns(p2, n), p2[..., :n] + p2[..., n:])
    assert fold_embedding_columns(p1, n) is p1
    with pytest.raises(ValueError, match="expected 4 or 8 columns"):
        fold_embedding_columns(rows(3), n)


@pytest.mark.parametrize("activation", ["identity"])
def test_alti_logit_rows_sum_to_target_logit(kind, activation):
    """Eqs 7-8: for an exact decomposition each row sums to the target logit minus the offset (its convergence
    delta is 0); checked against the model's real logits, with biases and padding."""
    model = build(kind, act="linear", seed=6, use_bias=True).double()
    ids = random_ids(2, 7, seed=8)
    mask = left_pad_mask(2, 7, [0, 2])
    res = latim_captum.alti_logit(model, ids, attention_mask=mask, activation=activation, dtype=torch.float64)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    real = logits.gather(-1, res.targets[..., None])[..., 0]
    assert torch.allclose(res.logits, real.double(), atol=1e-9)
    assert bool((res.offset.abs() > 1e-6).any()), "use_bias=True must give a nonzero offset"
    keep = mask.bool()
    delta = (res.logits - res.offset - res.scores.sum(-1))[keep]
    assert float(delta.abs().max()) < 1e-4 * float(res.logits.abs().max()), "ALTI-Logit rows ≠ logit (eq 8)"
    assert torch.equal(res.targets, logits.argmax(-1)), "default target = predicted next token"


def test_alti_logit_silu_gate_exact_on_silu_models(kind):
    model = build(kind, seed=7).double()
    res = latim_captum.alti_logit(
        model, random_ids(1, 9, seed=1), activation="silu_gate", target=3, dtype=torch.float64
    )
    assert bool((res.targets == 3).all())
    assert torch.allclose(res.scores.sum(-1), res.logits - res.offset, atol=1e-8)


def test_alti_logit_silu_is_approximate(kind):
    """The paper's f = SiLU leaves a nonzero convergence delta on SiLU models (the test can fail)."""
    model, ids = build(kind, seed=7).double(), random_ids(1, 9, seed=1)
    res = latim_captum.alti_logit(model, ids, activation="silu", dtype=torch.float64)
    assert float((res.scores.sum(-1) - (res.logits - res.offset)).abs().max()) > 1e-4


def test_alti_degenerate_row_falls_back_to_l1_norms():
    """A row where no contribution brings y_i closer still sums to 1 (ℓ1-norm fallback)."""
    t = torch.tensor([[[[1.0, 0.0], [-1.0, 0.1]]]])  # i = 1; residual 0; y = (0, 0.1): both proximities < 0
    x = torch.zeros(1, 1, 2)
    out = alti_scores(t, x, t.sum(2) + x, start=1)
    assert torch.allclose(out, torch.tensor([[[1.0, 1.1]]]) / 2.1)


def test_alti_logit_single_layer_by_hand():
    """One layer: C = diag(u·x0) + Δ^{(1)} (R^{(0)} = I), with Δ_ij = T_i(x_j)·u_i built from contributions()."""
    model = build("mamba1", act="linear", layers=1, seed=9).double()
    ids = random_ids(1, 5, seed=2)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    res = latim_captum.alti_logit(tr, activation="identity")
    u = tr.readout.projection(res.targets)
    t = latim_captum.contributions(tr, layer=0, activation="identity")
    expected = torch.einsum("bijd,bid->bij", t, u) + torch.diag_embed((u * tr.embeddings).sum(-1))
    assert torch.allclose(res.scores, expected, atol=1e-12)


def test_alti_logit_two_layers_use_rollout():
    """Two layers: layer 2's Δ is spread back to input tokens through layer 1's ALTI map (eq 8)."""
    model = build("mamba2", act="linear", layers=2, seed=10).double()
    ids = random_ids(1, 5, seed=3)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    res = latim_captum.alti_logit(tr, activation="identity")
    u = tr.readout.projection(res.targets)
    deltas = [
        torch.einsum("bijd,bid->bij", latim_captum.contributions(tr, layer=k, activation="identity"), u)
        for k in (0, 1)
    ]
    p1 = latim_captum.interactions(tr, method="alti", activation="identity", layers=0)[:, 0]
    expected = torch.diag_embed((u * tr.embeddings).sum(-1)) + deltas[0] + deltas[1] @ p1
    assert torch.allclose(res.scores, expected, atol=1e-12)


def test_rollout_rows_sum_to_one():
    maps = [torch.softmax(torch.randn(2, 5, 5), -1).tril() for _ in range(3)]
    maps = [m / m.sum(-1, keepdim=True) for m in maps]
    out = rollout(maps)
    assert torch.allclose(out, maps[2] @ maps[1] @ maps[0])
    assert torch.allclose(out.sum(-1), torch.ones(2, 5))


def test_layers_selection_and_negative_indices(kind):
    model = build(kind, layers=3, seed=4)
    ids = random_ids(1, 5)
    tr = latim_captum.trace(model, ids)
    all_maps = latim_captum.interactions(tr, method="l2")
    assert all_maps.shape == (1, 3, 5, 5)
    assert torch.equal(latim_captum.interactions(tr, method="l2", layers=[-1, 0]), all_maps[:, [2, 0]])


def test_block_rows_do_not_change_results(kind):
    """Row blocking is a memory device only: any block size gives the same maps."""
    tr = latim_captum.trace(build(kind, seed=5), random_ids(2, 9), dtype=torch.float64)
    for method in ("l2", "alti", "alti_logit"):
        full = latim_captum.interactions(tr, method=method, block_rows=9)
        blocked = latim_captum.interactions(tr, method=method, block_rows=2)
        assert torch.allclose(full, blocked, atol=1e-12), method


@pytest.mark.parametrize("backend", ["ref", "fast"])
def test_any_lp_order_on_both_backends(kind, backend):
    """Eq 5 with p = 3 and p = ∞ (``"l3"``, ``"linf"``) on the reference and the tiled path, and via LatimL2."""
    from latim_captum import LatimL2
    from latim_captum.maps import layer_maps

    model = build(kind, seed=12)
    ids = random_ids(1, 6, seed=1)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    t = latim_captum.contributions(tr, layer=1)  # the default strategy, silu_gate
    maps = layer_maps(tr.layers[1], "silu_gate", ("l3", "linf"), backend=backend)
    assert torch.allclose(maps["l3"], t.norm(p=3, dim=-1), atol=1e-10)
    assert torch.allclose(maps["linf"], t.abs().amax(-1), atol=1e-10)
    row = LatimL2(model, p=3, dtype=torch.float64).attribute(ids, layer=1)
    assert torch.allclose(row, t.norm(p=3, dim=-1)[:, -1], atol=1e-10)
