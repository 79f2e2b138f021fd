"""The baselines behind the Captum and Inseq front ends give the same numbers as the plain functions."""

from __future__ import annotations

import pytest
import torch

import latim_captum
from conftest import build, random_ids
from latim_captum import MambaAttention, MambaAttribution, MambaLRP, mamba_attention, mamba_attribution, mamba_lrp


@pytest.mark.parametrize(
    "cls,fn,kwargs",
    [
        (MambaAttention, mamba_attention, {"layers": [1]}),
        (MambaAttribution, mamba_attribution, {}),
        (
            lambda m: MambaAttribution(m, gradient="attention"),
            lambda *a, **k: mamba_attribution(*a, gradient="attention", **k),
            {},
        ),
        (MambaLRP, mamba_lrp, {}),
    ],
)
def test_captum_class_rows_equal_function(cls, fn, kwargs):
    model = build("mamba1", seed=4)
    ids = random_ids(2, 6, seed=2)
    full = fn(model, ids, **kwargs)
    if full.dim() == 4:
        full = full[:, 0]
    method = cls(model)
    with torch.no_grad():  # as inside Captum pipelines: gradient baselines must still work
        assert torch.allclose(method.attribute(ids, return_matrix=True), full, atol=1e-6)
    for pos in (-1, 2):
        row = method.attribute(ids, position=pos)
        assert row.shape == (2, 6)
        assert torch.allclose(row, full[:, pos], atol=1e-6), f"{method.get_name()} row {pos}"
    assert torch.allclose(method.attribute(ids, return_matrix=True), full, atol=1e-6)
    assert method.get_name() in {"Mamba-Attention", "Mamba-Attribution", "MambaLRP"}, method.get_name()


def test_captum_baseline_target_is_used():
    model = build("mamba2", seed=5)
    ids = random_ids(1, 5, seed=3)
    a = MambaLRP(model).attribute(ids, target=3)
    b = MambaLRP(model).attribute(ids, target=4)
    assert torch.allclose(a, mamba_lrp(model, ids, target=3, position=-1), atol=1e-6)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="aggregates every layer"):
        MambaLRP(model).attribute(ids, layer=0)


inseq = pytest.importorskip("inseq")


@pytest.mark.parametrize("name", ["mamba_attention", "mamba_attribution", "mamba_lrp"])
def test_inseq_baselines_registered_and_match(name):
    from test_inseq import make_tokenizer

    assert name in inseq.list_feature_attribution_methods()
    tok = make_tokenizer()
    model = build("mamba1", seed=6)
    im = inseq.load_model(model, name, tokenizer=tok)
    text, target = "a b c d", "a b c d e"
    out = im.attribute(text, generated_texts=target, show_progress=False)
    attr = out.sequence_attributions[0].target_attributions
    ids = torch.tensor([tok(target)["input_ids"]])
    fn = getattr(latim_captum, name)
    maps = fn(model, ids[:, :-1], target=ids[:, 1:]) if name != "mamba_attention" else fn(model, ids[:, :-1])
    n_prompt = len(tok(text)["input_ids"])
    last = maps[0, ..., -1, :] if maps.dim() == 3 else maps[0, :, -1, :].T  # row of the last generated step
    got = attr[:, -1]
    if maps.dim() == 3:  # an aggregated map has one (all-layer) slot in Inseq's extra dimension
        assert got.shape[-1] == 1
        got = got[..., 0]
    assert torch.allclose(got[: last.shape[0]].float(), last.float(), atol=1e-5, equal_nan=False), name
    assert n_prompt < ids.shape[1]


@pytest.mark.parametrize("name", ["mamba_lrp", "mamba_attribution"])
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_row_batching_changes_nothing(name, kind):
    """Replicating the input per query row (one backward per group) gives the per-row gradients exactly, whatever
    the group size (one that does not divide N included), with padding and per-row targets."""
    from conftest import left_pad_mask
    from latim_captum import baselines

    fn = getattr(baselines, name)
    model = build(kind, seed=8).double()
    ids = random_ids(2, 7, seed=5)
    mask = left_pad_mask(2, 7, [0, 2])
    target = random_ids(2, 7, seed=6)
    one = fn(model, ids, attention_mask=mask, target=target, row_batch=1, dtype=torch.float64)
    for row_batch in (3, 7, 64):
        many = fn(model, ids, attention_mask=mask, target=target, row_batch=row_batch, dtype=torch.float64)
        assert torch.allclose(one, many, atol=1e-12), row_batch
    assert one[:, 2:].abs().sum() > 0  # a map, not zeros on both sides
    with pytest.raises(ValueError, match="row_batch must be >= 1"):
        fn(model, ids, row_batch=0)
