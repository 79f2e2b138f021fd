"""The Table 3 and Table 5 analogues over seeds (:mod:`latim_captum.paper.study_seeds`).

Reports are made by hand with the expected means, standard deviations and best layers computed in the comments; the
shipped alignment reports are aggregated and checked against their raw values read here."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from latim_captum.paper.study_seeds import (
    aggregate_activations,
    aggregate_alignment,
    kind_of,
    layered,
    main,
    render_activations_markdown,
    render_alignment_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ALIGNMENT = [f"benchmarks/results/alignment-tiny-cpu-2026-12-05{s}.json" for s in ("", "-s1", "-s2")]


def test_layered_best_of_mean_and_per_seed_best():
    # layer means (0.5 + 0.7)/2 = 0.6 and (0.6 + 0.2)/2 = 0.4: layer 2 is best for AER; seed 0's own best is layer 1
    got = layered([[0.5, 0.6], [0.7, 0.2]], better=min)
    assert [x["mean"] for x in got["layers"]] == pytest.approx([0.6, 0.4])
    assert got["layers"][1]["std"] == pytest.approx(math.sqrt(0.08))  # (0.2² + 0.2²) / (2 − 1)
    assert got["best_of_mean"]["layer"] == 1 and got["best_of_mean"]["values"] == [0.6, 0.2]
    assert got["per_seed_best"]["layers"] == [0, 1] and got["per_seed_best"]["mean"] == pytest.approx(0.35)
    # for AUC the other way round: layer 1 (mean 0.6) beats layer 2 (0.4); seed 1's own best is layer 1 too
    assert layered([[0.5, 0.6], [0.7, 0.2]], better=max)["best_of_mean"]["layer"] == 0
    with pytest.raises(ValueError, match="different numbers of layers"):
        layered([[0.1, 0.2], [0.3]])


def _aer(value: float) -> dict:
    return {"aer": value, "precision": 1 - value, "recall": 1 - value}


def _alignment_model(seed: int, l2: list[float], logit: float, variant: str = "mamba1") -> dict:
    return {
        "variant": variant,
        "act": "silu",
        "n_layers": 2,
        "task": {"n_nouns": 20, "lexicon_seed": 0},
        "n_samples": 16,
        "eval_seed": seed + 1,
        "accuracy": {"token_acc": 0.9 + seed / 100, "exact_match": 0.5 + seed / 10, "loss": 0.1},
        "extraction": {"sink": True, "ties": "first", "readings": ["predict", "hold"]},
        "baselines": {"monotone": {"aer": 0.5 + seed / 100}},
        "methods": {
            "l2": {
                "label": "LaTIM (ℓ2)",
                "per_layer": True,
                "readings": {
                    "predict": {"layers": [_aer(v) for v in l2]},
                    "hold": {"layers": [_aer(v + 0.3) for v in l2]},
                },
            },
            "alti_logit": {
                "label": "LaTIM (ALTI-Logit)",
                "per_layer": False,
                "readings": {"predict": {"all": _aer(logit)}, "hold": {"all": _aer(logit + 0.5)}},
            },
        },
        "reconstruction_error": {"silu": [0.1 * (seed + 1), 0.2], "act": None},
        "meta": {"model": f"runs/align-{variant}-s{seed}", "seed": seed, "steps": 800, "train_device": "cpu"},
    }


def _alignment_suite(seed: int, l2: list[float], logit: float) -> dict:
    models = {v: _alignment_model(seed, l2, logit, v) for v in ("mamba1", "mamba2")}
    meta = {"scale": "tiny", "device": "cpu", "command": f"latim bench alignment --seed {seed}"}
    return {"meta": meta, "models": models}


def _three_alignment() -> list[dict]:
    # l2 AER per layer and seed: [0.9, 0.2], [0.8, 0.3], [0.7, 0.4]; ALTI-Logit 0.2, 0.3, 0.4
    return [_alignment_suite(s, [0.9 - s / 10, 0.2 + s / 10], 0.2 + s / 10) for s in range(3)]


def test_alignment_over_seeds_hand_values():
    agg = aggregate_alignment(_three_alignment(), ["a", "b", "c"])
    assert kind_of(_three_alignment()[0]) == "alignment" and list(agg["variants"]) == ["mamba1", "mamba2"]
    v = agg["variants"]["mamba1"]
    assert v["seeds"] == [0, 1, 2] and v["eval_seeds"] == [1, 2, 3]
    l2 = v["methods"]["l2"]["predict"]
    # layer means 0.8 and 0.3, std 0.1 each: layer 2 has the lowest mean AER, and is every seed's own best
    assert [x["mean"] for x in l2["layers"]] == pytest.approx([0.8, 0.3])
    assert [x["std"] for x in l2["layers"]] == pytest.approx([0.1, 0.1])
    assert l2["best_of_mean"]["layer"] == 1 and l2["per_seed_best"]["layers"] == [1, 1, 1]
    assert v["methods"]["l2"]["hold"]["layers"][1]["mean"] == pytest.approx(0.6)  # every hold value 0.3 higher
    logit = v["methods"]["alti_logit"]["predict"]["all"]
    assert logit["mean"] == pytest.approx(0.3) and logit["std"] == pytest.approx(0.1)
    assert v["monotone"]["mean"] == pytest.approx(0.51) and v["monotone"]["std"] == pytest.approx(0.01)
    assert v["accuracy"]["exact_match"]["mean"] == pytest.approx(0.6)
    # silu's layer-1 error 0.1, 0.2, 0.3 → 0.2 ± 0.1; a strategy that refuses the activation stays None
    assert v["reconstruction_error"]["silu"][0]["mean"] == pytest.approx(0.2)
    assert v["reconstruction_error"]["act"] is None
    md = render_alignment_markdown(agg)
    paper = "0.67 / 0.71 / 0.60 / 0.74"  # IWSLT17 DE→EN
    assert f"| LaTIM (ALTI-Logit) | 0.30 ± 0.10 | 0.80 ± 0.10 | 0.30 ± 0.10 | 0.80 ± 0.10 | {paper} |" in md
    assert "| LaTIM (ℓ2) | 0.30 ± 0.10 (L2) | 0.60 ± 0.10 (L2) |" in md
    assert "| LaTIM (ℓ2) | 0.20 | 0.30 | 0.40 |" in md  # per seed at the best layer of the mean
    assert "| Monotone diagonal | 0.51 ± 0.01 |" in md and "## The paper's Table 3" in md


def test_alignment_over_seeds_refusals_and_partial_reports():
    suites = _three_alignment()
    with pytest.raises(ValueError, match="seed appears twice"):
        aggregate_alignment([suites[0], copy.deepcopy(suites[0])])
    for key, value in (("n_samples", 8), ("act", "relu"), ("task", {"n_nouns": 30, "lexicon_seed": 0})):
        other = copy.deepcopy(suites[1])
        other["models"]["mamba1"][key] = value
        with pytest.raises(ValueError, match=f"mamba1 models differ in {key}"):
            aggregate_alignment([suites[0], other])
    other = copy.deepcopy(suites[1])
    other["meta"]["scale"] = "paper"
    with pytest.raises(ValueError, match="differ in scale"):
        aggregate_alignment([suites[0], other])
    other = copy.deepcopy(suites[1])
    other["models"]["mamba1"]["reconstruction_error"]["act"] = [0.1, 0.1]
    with pytest.raises(ValueError, match="act refused some models"):
        aggregate_alignment([suites[0], other])
    # a variant or a method missing from one report is left out and named
    partial = copy.deepcopy(suites[2])
    del partial["models"]["mamba2"]
    del partial["models"]["mamba1"]["methods"]["alti_logit"]
    agg = aggregate_alignment([suites[0], suites[1], partial])
    assert agg["skipped_variants"] == ["mamba2"] and agg["variants"]["mamba1"]["skipped"] == ["alti_logit"]
    assert "left out: mamba2" in render_alignment_markdown(agg)


def test_shipped_alignment_reports_over_seeds(tmp_path):
    """The three committed tiny alignment reports: every mean is the mean of the raw values read here."""
    files = [str(ROOT / f) for f in SHIPPED_ALIGNMENT]
    assert main([*files, "--out", str(tmp_path)]) == 0
    agg = json.loads((tmp_path / "alignment-tiny-seeds.json").read_text())
    raw = [json.loads(Path(f).read_text()) for f in files]
    for variant in ("mamba1", "mamba2"):
        lrp = [r["models"][variant]["methods"]["mamba_lrp"]["readings"]["predict"]["all"]["aer"] for r in raw]
        got = agg["variants"][variant]["methods"]["mamba_lrp"]["predict"]["all"]
        assert got["mean"] == pytest.approx(sum(lrp) / 3) and got["values"] == lrp
        l2 = [[x["aer"] for x in r["models"][variant]["methods"]["l2"]["readings"]["predict"]["layers"]] for r in raw]
        means = [sum(s[k] for s in l2) / 3 for k in range(2)]
        best = agg["variants"][variant]["methods"]["l2"]["predict"]["best_of_mean"]
        assert best["layer"] == means.index(min(means)) and best["mean"] == pytest.approx(min(means))
    md = (tmp_path / "alignment-tiny-seeds.md").read_text()
    assert "python benchmarks/study_seeds.py" in md and "seeds 0, 1, 2" in md


# --- Table 5 --------------------------------------------------------------------------------------------------------


def _copy_entry(label: str, per_layer: bool, values) -> dict:
    def scores(v):
        return {"auc": v, "ap": v / 2, "recall_at_k": v / 4}

    pred = {"layers": [scores(v) for v in values]} if per_layer else {"all": scores(values)}
    return {"label": label, "per_layer": per_layer, **pred, "by_rows": {"predict": pred, "hold": pred}}


def _activation_row(act: str, seed: int, l2: list[float], logit: float) -> dict:
    paper, exact = {"silu": ("silu", "silu_gate"), "linear": ("act", "identity")}[act]
    suffix = "" if paper == "silu" else "_act"
    names = {f"l2{suffix}": (True, l2), f"alti_logit{suffix}": (False, logit), f"l2_{exact}": (True, l2),
             f"alti_logit_{exact}": (False, logit + 0.1)}  # fmt: skip
    methods = {n: _copy_entry(n, per_layer, v) for n, (per_layer, v) in names.items()}
    strategies = {n: (paper if n in (f"l2{suffix}", f"alti_logit{suffix}") else exact) for n in names}
    errors = {"silu": [0.2 + seed / 10, 0.5] if act == "silu" else None, "identity": [1.0, 2.0], "act": [0.2, 0.5]}
    errors[exact] = [0.0, 0.0]
    report = {"variant": "mamba2", "act": act, "n_layers": 2, "task": {"length": 10}, "n_samples": 8,
              "accuracy": {"token_acc": 0.99, "exact_match": 0.9 + seed / 100}, "methods": methods}  # fmt: skip
    summary = {
        "act": act,
        "accuracy": report["accuracy"],
        "paper_strategy": paper,
        "exact_strategy": exact,
        "reconstruction_error": errors,
        "methods": {n: {"label": n, "strategy": s, "value": 0.0, "layer": None} for n, s in strategies.items()},
    }
    meta = {"model": f"runs/copy-{act}-s{seed}", "train_device": "cpu", "seed": seed, "steps": 1500, "act": act}
    return {"meta": meta, "summary": summary, "report": report}


def _activation_suite(seed: int, l2: list[float], logit: float) -> dict:
    meta = {"task": "copy", "variant": "mamba2", "scale": "tiny", "device": "cpu", "command": f"act --seed {seed}",
            "same_seed": True}  # fmt: skip
    return {"meta": meta, "models": [_activation_row(a, seed, l2, logit) for a in ("silu", "linear")]}


def test_activations_over_seeds_hand_values():
    # ℓ2 AUC per layer and seed: [0.6, 0.9], [0.7, 0.8] → means 0.65, 0.85: layer 2 (higher is better for AUC)
    suites = [_activation_suite(0, [0.6, 0.9], 0.5), _activation_suite(1, [0.7, 0.8], 0.7)]
    assert kind_of(suites[0]) == "activations"
    agg = aggregate_activations(suites, ["a", "b"])
    assert agg["seeds"] == [0, 1] and agg["measure"] == "auc" and list(agg["acts"]) == ["silu", "linear"]
    silu = agg["acts"]["silu"]
    l2 = silu["methods"]["l2"]["predict"]
    assert l2["best_of_mean"]["layer"] == 1 and l2["best_of_mean"]["mean"] == pytest.approx(0.85)
    assert l2["per_seed_best"]["layers"] == [1, 1]
    logit = silu["methods"]["alti_logit"]["predict"]["all"]
    assert logit["mean"] == pytest.approx(0.6) and logit["std"] == pytest.approx(math.sqrt(0.02))
    assert silu["methods"]["alti_logit_silu_gate"]["strategy"] == "silu_gate"
    # silu's layer-1 error 0.2 and 0.3 → 0.25; the linear model has no silu error (refused: None)
    assert silu["reconstruction_error"]["silu"][0]["mean"] == pytest.approx(0.25)
    assert agg["acts"]["linear"]["reconstruction_error"]["silu"] is None
    md = render_activations_markdown(agg)
    row = ("| silu | 0.990 ± 0.000 / 0.905 ± 0.007 | silu: 0.25 ± 0.07 / 0.50 ± 0.00 | silu_gate: 0.00 ± 0.00 / "
           "0.00 ± 0.00 | 0.85 ± 0.07 (L2) | 0.85 ± 0.07 (L2) | 0.60 ± 0.14 | 0.70 ± 0.14 |")  # fmt: skip
    assert row in md
    assert "| linear | 0.990 ± 0.000 / 0.905 ± 0.007 | act: 0.20 ± 0.00 / 0.50 ± 0.00 | identity:" in md
    assert "## The paper's Table 5" in md and "AUC, higher is better" in md


def test_activations_over_seeds_keep_continued_training_rows_apart():
    # SiLU and SiLU + CP share the activation: each is its own row, over the seeds of its own models
    suites = []
    for seed, logit in ((0, 0.5), (1, 0.7)):
        suite = _activation_suite(seed, [0.6, 0.9], logit)
        cp = copy.deepcopy(suite["models"][0])
        cp["summary"]["label"] = "silu + CP"
        cp["meta"]["model"] += "-cp"
        cp["report"]["methods"]["alti_logit"]["all"]["auc"] = logit + 0.2
        suite["models"].append(cp)
        suites.append(suite)
    agg = aggregate_activations(suites)
    assert list(agg["acts"]) == ["silu", "linear", "silu + CP"]
    assert agg["acts"]["silu"]["methods"]["alti_logit"]["predict"]["all"]["mean"] == pytest.approx(0.6)
    assert agg["acts"]["silu + CP"]["methods"]["alti_logit"]["predict"]["all"]["mean"] == pytest.approx(0.8)
    assert "| silu + CP | " in render_activations_markdown(agg)


def test_activations_over_seeds_refusals():
    suites = [_activation_suite(0, [0.6, 0.9], 0.5), _activation_suite(1, [0.7, 0.8], 0.7)]
    mixed = copy.deepcopy(suites[1])
    mixed["meta"]["same_seed"] = False
    with pytest.raises(ValueError, match="different seeds"):
        aggregate_activations([suites[0], mixed], ["a", "b"])
    with pytest.raises(ValueError, match="seed appears twice"):
        aggregate_activations([suites[0], copy.deepcopy(suites[0])])
    other = copy.deepcopy(suites[1])
    other["meta"]["task"] = "alignment"
    with pytest.raises(ValueError, match="differ in task"):
        aggregate_activations([suites[0], other])
    # an activation missing from one report is left out and named
    partial = copy.deepcopy(suites[1])
    partial["models"] = partial["models"][:1]
    agg = aggregate_activations([suites[0], partial])
    assert list(agg["acts"]) == ["silu"] and agg["skipped_acts"] == ["linear"]


def test_study_seeds_command_refuses_mixed_kinds_and_copying_reports(tmp_path, capsys):
    align = tmp_path / "align.json"
    align.write_text(json.dumps(_alignment_suite(0, [0.9, 0.2], 0.2)))
    act = tmp_path / "act.json"
    act.write_text(json.dumps(_activation_suite(1, [0.6, 0.9], 0.5)))
    assert main([str(align), str(act), "--out", str(tmp_path)]) == 2
    assert "different kinds (activations, alignment)" in capsys.readouterr().err
    copying = ROOT / "benchmarks/results/copying-mamba2-tiny.json"
    assert main([str(copying), "--out", str(tmp_path)]) == 2
    assert "use benchmarks/copying_seeds.py" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("study_seeds: error:")
    assert main([str(act), "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "activations-copy-mamba2-tiny-seeds.json").read_text())
    assert written["command"] == f"python benchmarks/study_seeds.py {act} --out {tmp_path}"
