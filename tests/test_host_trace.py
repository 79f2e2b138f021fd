"""Traces kept in host memory (``trace(..., store="host")``): same maps, one layer on the device at a time."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_hybrids import build_hybrid

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum import traces as traces_module
from latim_captum.maps.memory import RequestSizes, estimate, host_trace_bytes
from latim_captum.traces import HostLayers, LayerTrace, ModelTrace, as_stored


def _both(model, ids, mask=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hybrids warn about left padding
        device = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
        host = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64, store="host")
    return device, host


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_host_trace_gives_the_same_maps(kind):
    model = build(kind, layers=3, seed=2)
    ids, mask = random_ids(2, 10, seed=2), left_pad_mask(2, 10, [0, 3])
    device, host = _both(model, ids, mask)
    assert isinstance(host.layers, HostLayers) and isinstance(device.layers, list)
    assert host.kinds == device.kinds and host.activation == device.activation and host.n_layers == 3
    for method in ("l2", "alti", "alti_logit"):
        torch.testing.assert_close(
            latim_captum.interactions(host, method=method), latim_captum.interactions(device, method=method)
        )
    want = latim_captum.alti_logit_row(device, position=-1)
    got = latim_captum.alti_logit_row(model, ids, attention_mask=mask, dtype=torch.float64, trace_store="host")
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.scores.sum(-1), got.logits - got.offset)
    torch.testing.assert_close(
        latim_captum.alti_rollout_row(model, ids, attention_mask=mask, dtype=torch.float64, trace_store="host"),
        latim_captum.alti_rollout_row(device, position=-1),
    )


@pytest.mark.parametrize("family", ["bamba", "falcon_h1", "zamba2"])
def test_host_trace_of_hybrids(family):
    model, _ = build_hybrid(family, seed=3)
    ids = random_ids(1, 9, seed=3)
    device, host = _both(model, ids)
    torch.testing.assert_close(
        latim_captum.alti_logit(host).scores, latim_captum.alti_logit(device).scores, atol=1e-12, rtol=1e-10
    )
    torch.testing.assert_close(
        latim_captum.alti_logit_row(host, position=-1).scores, latim_captum.alti_logit_row(device, position=-1).scores
    )


def _host_layers(n: int = 4) -> HostLayers:
    """Host layers handed out on the meta device: every copy is visible (meta tensors), none costs memory."""
    tr = latim_captum.trace(build("mamba2", layers=n), random_ids(1, 6))
    return HostLayers(tr.layers, [torch.device("meta")] * n)


def test_one_layer_on_the_device_at_a_time(monkeypatch):
    layers = _host_layers()
    copies = []
    real = traces_module._moved

    def counted(value, device, pin=False):
        if isinstance(value, LayerTrace):  # one per layer copied (the recursion's tensors are not counted)
            copies.append(device)
        return real(value, device, pin)

    monkeypatch.setattr(traces_module, "_moved", counted)
    seen = [layer for layer in layers]
    assert all(layer.residual.device.type == "meta" for layer in seen) and len(copies) == 4
    assert layers[-1] is seen[-1] and len(copies) == 4  # the last one handed out is kept, not copied again
    tail = layers[1:]
    assert isinstance(tail, HostLayers) and len(tail) == 3
    assert tail[-1] is seen[-1] and len(copies) == 4  # a slice shares the one device slot
    _ = tail[0]  # another layer replaces it
    assert len(copies) == 5 and layers._slot["host"] is layers.host[1]
    assert [layer.layer for layer in reversed(layers)] == [3, 2, 1, 0]
    with pytest.raises(IndexError):
        layers[4]


def test_reading_types_and_shapes_copies_nothing(monkeypatch):
    layers = _host_layers()
    tr = latim_captum.trace(build("mamba2", layers=4), random_ids(1, 6))
    host_trace = ModelTrace(embeddings=tr.embeddings, layers=layers, readout=tr.readout, mask=None, dtype=tr.dtype)
    monkeypatch.setattr(traces_module, "_moved", lambda *a, **k: pytest.fail("a layer was copied"))
    assert host_trace.kinds == ["mamba2"] * 4 and host_trace.activation == "silu"
    assert all(isinstance(layer, LayerTrace) and layer.residual.device.type == "cpu" for layer in as_stored(layers))


def test_to_device_gives_a_plain_list():
    tr = latim_captum.trace(build("mamba1"), random_ids(1, 6), store="host")
    moved = tr.to("cpu")
    assert isinstance(moved.layers, list) and len(moved.layers) == 2
    want = latim_captum.interactions(tr, method="alti")
    torch.testing.assert_close(latim_captum.interactions(moved, method="alti"), want)


def test_bad_store_is_refused():
    model = build("mamba1")
    with pytest.raises(ValueError, match="store must be one of 'device', 'host', 'auto', got 'disk'"):
        latim_captum.trace(model, random_ids(1, 6), store="disk")
    with pytest.raises(ValueError, match="store must be one of"):
        latim_captum.alti_logit_row(model, random_ids(1, 6), trace_store="gpu")


def test_the_guard_counts_one_layer_on_the_device():
    sizes = RequestSizes(batch=1, seq=131072, sublayers=24, d_model=768, d_inner=1536, vocab=50280)
    on_device = estimate("trace", sizes, device="cuda")
    on_host = estimate("trace", sizes, device="cuda", trace_on_host=True)
    layer = host_trace_bytes(RequestSizes(**{**sizes.__dict__, "sublayers": 1}))
    assert on_device.trace - on_host.trace == 23 * layer
    assert host_trace_bytes(sizes) == 24 * layer and on_device.forward == on_host.forward


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_trace_on_cuda_holds_less_and_gives_the_same_row():
    model = build("mamba2", layers=6).cuda()
    ids = random_ids(1, 512).cuda()
    # a first trace makes the allocations that stay for the process (cuBLAS takes its 32 MiB workspace from the
    # caching allocator at its first matmul): measured after it, only what each trace holds is counted
    latim_captum.trace(model, ids)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    device = latim_captum.trace(model, ids)
    held_device = torch.cuda.memory_allocated() - base
    want = latim_captum.alti_logit_row(device, position=-1)
    del device
    torch.cuda.empty_cache()
    host = latim_captum.trace(model, ids, store="host")
    held_host = torch.cuda.memory_allocated() - base
    assert all(layer.residual.device.type == "cpu" and layer.residual.is_pinned() for layer in as_stored(host.layers))
    assert held_host < held_device / 3
    got = latim_captum.alti_logit_row(host, position=-1)
    assert got.scores.device.type == "cuda"
    torch.testing.assert_close(got.scores, want.scores)


def test_a_row_copies_each_layer_once(monkeypatch):
    """The single-query recursion hands each layer out once (sizing the tiles reads the kept layer, no copy)."""
    tr = latim_captum.trace(build("mamba2", layers=4), random_ids(1, 8), store="host")
    copies = []
    real = traces_module._moved

    def counted(value, device, pin=False):
        if isinstance(value, LayerTrace):
            copies.append(value.layer)
        return real(value, device, pin)

    monkeypatch.setattr(traces_module, "_moved", counted)
    row = latim_captum.alti_logit_row(tr, position=-1)
    torch.testing.assert_close(row.scores.sum(-1), row.logits - row.offset)
    assert sorted(copies) == [0, 1, 2, 3]


def test_single_query_keeps_its_trace_on_the_host_when_the_device_one_does_not_fit(monkeypatch):
    """``trace_store="auto"`` (the single-query default): a device-kept trace the memory guard refuses (a 7B shape
    at N = 8192) is made in host memory instead, with the same row; ``"device"`` still refuses, and the row of a
    trace that fits stays on the device."""
    from latim_captum import api
    from latim_captum.maps.options import LatimMemoryError

    model = build("mamba2", layers=2, seed=5)
    ids = random_ids(1, 9, seed=5)
    want = latim_captum.alti_logit_row(model, ids, trace_store="device")
    assert latim_captum.trace(model, ids, store="auto").store == "device"  # it fits
    real, stores = api.guard_memory, []

    def guarded(name, *args, **kwargs):
        if name == "trace":
            stores.append(kwargs["trace_store"])
            if kwargs["trace_store"] == "device":
                raise LatimMemoryError("trace needs about 113.2 GiB, more than the 87.9 GiB available")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(api, "guard_memory", guarded)
    assert latim_captum.trace(model, ids, store="auto").store == "host"
    assert stores == ["device", "host"]
    stores.clear()
    got = latim_captum.alti_logit_row(model, ids)
    assert stores == ["device", "host"]
    stores.clear()
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(latim_captum.alti_rollout_row(model, ids), latim_captum.alti_rollout_row(
        latim_captum.trace(model, ids, store="host"), position=-1))  # fmt: skip
    assert stores == ["device", "host", "host"]  # the row's: device refused, then host; then the explicit one
    with pytest.raises(LatimMemoryError, match="113.2 GiB"):
        latim_captum.alti_logit_row(model, ids, trace_store="device")
    with pytest.raises(ValueError, match="trace_store must be one of 'device', 'host', 'auto', got 'disk'"):
        latim_captum.alti_logit_row(model, ids, trace_store="disk")
