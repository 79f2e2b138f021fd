"""The batched gradient rows (one replica per query row) against one plain ``torch.autograd.grad`` per row."""

from __future__ import annotations

import pytest
import torch

from conftest import KINDS, VOCAB, build
from latim_captum.gradient_rows import gradient_rows, gradient_rows_ref


def _inputs(n: int = 9):
    ids = torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(3))
    rows = [7, 2, 5]  # out of order: each row keeps its own target
    targets = torch.randint(0, VOCAB, (2, len(rows)), generator=torch.Generator().manual_seed(4))
    return ids, rows, targets


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("max_sequences", [2, 256])  # one row per pass, all rows in one pass
def test_batched_rows_equal_one_gradient_per_row(kind, method, max_sequences):
    model = build(kind, layers=2)
    ids, rows, targets = _inputs()
    got = gradient_rows(model, ids, method, rows=rows, targets=targets, max_sequences=max_sequences)
    ref = gradient_rows_ref(model, ids, method, rows=rows, targets=targets)
    assert got.shape == (2, 3, 9) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    assert got[:, 1, 3:].abs().max() == 0  # row 2 reads nothing after it (causal)
    assert got[:, 1, :3].abs().max() > 0


#: steps for Σ_j IG_j to reach f(e) − f(0) within 1e-3: near the zero baseline the final RMSNorm (Mamba-2's gated
#: one too) is steep (x/√(x² + ε)), so the quadrature needs many steps there
COMPLETE_STEPS = {"mamba1": 256, "mamba2": 4096}


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_integrated_gradients_rows_batched_equal_one_row_each_and_are_complete(kind):
    model = build(kind, layers=2)
    ids, rows, targets = _inputs()
    batched = gradient_rows(model, ids, "integrated_gradients", rows=rows, targets=targets, n_steps=32)
    one = torch.cat(
        [
            gradient_rows(model, ids[b : b + 1], "integrated_gradients", rows=[q], targets=targets[b : b + 1, [k]],
                          n_steps=32)  # fmt: skip
            for b in range(2)
            for k, q in enumerate(rows)
        ]
    ).reshape(2, 3, -1)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-4)
    # completeness: Σ_j IG_j = f(e) − f(0)
    steps = COMPLETE_STEPS[kind]
    complete = gradient_rows(model, ids, "integrated_gradients", rows=rows, targets=targets, n_steps=steps)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        full = model(inputs_embeds=embeds).logits
        zero = model(inputs_embeds=torch.zeros_like(embeds)).logits
    for b in range(2):
        for k, q in enumerate(rows):
            t = int(targets[b, k])
            gap = float(full[b, q, t] - zero[b, q, t])
            assert complete[b, k].sum().item() == pytest.approx(gap, rel=1e-3, abs=1e-5)


def test_gradient_rows_name_bad_input():
    model = build("mamba1", layers=1)
    ids, rows, targets = _inputs()
    with pytest.raises(ValueError, match="unknown gradient method 'grad'"):
        gradient_rows(model, ids, "grad", rows=rows, targets=targets)
    with pytest.raises(ValueError, match=r"rows must be in 0..8, got \[9\]"):
        gradient_rows(model, ids, "saliency", rows=[9], targets=targets[:, :1])
    with pytest.raises(ValueError, match=r"targets must be \[B, R\] = \[2, 3\]"):
        gradient_rows(model, ids, "saliency", rows=rows, targets=targets[:, :2])
    with pytest.raises(ValueError, match="max_sequences must be >= 1"):
        gradient_rows(model, ids, "saliency", rows=rows, targets=targets, max_sequences=0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        gradient_rows(model, ids, "saliency", rows=rows, targets=targets)
    model.train()
    gradient_rows(model, ids, "saliency", rows=rows, targets=targets)
    assert model.training  # the caller's mode comes back
