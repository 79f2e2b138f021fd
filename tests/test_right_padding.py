"""Right padding is never attributed: a right-padded batch gives each example's scores as if it were alone.

Hugging Face tokenizers pad on the right by default, so ``position=-1`` would land on a pad token for the shorter
examples. Every front end queries each example's last real token by default (per the attention mask), its padding
columns are exactly 0, and an explicit position on padding is an error."""

from __future__ import annotations

import pytest
import torch

import latim_captum
from conftest import build, random_ids
from latim_captum import LatimALTI, LatimALTILogit, LatimL2, MambaAttention, MambaAttribution, MambaLRP
from latim_captum.baselines import mamba_attention, mamba_attribution, mamba_lrp

LENGTHS = (7, 4, 5)  # real tokens per example; the batch is padded on the right to 7
PAD_ID = 0


def right_padded(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(ids [3, 7], mask [3, 7], [each example's real ids, [1, n_b]])`` with right padding."""
    rows = [random_ids(1, n, seed=seed + k).clamp_min(1) for k, n in enumerate(LENGTHS)]
    n = max(LENGTHS)
    ids = torch.full((len(rows), n), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : row.shape[1]] = row[0]
        mask[b, : row.shape[1]] = 1
    return ids, mask, rows


@pytest.fixture(scope="module", params=["mamba1", "falcon", "mamba2"])
def model(request):
    return build(request.param, seed=11).double()


CLASSES = [
    (LatimALTILogit, {}),
    (LatimALTI, {}),
    (LatimL2, {}),
    (MambaAttention, {}),
    (MambaAttribution, {}),
    (MambaLRP, {}),
]


@pytest.mark.parametrize("cls,kw", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_captum_padded_batch_equals_each_example_alone(model, cls, kw):
    ids, mask, rows = right_padded()
    method = cls(model, dtype=torch.float64, **kw)
    batch = method.attribute(ids, additional_forward_args=mask)
    for b, alone in enumerate(rows):
        n_b = alone.shape[1]
        expected = method.attribute(alone)[0]
        torch.testing.assert_close(batch[b, :n_b], expected, rtol=1e-6, atol=1e-9, msg=f"example {b} ({cls.__name__})")
        assert bool((batch[b, n_b:] == 0).all()), f"padding columns of example {b} must be exactly 0"


def test_alti_logit_padded_batch_is_complete(model):
    """Eq 8 on a right-padded batch: each example's row sums to its own last real token's logit (Captum's delta is
    0 for silu_gate), and that logit is the model's own prediction at that token."""
    ids, mask, rows = right_padded()
    attr, delta = LatimALTILogit(model, dtype=torch.float64).attribute(
        ids, additional_forward_args=mask, return_convergence_delta=True
    )
    logits = model(ids, attention_mask=mask).logits.double()
    for b, alone in enumerate(rows):
        last = alone.shape[1] - 1
        pred_logit = logits[b, last].max()
        res = latim_captum.alti_logit(model, alone, dtype=torch.float64)
        assert torch.allclose(res.logits[0, last], pred_logit, rtol=1e-5), "explains the real last token's prediction"
        assert abs(float(attr[b].sum()) - float(res.logits[0, last] - res.offset[0, last])) < 1e-5
    assert float(delta.abs().max()) < 1e-5 * float(logits.abs().max())


def test_single_query_functions_per_example_rows(model):
    ids, mask, rows = right_padded()
    row = latim_captum.alti_logit_row(model, ids, attention_mask=mask, dtype=torch.float64)
    roll = latim_captum.alti_rollout_row(model, ids, attention_mask=mask, dtype=torch.float64)
    for b, alone in enumerate(rows):
        n_b = alone.shape[1]
        full = latim_captum.alti_logit(model, alone, dtype=torch.float64)
        torch.testing.assert_close(row.scores[b, :n_b], full.scores[0, -1], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(row.logits[b] - row.offset[b], full.logits[0, -1] - full.offset[0, -1])
        rolled = latim_captum.alti_rollout(model, alone, dtype=torch.float64)
        torch.testing.assert_close(roll[b, :n_b], rolled[0, -1], rtol=1e-6, atol=1e-9)
        assert bool((row.scores[b, n_b:] == 0).all()) and bool((roll[b, n_b:] == 0).all())


def test_single_query_rows_of_a_padded_batch_stay_rows(model, monkeypatch):
    """Examples queried at different rows (right padding) read one map row per distinct query, never the slab of rows
    between the shortest and the longest example's (``O(B·N²)``, not the ``O(N·d)`` these functions promise)."""
    from latim_captum.maps import rows as rows_mod

    ids, mask, _ = right_padded()
    real, widths = rows_mod.RowStream.maps, []

    def spy(self, layer, measure, rows):
        widths.append((measure, rows[1] - rows[0]))
        return real(self, layer, measure, rows)

    monkeypatch.setattr(rows_mod.RowStream, "maps", spy)
    latim_captum.alti_logit_row(model, ids, attention_mask=mask, dtype=torch.float64, chunk=2, block=2)
    logit_rows = [w for m, w in widths if m == "logit"]
    assert logit_rows and set(logit_rows) == {1}, widths  # the query rows (6, 3, 4): three reads of one row
    assert len(logit_rows) == 3 * model.config.num_hidden_layers
    assert max(w for m, w in widths if m == "alti") <= 2  # the Horner step's ALTI rows, chunk at a time


def test_explicit_position_on_padding_is_an_error(model):
    ids, mask, _ = right_padded()
    tr = latim_captum.trace(model, ids, attention_mask=mask)
    calls = [
        lambda: LatimALTILogit(model).attribute(ids, additional_forward_args=mask, position=-1),
        lambda: LatimL2(model).attribute(ids, additional_forward_args=mask, position=5),
        lambda: MambaLRP(model).attribute(ids, additional_forward_args=mask, position=6),
        lambda: latim_captum.alti_logit_row(tr, position=-1),
        lambda: latim_captum.alti_rollout_row(model, ids, attention_mask=mask, position=4),
        lambda: mamba_lrp(model, ids, attention_mask=mask, position=-1),
        lambda: mamba_attribution(model, ids, attention_mask=mask, position=6),
        lambda: mamba_attention(model, ids, attention_mask=mask, position=-2),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"points at padding in example 1 \(its last real token is at 3\)"):
            call()
    # a position every example has is fine, and is the same row for all of them
    attr = LatimALTILogit(model, dtype=torch.float64).attribute(ids, additional_forward_args=mask, position=2)
    assert bool((attr[:, 3:] == 0).all())


def test_left_padding_still_queries_the_last_token():
    """Left padding (Inseq's) keeps the last column as every example's last real token."""
    model = build("mamba1", seed=2).double()
    ids = random_ids(2, 6, seed=4).clamp_min(1)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    got = LatimALTILogit(model, dtype=torch.float64).attribute(ids, additional_forward_args=mask)
    alone = LatimALTILogit(model, dtype=torch.float64).attribute(ids[1:, 2:])
    torch.testing.assert_close(got[1, 2:], alone[0], rtol=1e-6, atol=1e-9)
    assert bool((got[1, :2] == 0).all())


def test_internal_batch_size_changes_no_number():
    model = build("mamba2", seed=5).double()
    ids, mask, _ = right_padded(seed=9)
    method = LatimALTILogit(model, dtype=torch.float64)
    whole = method.attribute(ids, additional_forward_args=mask)
    one_by_one = method.attribute(ids, additional_forward_args=mask, internal_batch_size=1)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-9, atol=1e-12)
    matrix = dict(additional_forward_args=mask, return_matrix=True, return_convergence_delta=True)
    full, delta = method.attribute(ids, **matrix)
    full2, delta2 = method.attribute(ids, internal_batch_size=2, **matrix)
    torch.testing.assert_close(full, full2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(delta, delta2, rtol=0, atol=1e-10)


def test_single_query_target_and_contrast_errors_name_the_argument(model):
    ids = random_ids(2, 6, seed=4)
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=f"contrast token id {vocab} is out of the vocabulary"):
        latim_captum.alti_logit_row(model, ids, contrast=[0, vocab])
    with pytest.raises(ValueError, match=r"target has shape \(1,\); expected a scalar or \[batch\]=\[2\]$"):
        latim_captum.alti_logit_row(model, ids, target=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"contrast has shape \(3,\); expected a scalar or \[batch\]=\[2\]$"):
        latim_captum.alti_logit_row(model, ids, contrast=[1, 2, 3])
    # the full maps take one target per position too, and say so
    with pytest.raises(ValueError, match=r"contrast has shape \(3,\); expected a scalar, \[batch\]=\[2\] or "):
        latim_captum.alti_logit(model, ids, contrast=[1, 2, 3])
