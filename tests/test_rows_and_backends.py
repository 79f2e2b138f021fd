"""One query row without ``N × N`` maps (``layer_maps(rows=...)``, :func:`alti_rollout_row`, the Captum classes'
``attribute`` at one position) and the public ``backend`` / ``precision`` options."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum import LatimALTI, LatimALTILogit, LatimL2, alti_rollout_row
from latim_captum.aggregate import rollout
from latim_captum.maps import layer_maps
from latim_captum.maps.options import check_precision

MEASURES = ("l2", "alti", "logit")


def _trace(kind: str, seed: int = 11):
    model = build(kind, layers=3, seed=seed)
    ids = random_ids(2, 10, seed=seed)
    mask = left_pad_mask(2, 10, [0, 3])
    return model, ids, mask, latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)


@pytest.mark.parametrize("backend", ("ref", "fast"))
def test_layer_map_rows_are_rows_of_the_full_map(kind, backend):
    """``rows=(start, stop)`` gives exactly those rows of the full map, on both CPU paths, every measure."""
    _, _, _, tr = _trace(kind)
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    for layer in tr.layers:
        full = layer_maps(layer, "silu", MEASURES, projection=proj, backend=backend, block_rows=3)
        for rows in ((0, 1), (2, 7), (9, 10)):
            part = layer_maps(layer, "silu", MEASURES, projection=proj, backend=backend, block_rows=3, rows=rows)
            for m in MEASURES:
                assert part[m].shape == (2, rows[1] - rows[0], 10)
                torch.testing.assert_close(part[m], full[m][:, rows[0] : rows[1]], rtol=0, atol=1e-12)


def test_layer_map_rows_out_of_range_name_the_problem(kind):
    _, _, _, tr = _trace(kind)
    for backend in ("ref", "fast"):
        for rows in ((3, 3), (-1, 2), (4, 11)):
            with pytest.raises(ValueError, match=r"rows .* must satisfy 0 <= start < stop <= 10"):
                layer_maps(tr.layers[0], "silu", ("l2",), backend=backend, rows=rows)


@pytest.mark.parametrize("backend", ("ref", "fast"))
@pytest.mark.parametrize("position", (-1, 5))
def test_rollout_row_is_the_rollout_row(kind, backend, position):
    """Row q of ``P^{(L)} ⋯ P^{(1)}`` by the streamed recursion: the full rollout's row, summing to 1."""
    _, _, _, tr = _trace(kind)
    full = rollout([layer_maps(layer, "silu", ("alti",), backend="ref")["alti"] for layer in tr.layers])
    row = alti_rollout_row(tr, position=position, activation="silu", block=3, chunk=2, backend=backend)
    assert row.shape == (2, 10)
    torch.testing.assert_close(row, full[:, position], rtol=0, atol=1e-12)
    torch.testing.assert_close(row.sum(-1), torch.ones(2, dtype=row.dtype), rtol=0, atol=1e-12)
    assert float(row[1, :3].abs().max()) == 0.0  # padding gets nothing


def _spy_rows(monkeypatch, module) -> list:
    """Record the ``rows`` of every ``layer_maps`` call made from ``module``."""
    calls = []
    real = module.layer_maps

    def spy(*args, **kwargs):
        calls.append(kwargs.get("rows"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "layer_maps", spy)
    return calls


def _forbid(monkeypatch, module, name: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} (full maps) called for one query row")

    monkeypatch.setattr(module, name, fail)


@pytest.mark.parametrize("layer", (-1, [0, 2], "all"))
def test_l2_attribute_computes_one_row(kind, layer, monkeypatch):
    """``LatimL2.attribute`` without ``return_matrix`` asks for the query row only, and gets the full map's row."""
    from latim_captum.maps import all_layers as stack

    model, ids, mask, _ = _trace(kind)
    method = LatimL2(model, dtype=torch.float64)
    for position in (-1, 6):
        full = method.attribute(ids, None, mask, layer=layer, return_matrix=True)
        calls = _spy_rows(monkeypatch, stack)
        row = method.attribute(ids, None, mask, position=position, layer=layer)
        monkeypatch.undo()
        assert calls and set(calls) == {(position % 10, position % 10 + 1)}
        torch.testing.assert_close(row, full[..., position, :], rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", ("rollout", 1, "all"))
def test_alti_attribute_computes_one_row(kind, layer, monkeypatch):
    """``LatimALTI.attribute``: the per-layer maps' row alone; the rollout's row by :func:`alti_rollout_row`
    (``rollout`` of full maps never runs); both equal the full maps' rows, and rows sum to 1."""
    from latim_captum.attr import latim_alti
    from latim_captum.maps import all_layers as stack

    model, ids, mask, _ = _trace(kind)
    method = LatimALTI(model, dtype=torch.float64)
    for position in (-1, 4):
        full = method.attribute(ids, None, mask, layer=layer, return_matrix=True)
        _forbid(monkeypatch, latim_alti, "alti_rollout")
        calls = _spy_rows(monkeypatch, stack)
        row = method.attribute(ids, None, mask, position=position, layer=layer)
        monkeypatch.undo()
        if layer != "rollout":
            assert calls and set(calls) == {(position % 10, position % 10 + 1)}
        torch.testing.assert_close(row, full[..., position, :], rtol=0, atol=1e-12)
        torch.testing.assert_close(row.sum(-1), torch.ones_like(row.sum(-1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ("silu_gate", "silu"))
def test_alti_logit_attribute_computes_one_row(kind, activation, monkeypatch):
    """``LatimALTILogit.attribute`` takes the single-query path (the full ``alti_logit`` never runs), with the same
    row, the same convergence delta, and a target per example."""
    from latim_captum.attr import latim_alti_logit

    model, ids, mask, _ = _trace(kind)
    model = model.double()
    # HF's RMSNorms compute in float32 even in float64 models: the model's own logit carries float32 rounding
    with torch.no_grad():
        tol = 1e-6 * float(model(ids, attention_mask=mask).logits.abs().max())
    method = LatimALTILogit(model, activation=activation, dtype=torch.float64)
    for position, target in ((-1, None), (5, [3, 7])):
        full, full_delta = method.attribute(
            ids, target, mask, return_matrix=True, return_convergence_delta=True
        )
        _forbid(monkeypatch, latim_alti_logit, "alti_logit")
        row, delta = method.attribute(ids, target, mask, position=position, return_convergence_delta=True)
        monkeypatch.undo()
        torch.testing.assert_close(row, full[:, position], rtol=0, atol=1e-10)
        torch.testing.assert_close(delta, full_delta[:, position], rtol=0, atol=1e-10)
        if activation == "silu_gate":  # exact: the row sums to the target logit minus the offset
            assert float(delta.abs().max()) < tol


def test_backend_and_precision_are_checked_by_name():
    model = build("mamba1", seed=2)
    ids = random_ids(1, 6, seed=2)
    for cls in (LatimL2, LatimALTI, LatimALTILogit):
        with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of auto, ref, fast, triton"):
            cls(model, backend="cuda")
        with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of highest, tf32, bf16"):
            cls(model, precision="fp8")
        # the reference computes in the compute dtype only: a reduced precision there is an error, not ignored
        with pytest.raises(ValueError, match="precision='tf32' sets the W_o product of backend='fast' or 'triton'"):
            cls(model, backend="ref", precision="tf32").attribute(ids)
    with pytest.raises(ValueError, match="backend='ref' takes the reference path on cpu"):
        latim_captum.interactions(model, ids, method="alti", backend="ref", precision="bf16")
    # "auto" is the tiles on a CPU too: a reduced precision is honoured there, neither refused nor ignored
    exact = latim_captum.interactions(model, ids, method="alti")
    rounded = latim_captum.interactions(model, ids, method="alti", precision="bf16")
    assert 0 < float((rounded - exact).abs().max()) < 5e-2


def test_auto_is_the_tiled_path_on_a_cpu(monkeypatch):
    """``backend="auto"`` takes the PyTorch tiles on a CPU (4–17× faster than the reference for Mamba-1), with the
    reference's maps."""
    from latim_captum.maps import layer as layer_module

    model = build("mamba1", seed=3)
    ids = random_ids(2, 9, seed=4)
    calls = []
    real = layer_module.layer_maps_fast
    monkeypatch.setattr(layer_module, "layer_maps_fast", lambda *a, **k: calls.append(1) or real(*a, **k))
    auto = latim_captum.interactions(model, ids, method="alti_logit")
    assert calls, "backend='auto' did not reach the tiles on the CPU"
    ref = latim_captum.interactions(model, ids, method="alti_logit", backend="ref")
    torch.testing.assert_close(auto, ref, rtol=1e-4, atol=1e-5)


def test_precision_reaches_the_tiles(monkeypatch):
    """``precision`` and ``backend`` of the public functions and classes reach :func:`layer_maps_fast`."""
    from latim_captum.maps import layer as layer_module

    model = build("mamba2", seed=2)
    ids = random_ids(1, 6, seed=2)
    seen = []
    real = layer_module.layer_maps_fast

    def spy(*args, **kwargs):
        seen.append((kwargs["precision"], kwargs["kernel"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(layer_module, "layer_maps_fast", spy)
    latim_captum.interactions(model, ids, method="l2", backend="fast", precision="bf16")
    LatimALTILogit(model, backend="fast", precision="highest").attribute(ids)
    LatimALTI(model, backend="fast", precision="bf16").attribute(ids, return_matrix=True)
    assert {"bf16", "highest"} == {p for p, _ in seen} and {k for _, k in seen} == {"torch"}
    # TF32 exists on CUDA only: on the CPU it would give the 'highest' maps under its name
    with pytest.raises(ValueError, match="precision='tf32' runs the W_o product on CUDA"):
        LatimALTILogit(model, backend="fast", precision="tf32").attribute(ids)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    with pytest.raises(ValueError, match="compute dtype is float64"):  # TF32 rounds float32 products only
        check_precision("tf32", "fast", torch.device("cuda"), tr.dtype)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs CPU tensors")
def test_triton_backend_on_cpu_names_what_it_needs():
    """``backend="triton"`` on a CPU says what is missing: the triton package, or CUDA tensors."""
    model = build("mamba1", seed=2)
    ids = random_ids(1, 6, seed=2)
    if importlib.util.find_spec("triton") is None:
        with pytest.raises(ImportError, match=r"needs the triton package \(pip install triton\)"):
            LatimL2(model, backend="triton").attribute(ids)
    else:
        with pytest.raises(ValueError, match="kernel='triton' needs CUDA tensors"):
            LatimL2(model, backend="triton").attribute(ids)
