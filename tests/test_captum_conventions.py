"""Captum's conventions on the LaTIM classes: the convergence delta's sign, contrastive ALTI-Logit, IG-shaped calls,
NoiseTunnel on token ids, and where a delta exists at all."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel

import latim_captum
from conftest import build, random_ids
from latim_captum import LatimALTI, LatimALTILogit, LatimL2, MambaAttention, MambaAttribution, MambaLRP
from latim_captum.attr import LatimL1

F64 = torch.float64


@pytest.fixture(scope="module")
def m2():
    return build("mamba2", seed=21).double()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


# ------------------------------------------------------------------ the delta's sign


def test_delta_sign_is_captums_on_a_model_where_ig_has_one():
    """Captum's IG delta is Σ attributions − (F(x) − F(baseline)); ours must have the same sign convention: computed
    by hand from the paper's silu (inexact, so the delta is not 0) it is Σ scores − (logit − offset)."""
    model = build("mamba1", seed=4).double()
    ids = random_ids(2, 6, seed=2)
    method = LatimALTILogit(model, activation="silu", dtype=F64)
    attr, delta = method.attribute(ids, target=[3, 5], return_convergence_delta=True)
    res = latim_captum.alti_logit(model, ids, activation="silu", target=torch.tensor([3, 5]), dtype=F64)
    by_hand = attr.sum(-1) - (res.logits[:, -1] - res.offset[:, -1])
    torch.testing.assert_close(delta, by_hand)
    assert float(delta.abs().min()) > 1e-6, "silu is an approximation: its delta is not zero"
    # Captum's own IG on a linear function: Σ attr − (F(x) − F(b)), so the same expression holds there
    ig = IntegratedGradients(lambda x: (x * torch.arange(1.0, 4.0, dtype=F64)).sum(-1) ** 2)
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    a, d = ig.attribute(x, baselines=torch.zeros_like(x), n_steps=4, return_convergence_delta=True)
    f = lambda v: float(((v * torch.arange(1.0, 4.0, dtype=F64)).sum(-1) ** 2).sum())  # noqa: E731
    assert abs(float(d) - (float(a.sum()) - (f(x) - f(torch.zeros_like(x))))) < 1e-9


def test_compute_convergence_delta_matches_attribute(m2):
    ids = random_ids(2, 7, seed=8)
    for activation in ("silu", "silu_gate"):
        method = LatimALTILogit(m2, activation=activation, dtype=F64)
        attr, delta = method.attribute(ids, target=[4, 9], return_convergence_delta=True)
        again = method.compute_convergence_delta(attr, end_point=ids, target=[4, 9])
        torch.testing.assert_close(again, delta, rtol=0, atol=1e-10)
        emb = m2.get_input_embeddings()(ids).detach()
        attr_e = method.attribute(emb, target=[4, 9])
        torch.testing.assert_close(method.compute_convergence_delta(attr_e, None, emb, [4, 9]), delta, atol=1e-9,
                                   rtol=0)  # fmt: skip
    # attributions that are off by one unit are off by one unit in the delta
    shifted = attr.clone()
    shifted[:, 0] += 1.0
    torch.testing.assert_close(method.compute_convergence_delta(shifted, end_point=ids, target=[4, 9]), delta + 1)
    with pytest.raises(ValueError, match="needs no baseline: start_point must be None"):
        method.compute_convergence_delta(attr, torch.zeros_like(ids), ids)


def test_a_separate_delta_reads_the_row_attributed(m2):
    """Captum's generic pattern passes only target and the mask to compute_convergence_delta: the delta of a row
    attributed at another position, against a contrast, is read at that row with that contrast, not at the last
    token; whole maps, whose row is not known, are refused."""
    ids = random_ids(2, 7, seed=8)
    method = LatimALTILogit(m2, activation="silu_gate", dtype=F64)
    attr, delta = method.attribute(ids, target=[4, 9], position=3, contrast=[1, 2], return_convergence_delta=True)
    again = method.compute_convergence_delta(attr, end_point=ids, target=[4, 9])
    torch.testing.assert_close(again, delta, rtol=0, atol=1e-10)
    # read at the default row without the contrast, the same attributions are off: the options are not ignored
    for options in ({"position": None}, {"contrast": None}):
        off = method.compute_convergence_delta(attr, end_point=ids, target=[4, 9], **options)
        assert float((off - delta).abs().max()) > 1e-3, options
    # Captum's tuple form: ids in a 1-tuple give attributions in a 1-tuple, whose delta reads the same row
    wrapped = method.attribute((ids,), target=[4, 9], position=3, contrast=[1, 2])
    assert isinstance(wrapped, tuple) and len(wrapped) == 1
    torch.testing.assert_close(method.compute_convergence_delta(wrapped, end_point=(ids,), target=[4, 9]), delta,
                               rtol=0, atol=1e-10)  # fmt: skip
    with pytest.raises(ValueError, match="one tensor or a 1-tuple; got a 2-tuple"):
        method.compute_convergence_delta((attr, attr), end_point=ids, target=[4, 9])
    # attributions made in between, or a tensor this object did not return, leave the call's options alone
    plain = method.attribute(ids, target=[4, 9])
    torch.testing.assert_close(method.compute_convergence_delta(attr, end_point=ids, target=[4, 9]), delta,
                               rtol=0, atol=1e-10)  # fmt: skip
    _, plain_delta = method.attribute(ids, target=[4, 9], return_convergence_delta=True)
    torch.testing.assert_close(method.compute_convergence_delta(plain.clone(), end_point=ids, target=[4, 9]),
                               plain_delta, rtol=0, atol=1e-10)  # fmt: skip
    full, full_delta = method.attribute(ids, target=[4, 9], return_matrix=True, return_convergence_delta=True)
    with pytest.raises(ValueError, match="one query row per example, shaped like end_point"):
        method.compute_convergence_delta(full, end_point=ids, target=[4, 9])
    row = method.compute_convergence_delta(full[:, 3], end_point=ids, target=[4, 9], position=3)
    torch.testing.assert_close(row, full_delta[:, 3], rtol=0, atol=1e-10)
    # inputs_embeds with N = D: a whole map is shaped like the input, and is told apart by the call that made it
    n = m2.config.hidden_size
    emb = m2.get_input_embeddings()(random_ids(1, n, seed=3)).detach()
    square = method.attribute(emb, target=4, return_matrix=True)
    assert square.shape == emb.shape
    with pytest.raises(ValueError, match="these attributions are whole maps"):
        method.compute_convergence_delta(square, end_point=emb, target=4)
    # a copy knows none of the original's attributions
    clone = copy.deepcopy(method)
    assert clone.options_of(attr) == {} and method.options_of(attr)["position"] == 3


def test_a_separate_delta_reads_its_own_threads_call(m2):
    """One object shared by two threads: each thread's delta reads the row of its own last call, even when the other
    thread attributed another row in between."""
    ids = random_ids(2, 7, seed=8)
    method = LatimALTILogit(m2, activation="silu_gate", dtype=F64)
    barrier = threading.Barrier(2, timeout=120)
    seen: dict = {}

    def other() -> None:
        try:
            attr, delta = method.attribute(ids, target=[4, 9], position=2, return_convergence_delta=True)
            barrier.wait()  # the main thread attributes another row now
            barrier.wait()
            seen["pair"] = (method.compute_convergence_delta(attr, end_point=ids, target=[4, 9]), delta)
        except BaseException as err:  # reported by the main thread
            seen["error"] = err
            barrier.abort()

    thread = threading.Thread(target=other)
    thread.start()
    barrier.wait()
    attr, delta = method.attribute(ids, target=[4, 9], position=5, return_convergence_delta=True)
    barrier.wait()
    thread.join()
    assert "error" not in seen, seen.get("error")
    torch.testing.assert_close(*seen["pair"], rtol=0, atol=1e-10)
    torch.testing.assert_close(
        method.compute_convergence_delta(attr, end_point=ids, target=[4, 9]), delta, rtol=0, atol=1e-10
    )


def test_no_delta_where_scores_are_not_a_decomposition():
    model = build("mamba1", seed=2)
    ids = random_ids(1, 5)
    for method in (LatimL2(model), LatimL1(model), LatimALTI(model), MambaAttention(model), MambaAttribution(model),
                   MambaLRP(model)):  # fmt: skip
        with pytest.raises(ValueError, match="has no convergence delta"):
            method.attribute(ids, return_convergence_delta=True)
        with pytest.raises(ValueError, match="has no convergence delta"):
            method.compute_convergence_delta(torch.zeros(1, 5), None, ids)


# ------------------------------------------------------------------ contrastive ALTI-Logit


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_contrastive_rows_sum_to_the_logit_difference(kind):
    """ALTI-Logit is linear in the unembedding row: projecting on U_t − U_c gives rows that sum to the model's own
    logit difference (minus the offset), and that equal the two plain decompositions' difference column by column."""
    model = build(kind, seed=13).double()
    ids = random_ids(2, 6, seed=14)
    target, contrast = torch.tensor([5, 11]), torch.tensor([17, 2])
    diff = latim_captum.alti_logit(model, ids, target=target, contrast=contrast, dtype=F64)
    plain_t = latim_captum.alti_logit(model, ids, target=target, dtype=F64)
    plain_c = latim_captum.alti_logit(model, ids, target=contrast, dtype=F64)
    torch.testing.assert_close(diff.scores, plain_t.scores - plain_c.scores, rtol=1e-9, atol=1e-10)
    logits = _logits(model, ids)
    real = logits[torch.arange(2), :, target] - logits[torch.arange(2), :, contrast]  # [B, N]
    torch.testing.assert_close(diff.logits, real, rtol=1e-5, atol=1e-5)
    gap = diff.scores.sum(-1) - (diff.logits - diff.offset)
    assert float(gap.abs().max()) < 1e-6 * float(logits.abs().max()), "rows sum to the logit difference"
    # the Captum class: same row, delta ≈ 0, and the single-query function
    method = LatimALTILogit(model, dtype=F64)
    attr, delta = method.attribute(ids, target=target, contrast=contrast, return_convergence_delta=True)
    torch.testing.assert_close(attr, diff.scores[:, -1], rtol=1e-8, atol=1e-10)
    assert float(delta.abs().max()) < 1e-6 * float(logits.abs().max())
    row = latim_captum.alti_logit_row(model, ids, target=target, contrast=contrast, dtype=F64)
    torch.testing.assert_close(row.scores, diff.scores[:, -1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(method.compute_convergence_delta(attr, None, ids, target, contrast=contrast), delta)


def test_contrast_is_refused_where_no_logit_is_explained():
    model = build("mamba1", seed=2)
    with pytest.raises(ValueError, match="explains no logit, so it has no contrastive form"):
        LatimALTI(model).attribute(random_ids(1, 4), target=3, contrast=4)


# ------------------------------------------------------------------ IG-shaped calls and NoiseTunnel


def test_integrated_gradients_arguments(m2):
    ids = random_ids(2, 6, seed=3)
    method = LatimALTILogit(m2, dtype=F64)
    plain = method.attribute(ids, target=[1, 2])
    same = method.attribute(ids, baselines=None, target=[1, 2], internal_batch_size=1)
    torch.testing.assert_close(plain, same, rtol=0, atol=1e-12)
    with pytest.warns(UserWarning, match="no integration path; n_steps and method are ignored"):
        warned = method.attribute(ids, target=[1, 2], n_steps=300, method="riemann_trapezoid")
    torch.testing.assert_close(plain, warned, rtol=0, atol=0)
    for baselines in (torch.zeros_like(ids), 0, 0.0, (torch.zeros_like(ids),)):
        with pytest.raises(ValueError, match="needs no baseline"):
            method.attribute(ids, baselines=baselines)
    with pytest.raises(ValueError, match="internal_batch_size must be a positive int"):
        method.attribute(ids, internal_batch_size=0)
    # IMDB tutorial shape: lig.attribute(ids, reference_ids, ...) puts the baseline where our target is
    with pytest.raises(ValueError, match="Integrated Gradients' positional baselines"):
        method.attribute(ids, torch.zeros_like(ids))


def test_noise_tunnel_on_token_ids_says_to_pass_inputs_embeds(m2):
    ids = random_ids(2, 5, seed=4)
    for cls in (LatimALTILogit, LatimALTI, LatimL2, MambaLRP):
        with pytest.raises(ValueError, match=r"NoiseTunnel cannot add noise to token ids; pass inputs_embeds"):
            NoiseTunnel(cls(m2)).attribute(ids, nt_samples=2, stdevs=0.1)
    emb = m2.get_input_embeddings()(ids).detach()
    attr, delta = NoiseTunnel(LatimALTILogit(m2, dtype=F64)).attribute(
        emb, nt_samples=2, stdevs=0.01, target=[3, 4], return_convergence_delta=True
    )
    assert attr.shape == emb.shape and float(delta.abs().max()) < 1e-5
