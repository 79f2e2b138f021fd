"""`latim plan` / :mod:`latim_captum.plan`: the longest input each request admits, from the memory guard's own
arithmetic on a model's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import build
from latim_captum import _memory
from latim_captum.bench_speed import build_model
from latim_captum.maps.memory import DEFAULT_TILE_BYTES
from latim_captum.plan import REQUESTS, largest_length, model_memory, plan, request_estimate, shape_of

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
@pytest.mark.parametrize("request_name", list(REQUESTS))
def test_the_largest_length_is_where_the_estimate_meets_the_memory(kind, request_name):
    """Memory set to exactly what N = 300 needs (weights included): the largest length is 300, since every term of
    the estimate grows with N; one byte less gives 299 or fewer."""
    shape = model_memory(build(kind), kind)
    need, _ = request_estimate(shape, request_name, 300)
    exact = shape.weight_bytes + need.total
    assert largest_length(shape, request_name, exact) == 300
    assert largest_length(shape, request_name, exact - 1) < 300
    assert largest_length(shape, request_name, shape.weight_bytes) == 0  # the weights leave nothing


def test_the_host_limits_the_host_kept_row():
    shape = model_memory(build("mamba1"), "m")
    _, host = request_estimate(shape, "row_host", 500)
    assert largest_length(shape, "row_host", 2**40, host_bytes=host) == 500
    assert largest_length(shape, "row_host", 2**40, host_bytes=host - 1) < 500
    assert largest_length(shape, "row", 2**40, host_bytes=1) > 500  # a device-kept trace needs no host memory


@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "bamba"])
@pytest.mark.parametrize(
    ("request_name", "front_end", "store"),
    [("maps", "interactions", "device"), ("alti_logit", "alti_logit", "device"), ("row", "trace", "device"),
     ("row_host", "trace", "host")],
)  # fmt: skip
def test_the_plan_counts_what_the_guard_counts(kind, request_name, front_end, store, monkeypatch):
    """The guard's own estimate for a real call on a real model (captured where it is checked) equals the plan's,
    part by part; on a CPU the guard adds its fixed tile budget, which CUDA replaces by the free memory."""
    if kind == "bamba":  # a hybrid (Mamba-2 and attention blocks, each with its MLP) at tiny widths
        model = build_model("bamba", True, torch.float32, torch.device("cpu"))
    else:
        model = build(kind, layers=3)
    seen = []
    monkeypatch.setattr(_memory, "check_fits", lambda need, device, what, advice: seen.append(need))
    ids = torch.zeros(2, 57, dtype=torch.long)
    _memory.guard_memory(front_end, model, ids, None, trace_store=store)
    guard = seen[-1]
    mine, _ = request_estimate(model_memory(model), request_name, 57, batch=2)
    assert (guard.trace, guard.forward, guard.result) == (mine.trace, mine.forward, mine.result)
    # work = the front end's working maps + max(tile, reference block of the attention sublayers): the tile is the
    # fixed CPU budget for the guard here and 0 on CUDA (sized to the free memory) for the plan
    one_map = 2 * 57 * 57 * 4
    maps = {"interactions": one_map, "alti_logit": 4 * one_map}.get(front_end)
    if maps is None:  # the trace alone: no working maps, no tile
        assert guard.work == mine.work == 0
    else:
        assert guard.work == maps + max(DEFAULT_TILE_BYTES, mine.work - maps)
        assert (mine.work > maps) == (kind == "bamba")  # only a hybrid's attention needs reference blocks


def test_a_shape_on_the_meta_device_is_the_same_as_the_model():
    """No weights are made for a plan: a meta-device build has the widths and weight bytes of the real one."""
    real = model_memory(build_model("bamba", True, torch.bfloat16, torch.device("cpu")))
    meta = model_memory(build_model("bamba", True, torch.bfloat16, torch.device("meta")))
    assert real == meta and real.widths["attention_heads"] > 0 and real.model_itemsize == 2


def test_the_falcon_7b_numbers_match_the_guard_on_an_h200():
    """`speed-h200-large-falcon7b-2026-12-05.md`: the guard, on the H200 with the real 64-layer model, refused the
    single query at N = 8192 saying "trace 90.2 GiB, forward pass 23.0 GiB"; the plan builds the shape on the meta
    device and must say the same."""
    text = (RESULTS / "speed-h200-large-falcon7b-2026-12-05.md").read_text()
    trace_gib, forward_gib = map(float, re.search(r"trace ([\d.]+) GiB, forward pass ([\d.]+) GiB", text).groups())
    need, _ = request_estimate(shape_of("falcon_mamba_7b"), "row", 8192)
    assert (round(need.trace / 2**30, 1), round(need.forward / 2**30, 1)) == (trace_gib, forward_gib)
    # published: 7.27 B parameters, bf16
    assert abs(shape_of("falcon_mamba_7b").weight_bytes / 2 - 7.27e9) < 0.01e9


def test_a_config_folder_is_planned_from_its_config(tmp_path):
    model = build("mamba2", layers=3)
    model.config.save_pretrained(tmp_path)  # a config alone: no weights, no tokenizer
    shape = shape_of(str(tmp_path))
    assert shape.widths == model_memory(model).widths and shape.model_itemsize == 4


def test_plan_rows():
    shape = shape_of("mamba2")
    rows = plan(shape, 80 * 2**30, 2**40, length=2048)
    assert [r["request"] for r in rows] == list(REQUESTS)
    for row in rows:
        assert row["largest_n"] == largest_length(shape, row["request"], 80 * 2**30, 2**40)
        assert row["fits"] == (row["largest_n"] >= 2048)
    # what grows fastest admits the least: all layers' maps < ALTI-Logit < one row < one row from the host
    maps, logit, row, host = (r["largest_n"] for r in rows)
    assert maps < logit < row < host


def test_latim_plan_command(tmp_path, capsys):
    from latim_captum.cli import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "falcon_mamba_7b", "--gpu-gib", "80", "--host-gib", "128", "--tokens", "8192",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    shape = shape_of("falcon_mamba_7b")
    by_name = {r["request"]: r for r in saved["rows"]}
    for name, row in by_name.items():
        assert row["largest_n"] == largest_length(shape, name, 80 * 2**30, 128 * 2**30)
        assert f"{row['largest_n']:,}" in printed
    # 64 layers at N = 8192 keep a 90 GiB trace: only the host-kept single query fits 80 GiB
    assert [by_name[n]["fits"] for n in REQUESTS] == [False, False, False, True]
    assert "mamba-ssm's kernels" in printed  # a Mamba-1 shape says what its forward term assumes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "mamba1", "--gpu-gib", "0"], "must be a positive number"),
        (["plan", "mamba1", "--gpu-gib", "nan"], "must be a positive number"),
        (["plan", "mamba1", "--tokens", "0", "--gpu-gib", "8"], "must be a positive integer"),
    ],
)
def test_latim_plan_refuses_bad_arguments(argv, message, capsys):
    from latim_captum.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "no-such-model", "--gpu-gib", "80"], "no model shape 'no-such-model'"),
        (["plan", "falcon_mamba_7b", "--gpu-gib", "10"], "the weights alone (13.5 GiB) fill the 10 GiB"),
    ],
)
def test_latim_plan_refuses_what_it_cannot_plan(argv, message, capsys):
    from latim_captum.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("latim: error:") and message in err


def test_gpu_memory_is_needed_without_cuda(capsys, monkeypatch):
    from latim_captum.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["plan", "mamba1"]) == 2
    assert "--gpu-gib is needed" in capsys.readouterr().err


def test_without_gpu_gib_the_free_memory_is_planned_for(tmp_path, monkeypatch):
    """The guard compares with the free memory (the CUDA context and other processes already taken out), so the
    default plans for that, not for the card's total."""
    from latim_captum.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(70.5 * 2**30), 80 * 2**30))
    out = tmp_path / "plan.json"
    assert main(["plan", "falcon_mamba_7b", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["gpu_gib"] == 70.5
    assert saved["rows"][0]["largest_n"] == largest_length(shape_of("falcon_mamba_7b"), "maps", int(70.5 * 2**30))
