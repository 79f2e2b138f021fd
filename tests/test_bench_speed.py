"""The speed benchmark (``latim bench speed``): its quick CPU run, and a warm-up that leaves nothing to tune in the
timed points."""

from __future__ import annotations

import json

import torch

import latim_captum
from conftest import build
from latim_captum import bench_speed
from latim_captum._environment import device_name
from latim_captum.maps import layer as layer_module
from latim_captum.maps.tiles import default_anchor_rows


def test_quick_run_writes_every_ratio(tmp_path):
    """A ``--quick`` run times every method at each length, with the ratios the issue asks for, and writes both
    reports."""
    args = bench_speed.build_parser().parse_args(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    results = bench_speed.run(args)
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["points"] == results["points"] and results["points"]
    # the report names what it ran on: the CPU's model and threads, not a bare "cpu"
    assert saved["gpu"] == device_name("cpu") and saved["gpu"].startswith("CPU (")
    for point in results["points"]:
        for method in ("l2", "alti", "alti_logit"):
            entry = point[method]
            assert entry["wall_s"] > 0 and entry["x_forward"] > 0 and entry["speedup_vs_ref"] > 0
        # the headline: the public call end to end, with ALTI's rows checked (they sum to 1)
        e2e = point["end_to_end"]
        assert e2e["default_s"] > 0 and e2e["highest"]["wall_s"] > 0
        assert e2e["highest"]["alti_row_sum_error"] < 1e-5
        # ALTI-Logit's rows sum to the logit up to fp32 rounding for an fp32 model; a bf16 model's residual stream
        # was rounded to bf16 at every add, which no decomposition of its fp32 recomputation can undo
        bound = 1e-5 if point["dtype"] == "fp32" else 2**-7
        assert e2e["highest"]["logit_row_sum_rel_error"] < bound
    assert results["single_query"]
    assert all(p["wall_s"] > 0 and p["speedup_vs_lig50"] > 0 for p in results["single_query"])
    report = (tmp_path / "speed.md").read_text()
    assert "| model | dtype | N | method |" in report
    assert "| model | dtype | N | forward s | trace s | default s" in report
    # the results say what they were measured with: package versions and the run's options
    assert saved["versions"]["torch"] == torch.__version__ and saved["options"]["quick"] is True
    assert f"torch {torch.__version__}" in report and '"quick": true' in report


def test_no_end_to_end_times_the_maps_alone(tmp_path):
    """``--no-end-to-end`` (large shapes, where seven full calls take minutes) keeps every map timing, no headline."""
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "mamba2", "--dtypes", "fp32",
         "--lengths", "16", "--single-lengths", "none", "--no-end-to-end"]
    )  # fmt: skip
    results = bench_speed.run(args)
    assert [p["N"] for p in results["points"]] == [16]
    assert "end_to_end" not in results["points"][0] and results["points"][0]["l2"]["wall_s"] > 0


def test_warm_up_tunes_every_anchor_of_the_timed_lengths(monkeypatch):
    """Mamba-1's anchor size is part of the fused kernel's autotuning key and grows with N: the warm-up runs each
    measure set at the anchor of every timed length, so no timed point pays for autotuning. Mamba-2 has no anchors:
    each measure set runs once."""
    calls, precisions = [], []
    real = layer_module.layer_maps_fast

    def recording(layer, activation, measures, *args, kernel="torch", anchor_rows=None, **kwargs):
        if kernel == "triton" and kwargs.get("rows") is None:  # the warm-up loop's maps, not the single query's rows
            calls.append((tuple(measures), anchor_rows))
            precisions.append(kwargs["precision"])
        return real(layer, activation, measures, *args, anchor_rows=anchor_rows, **kwargs)  # the PyTorch tiles

    monkeypatch.setattr(layer_module, "layer_maps_fast", recording)
    measure_sets = [("l2",), ("alti",), ("logit",), ("alti", "logit")]
    lengths = [512, 2048, 8192]
    bench_speed._warm_up(build("mamba1", layers=1, seed=0), 16, "bf16", torch.device("cpu"), "triton", lengths)
    for n in lengths:
        for measures in measure_sets:
            assert (measures, default_anchor_rows(n)) in calls, (n, measures)
    assert set(precisions) == {"bf16"}
    calls.clear()
    bench_speed._warm_up(build("mamba2", layers=1, seed=0), 16, "bf16", torch.device("cpu"), "triton", lengths)
    assert calls == [(measures, None) for measures in measure_sets]


def test_warm_up_tunes_the_end_to_end_precisions(monkeypatch):
    """The end-to-end table times the ℓ2 call at every precision; the precision is part of the autotuning key, so
    the warm-up tunes ℓ2 at each of them too (an H100 run timed `highest` at 21.2 s and `bf16` at 11.5 s on the
    fp32 model, their first tuning included, against 5.5 s and 1.03 s once tuned)."""
    seen = []
    real = layer_module.layer_maps_fast

    def recording(layer, activation, measures, *args, kernel="torch", anchor_rows=None, **kwargs):
        if kernel == "triton" and kwargs.get("rows") is None:
            seen.append((kwargs["precision"], tuple(measures), anchor_rows))
        return real(layer, activation, measures, *args, anchor_rows=anchor_rows, **kwargs)

    monkeypatch.setattr(layer_module, "layer_maps_fast", recording)
    lengths = [512, 2048]
    # a CPU has no TF32 (refused there): the bf16 row with the CPU's other precision
    bench_speed._warm_up(build("mamba1", layers=1, seed=0), 16, "bf16", torch.device("cpu"), "triton", lengths,
                         end_to_end_precisions=("highest", "bf16"))  # fmt: skip
    for n in lengths:
        assert ("highest", ("l2",), default_anchor_rows(n)) in seen, n
    assert {p for p, *_ in seen} == {"highest", "bf16"}
    # the row's own precision keeps every measure set; the others need only the ℓ2 call the table times
    assert {m for p, m, _ in seen if p == "bf16"} == {("l2",), ("alti",), ("logit",), ("alti", "logit")}
    assert {m for p, m, _ in seen if p == "highest"} == {("l2",)}


def test_latim_bench_speed_command(tmp_path, capsys):
    """``latim bench speed`` takes the benchmark's options, writes both reports and prints the table."""
    from latim_captum import cli

    out = tmp_path / "speed"
    quick = ["bench", "speed", "--quick", "--device", "cpu", "--models", "mamba2", "--dtypes", "fp32"]
    assert cli.main([*quick, "--out", str(out)]) == 0
    saved = json.loads((out / "speed.json").read_text())
    assert {p["model"] for p in saved["points"]} == {"mamba2"} and saved["single_query"]
    assert "| model | dtype | N | method |" in capsys.readouterr().out
    bad_options = ((["--models", "mamba3"], "mamba3"), (["--dtypes", "fp16"], "fp16"), (["--lengths", "2k"], "2k"))
    for bad, named in bad_options:
        assert cli.main(["bench", "speed", "--out", str(out), *bad]) == 2
        assert "latim: error:" in (err := capsys.readouterr().err) and named in err


def test_models_have_the_published_shapes():
    """The large kinds have their checkpoints' parameter counts (built on the meta device: shapes only), and each
    kind's quick model keeps its layout (a Bamba hybrid with attention sublayers among its Mamba-2 mixers)."""
    import transformers

    from latim_captum.traces import sublayer_kind

    # the checkpoints' parameter counts: FalconMamba-7B, Mamba2-2.7B, Bamba-9B, mamba-130m
    expected = {"falcon_mamba_7b": 7.27e9, "mamba2_2.7b": 2.70e9, "bamba_9b": 9.78e9, "mamba1": 1.29e8}
    for kind, count in expected.items():
        layers, hidden, vocab, state, attention = bench_speed._SHAPES[kind]
        cfg = bench_speed._config(kind, layers, hidden, vocab, state, attention, quick=False)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        params = sum(p.numel() for p in model.parameters())  # a tied LM head counted once
        assert abs(params / count - 1) < 0.01, (kind, params)
    model = bench_speed.build_model("bamba", True, torch.float32, torch.device("cpu"))
    kinds = [sublayer_kind(layer) for layer in latim_captum.trace(model, torch.tensor([[1, 2, 3, 4]])).layers]
    assert kinds.count("attention") == 2 and kinds.count("mamba2") == 2 and kinds.count("mlp") == 4


def test_single_query_keeps_the_trace_on_the_host_when_the_device_one_does_not_fit(tmp_path, monkeypatch):
    """A single query whose device-kept trace the memory guard refuses (a 7B shape at N = 8192) is measured with the
    trace in host memory, as the refusal tells a user to ask for, and the report says where the trace was kept."""
    from latim_captum import api
    from latim_captum.maps.options import LatimMemoryError

    real = api.guard_memory
    stores = []

    def guarded(name, *args, **kwargs):
        if name == "trace" and args[1] is not None and args[1].shape[1] == 16:  # the single query's length
            stores.append(kwargs["trace_store"])
            if kwargs["trace_store"] == "device":
                raise LatimMemoryError("trace needs about 113.2 GiB, more than the 87.9 GiB available")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(api, "guard_memory", guarded)
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "mamba2", "--dtypes", "fp32",
         "--lengths", "none", "--single-lengths", "16", "--lig-max-n", "0"]
    )  # fmt: skip
    results = bench_speed.run(args)
    assert [p["trace_store"] for p in results["single_query"]] == ["host"] and results["single_query"][0]["wall_s"] > 0
    # every call (the untimed warm-up's too) is refused on the device, then made on the host
    assert stores and stores == ["device", "host"] * (len(stores) // 2) and not results["skipped"]
    assert "| mamba2 | fp32 | 16 | host |" in (tmp_path / "speed.md").read_text()


def test_depths_build_each_model_at_each_depth_and_extrapolate(tmp_path):
    """``--depths`` builds every model with each layer count (widths kept), times each point at each depth, and reads
    the linear fit at the published depth; the report says which rows were measured on fewer layers."""
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "mamba1", "--dtypes", "fp32",
         "--lengths", "16", "--single-lengths", "16", "--lig-max-n", "0", "--no-end-to-end", "--depths", "2,1"]
    )  # fmt: skip
    results = bench_speed.run(args)
    assert [(p["depth"], p["published_depth"], p["n_layers"]) for p in results["points"]] == [(1, 2, 1), (2, 2, 2)]
    assert [p["depth"] for p in results["single_query"]] == [1, 2]
    by_method = {e["method"]: e for e in results["extrapolated"]}
    assert set(by_method) == {"l2", "alti", "alti_logit", "single_query"}
    sq = by_method["single_query"]
    t1, t2 = (p["wall_s"] for p in results["single_query"])
    assert sq["depths"] == [1, 2] and sq["measured_s"] == [t1, t2] and sq["layers"] == 2
    if t2 > t1:  # two depths: the line through both points, read at L = 2, is the 2-layer time
        assert abs(sq["per_layer_s"] - (t2 - t1)) < 1e-12 and abs(sq["wall_s"] - t2) < 1e-12
    else:  # timing noise above a tiny layer's cost: refused, not a negative per-layer time
        assert "wall_s" not in sq and "≤ 0" in sq["why"]
    report = (tmp_path / "speed.md").read_text()
    assert "mamba1 (1 of 2 layers)" in report and "Extrapolated to the published depth" in report


def test_extrapolation_reads_the_least_squares_line_at_the_published_depth():
    """Three depths on a line with noise: the fit's slope and its value at L, computed by hand."""
    times = {1: 3.0, 2: 5.5, 3: 7.0}  # least squares: slope 2.0, intercept 1.1667; at L = 10: 21.1667
    # held bytes grow 0.5 GiB a layer; the peak's workspace does not (none at one layer, tiles shrinking with depth)
    peaks = {1: 1.6, 2: 4.0, 3: 3.8}
    points = [{"model": "m", "dtype": "bf16", "N": 64, "depth": k, "published_depth": 10, "wall_s": t,
               "peak_gib": peaks[k], "held_gib": 1.0 + 0.5 * k} for k, t in times.items()]  # fmt: skip
    (row,) = bench_speed.extrapolate_depth({"points": [], "single_query": points})
    assert abs(row["per_layer_s"] - 2.0) < 1e-12 and abs(row["wall_s"] - (7 / 6 + 20)) < 1e-12
    assert row["measured_s"] == [3.0, 5.5, 7.0] and abs(row["per_layer_gib"] - 0.5) < 1e-12
    # the deepest peak (3.8 at K = 3, held 2.5) plus what the held bytes add to L = 10 (6.0): 7.3; a line through
    # the peaks would read 11.9 and, with the workspace shrinking instead, could go below zero
    assert abs(row["peak_gib"] - 7.3) < 1e-12
    # a run without held bytes gets times and no peak estimate
    (row,) = bench_speed.extrapolate_depth(
        {"points": [], "single_query": [{k: v for k, v in p.items() if k != "held_gib"} for p in points]}
    )
    assert abs(row["wall_s"] - (7 / 6 + 20)) < 1e-12 and row["peak_gib"] is None
    # a point measured at one depth only (the others skipped) gets a row that says so, with no estimate
    (row,) = bench_speed.extrapolate_depth({"points": [], "single_query": points[:1]})
    assert "wall_s" not in row and "measured at 1 layer(s) only" in row["why"]
    # a single query whose trace went to the host at one depth is not fitted with the device-kept ones
    mixed = [{**points[0], "trace_store": "device"}, {**points[1], "trace_store": "host"}]
    rows = bench_speed.extrapolate_depth({"points": [], "single_query": mixed})
    assert sorted(r["method"] for r in rows) == ["single_query", "single_query (trace on the host)"]
    assert all("why" in r for r in rows)


def test_depths_refuse_what_they_cannot_extrapolate(capsys):
    """One depth, a count that is not a number and a depth beyond the model's are named errors, not a silently wrong
    estimate."""
    from latim_captum import cli

    bad_options = (
        (["--depths", "2"], "two or more"),
        (["--depths", "1,x"], "1,x"),
        (["--depths", "1,3"], "deeper"),
    )
    for bad, named in bad_options:
        assert cli.main(["bench", "speed", "--quick", "--device", "cpu", "--models", "mamba2", "--out", "/tmp/x",
                         *bad]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "latim: error:" in err and named in err, (bad, err)


def test_hybrid_layouts_fit_mamba_and_attention_blocks_apart():
    """A hybrid's times on the plane t = 1 + 2·m + 5·α over three layouts read 1 + 2·8 + 5·2 = 27 at the published 8
    Mamba + 2 attention blocks; held bytes likewise, plus the largest workspace of the deepest layouts. Layouts that
    only vary the Mamba blocks cannot tell the two costs apart: a row that says so, no estimate."""
    layouts = ((1, 0), (2, 0), (1, 1))  # (Mamba blocks, attention blocks)
    # the deepest layouts (2 blocks) have workspaces 1.0 and 0.6; the shallow one's larger tiles (1.5) do not count
    workspace = {(1, 0): 1.5, (2, 0): 1.0, (1, 1): 0.6}
    points = [{"model": "h", "dtype": "bf16", "N": 64, "depth": m + a, "attention_blocks": a, "published_depth": 10,
               "published_attention": 2, "wall_s": 1.0 + 2.0 * m + 5.0 * a,
               "held_gib": 0.5 + 0.1 * m + 0.7 * a, "peak_gib": 0.5 + 0.1 * m + 0.7 * a + workspace[(m, a)]}
              for m, a in layouts]  # fmt: skip
    (row,) = bench_speed.extrapolate_depth({"points": [], "single_query": points})
    assert abs(row["wall_s"] - 27.0) < 1e-9 and abs(row["per_layer_s"] - 2.0) < 1e-9
    assert abs(row["per_attention_s"] - 5.0) < 1e-9 and row["attention_blocks"] == [0, 1, 0]
    # held at 8 Mamba + 2 attention: 0.5 + 0.8 + 1.4 = 2.7; the largest workspace of the 2-block layouts: 1.0
    assert abs(row["peak_gib"] - 3.7) < 1e-9 and abs(row["per_attention_gib"] - 0.7) < 1e-9
    (row,) = bench_speed.extrapolate_depth({"points": [], "single_query": points[:2]})
    assert "wall_s" not in row and "apart" in row["why"]
    # an attention block that times below the noise (a negative per-block cost) is refused, not extrapolated
    noisy = [{**p, "wall_s": 1.0 + 2.0 * (p["depth"] - p["attention_blocks"]) - 0.5 * p["attention_blocks"]}
             for p in points]  # fmt: skip
    (row,) = bench_speed.extrapolate_depth({"points": [], "single_query": noisy})
    assert "wall_s" not in row and "≤ 0" in row["why"]
    report = bench_speed.to_markdown({"gpu": "cpu", "floor": "", "peak_tflops": {}, "points": [], "single_query": [],
                                      "skipped": [], "extrapolated": bench_speed.extrapolate_depth(
                                          {"points": [], "single_query": points})})  # fmt: skip
    # per layout s | per block s (Mamba / attention) | L | s at L | held per block GiB | peak at L
    assert "| single_query | 1m+0a: 3, 1m+1a: 8, 2m+0a: 5 | 2 / 5 | 10 | 27 | 0.1 / 0.7 | 3.7 |" in report


def test_depths_build_a_hybrid_in_layouts_that_separate_its_block_kinds(tmp_path):
    """``--depths 1,2`` on a hybrid builds 1 and 2 Mamba blocks, then 2 blocks with one attention, times each, labels
    each layout and extrapolates to the published 4 blocks, 2 of them attention."""
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "bamba", "--dtypes", "fp32",
         "--lengths", "16", "--single-lengths", "16", "--lig-max-n", "0", "--no-end-to-end", "--ref-max-n", "0",
         "--depths", "1,2"]
    )  # fmt: skip
    results = bench_speed.run(args)
    built = [(p["depth"], p["attention_blocks"], p["published_depth"], p["published_attention"], p["n_layers"])
             for p in results["points"]]  # fmt: skip
    assert built == [(1, 0, 4, 2, 2), (2, 0, 4, 2, 4), (2, 1, 4, 2, 4)]
    cpu = torch.device("cpu")
    designs = bench_speed._depths("1,2", ["bamba"], True)["bamba"]
    assert designs == [(1, ()), (2, ()), (2, (1,))]
    configs = [bench_speed.build_model("bamba", True, torch.float32, cpu, k, a).config for k, a in designs]
    assert [(c.num_hidden_layers, list(c.attn_layer_indices or [])) for c in configs] == [(1, []), (2, []), (2, [1])]
    rows = {e["method"]: e for e in results["extrapolated"]}
    assert set(rows) == {"l2", "alti", "alti_logit", "single_query"}
    # a tiny CPU block may time below the noise: then the row refuses, naming why; otherwise both block costs
    assert all(e["attention_blocks"] == [0, 1, 0] and e["layers"] == 4 for e in rows.values())
    assert all(("per_attention_s" in e and e["per_layer_s"] > 0) or "≤ 0" in e["why"] for e in rows.values())
    # a CPU has no allocator to ask: no held bytes, so no peak estimate rather than 0 GiB
    assert all(e.get("peak_gib") is None for e in rows.values())
    report = (tmp_path / "speed.md").read_text()
    assert "bamba (2 of 4 blocks, 1 of 2 attention)" in report and "1m+1a: " in report


def test_hybrid_rows_are_not_labelled_with_a_depth_they_were_not_built_at(tmp_path):
    """A hybrid's sublayers (mixers and MLPs) outnumber its blocks: without --depths the report names the model
    alone, not "bamba (8 of 4 layers)"."""
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "bamba", "--dtypes", "fp32",
         "--lengths", "16", "--single-lengths", "none", "--no-end-to-end", "--ref-max-n", "0"]
    )  # fmt: skip
    results = bench_speed.run(args)
    (point,) = results["points"]
    assert point["n_layers"] == 8 and (point["depth"], point["published_depth"]) == (4, 4)
    report = (tmp_path / "speed.md").read_text()
    assert "| bamba | fp32 | 16 | l2 |" in report and "of 4 layers" not in report
    # built at its published depth: nothing to extrapolate, and no table of "measured at 4 layer(s) only" rows
    assert results["extrapolated"] == [] and "Extrapolated to the published depth" not in report


def test_a_single_query_costs_one_alti_layer_per_layer_below_the_last(monkeypatch):
    """What ``--depths`` extrapolates on: the single query's rows work grows linearly with depth, one ALTI layer of
    rows ``≤ q`` per layer below the last (the last contributes its Δ row only). Counted, not timed: the ALTI rows
    read at depths 1, 2, 3 are 0, q + 1, 2(q + 1)."""
    import latim_captum
    from latim_captum.maps import rows as rows_module

    real = rows_module.layer_maps
    read: list[int] = []

    def counting(layer, activation, measures, *args, rows=None, **kwargs):
        if "alti" in measures and rows is not None:
            read.append(rows[1] - rows[0])
        return real(layer, activation, measures, *args, rows=rows, **kwargs)

    monkeypatch.setattr(rows_module, "layer_maps", counting)
    n = 12
    ids = torch.randint(0, 30, (1, n), generator=torch.Generator().manual_seed(0))
    totals = []
    for depth in (1, 2, 3):
        read.clear()
        tr = latim_captum.trace(build("mamba2", layers=depth, seed=depth), ids)
        latim_captum.alti_logit_row(tr, position=-1)
        totals.append(sum(read))
    assert totals == [0, n, 2 * n]


def test_no_maps_trace_is_alive_while_the_single_queries_run(tmp_path, monkeypatch):
    """The single queries' held bytes and peaks are theirs alone: every trace made for the maps is gone before they
    start (a closure that kept the last one alive put its bytes into the single-query fit)."""
    import gc
    import weakref

    made: list[weakref.ref] = []
    real_trace, real_single = latim_captum.trace, bench_speed._single_query_seconds
    alive_at_single: list[int] = []

    def tracing(*args, **kwargs):
        tr = real_trace(*args, **kwargs)
        made.append(weakref.ref(tr))
        return tr

    def single(*args, **kwargs):
        gc.collect()
        alive_at_single.append(sum(ref() is not None for ref in made))
        return real_single(*args, **kwargs)

    monkeypatch.setattr(latim_captum, "trace", tracing)
    monkeypatch.setattr(bench_speed, "_single_query_seconds", single)
    args = bench_speed.build_parser().parse_args(
        ["--quick", "--out", str(tmp_path), "--device", "cpu", "--models", "mamba2", "--dtypes", "fp32",
         "--lengths", "16,24", "--single-lengths", "16", "--lig-max-n", "0", "--no-end-to-end", "--ref-max-n", "16"]
    )  # fmt: skip
    bench_speed.run(args)
    assert len(made) >= 2 and alive_at_single == [0]
