"""Reports over several runs: Table 2 over seeds (mean ± std) and the Table 5 analogue (activation variants).

The seed aggregation is checked on reports made by hand, with the means, standard deviations and best layers
computed in the comments."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from latim_captum.paper.seeds import aggregate, main, mean_std, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def _scores(auc: float) -> dict:
    return {"auc": auc, "ap": auc / 2, "recall_at_k": auc / 4}


def _report(seed: int, l2_aucs: list[float], logit_auc: float, hold_shift: float = 0.1) -> dict:
    def both(per_layer: bool, values):
        pred = {"layers": [_scores(v) for v in values]} if per_layer else {"all": _scores(values)}
        hold = {"layers": [_scores(v - hold_shift) for v in values]} if per_layer else {"all": _scores(values - 0.2)}
        return {**pred, "by_rows": {"predict": pred, "hold": hold}}

    return {
        "variant": "mamba2",
        "n_layers": 2,
        "paper_layer": None,
        "task": {"length": 10, "vocab_size": 16},
        "n_samples": 8,
        "accuracy": {"token_acc": 0.9 + seed / 100, "exact_match": 0.5},
        "meta": {"seed": seed, "model": f"runs/m{seed}", "scale": "tiny"},
        "methods": {
            "l2": {"label": "LaTIM (ℓ2)", "per_layer": True, **both(True, l2_aucs)},
            "alti_logit": {"label": "LaTIM (ALTI-Logit)", "per_layer": False, **both(False, logit_auc)},
        },
    }


def _three_seeds() -> list[dict]:
    # l2 layer AUCs per seed: [0.5, 0.8], [0.6, 0.7], [0.7, 0.6]
    return [_report(0, [0.5, 0.8], 0.6), _report(1, [0.6, 0.7], 0.7), _report(2, [0.7, 0.6], 0.8)]


def test_mean_std_hand_values():
    got = mean_std([0.8, 0.7, 0.7])
    # mean 2.2/3; squared deviations (0.0667², 0.0333², 0.0333²) sum to 0.02/3, over n − 1 = 2
    assert got["mean"] == pytest.approx(2.2 / 3) and got["std"] == pytest.approx(math.sqrt(0.01 / 3))
    assert got["values"] == [0.8, 0.7, 0.7]
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "values": [0.5]}


def test_aggregate_means_best_layers_and_readings():
    agg = aggregate(_three_seeds(), ["a.json", "b.json", "c.json"])
    l2 = agg["readings"]["predict"]["l2"]
    # layer means: (0.5 + 0.6 + 0.7)/3 = 0.6 and (0.8 + 0.7 + 0.6)/3 = 0.7, both with std 0.1
    assert [x["auc"]["mean"] for x in l2["layers"]] == pytest.approx([0.6, 0.7])
    assert [x["auc"]["std"] for x in l2["layers"]] == pytest.approx([0.1, 0.1])
    assert l2["best_of_mean"]["layer"] == 1 and l2["best_of_mean"]["auc"]["mean"] == pytest.approx(0.7)
    # per seed: layer 2 (0.8), layer 2 (0.7), layer 1 (0.7) → mean 2.2/3
    assert l2["per_seed_best"]["layers"] == [1, 1, 0]
    assert l2["per_seed_best"]["auc"]["mean"] == pytest.approx(2.2 / 3)
    assert l2["per_seed_best"]["ap"]["mean"] == pytest.approx(1.1 / 3)
    logit = agg["readings"]["predict"]["alti_logit"]["all"]
    assert logit["auc"]["mean"] == pytest.approx(0.7) and logit["auc"]["std"] == pytest.approx(0.1)
    # the hold reading is aggregated separately: every l2 layer 0.1 lower
    hold = agg["readings"]["hold"]["l2"]
    assert [x["auc"]["mean"] for x in hold["layers"]] == pytest.approx([0.5, 0.6])
    assert agg["accuracy"]["token_acc"]["mean"] == pytest.approx(0.91) and agg["seeds"] == [0, 1, 2]
    md = render_markdown(agg)
    assert "| LaTIM (ℓ2) | — | 0.70 ± 0.10 / 0.35 ± 0.05 / " in md
    assert "(layers 2, 2, 1)" in md and "rows L+1..2L" in md and "0.98 / 0.86 / 0.74" in md


def test_aggregate_refuses_mixed_or_repeated_runs():
    reports = _three_seeds()
    other = copy.deepcopy(reports[1])
    other["variant"] = "mamba1"
    with pytest.raises(ValueError, match="variant"):
        aggregate([reports[0], other])
    with pytest.raises(ValueError, match="seed appears twice"):
        aggregate([reports[0], copy.deepcopy(reports[0])])
    # a SiLU and a linear model are two rows of Table 5, not two seeds; other sample counts are other evaluations
    for key, value in (("act", "linear"), ("n_samples", 3)):
        first, second = copy.deepcopy(reports[0]), copy.deepcopy(reports[1])
        first["act"], second["act"] = "silu", "silu"
        second[key] = value
        with pytest.raises(ValueError, match=f"differ in {key}"):
            aggregate([first, second])
    unseeded = [copy.deepcopy(r) for r in reports[:2]]
    for r in unseeded:
        r["meta"].update(seed=None, model="runs/m")
    with pytest.raises(ValueError, match="model folder appears twice"):
        aggregate(unseeded)
    # a method missing from one report is left out and named; a report without the hold reading drops that reading
    partial = copy.deepcopy(reports[2])
    del partial["methods"]["alti_logit"]
    for entry in partial["methods"].values():
        del entry["by_rows"]
    agg = aggregate([reports[0], reports[1], partial])
    assert agg["skipped"] == ["alti_logit"] and set(agg["readings"]) == {"predict"}


def test_the_seed_script_reads_shipped_reports(tmp_path, capsys):
    """A copying report of benchmarks/results, as written before both readings existed (``by_rows`` removed here),
    aggregates as 'predict'."""
    shipped = json.loads((ROOT / "benchmarks/results/copying-mamba2-tiny.json").read_text())
    for entry in shipped["methods"].values():
        entry.pop("by_rows", None)
    files = []
    for seed in (0, 1):
        report = copy.deepcopy(shipped)
        report["meta"].update(seed=seed, model=f"{report['meta']['model']}-s{seed}")
        files.append(tmp_path / f"r{seed}.json")
        files[-1].write_text(json.dumps(report))
    assert main([*map(str, files), "--out", str(tmp_path)]) == 0
    agg = json.loads((tmp_path / "copying-mamba2-tiny-seeds.json").read_text())
    l2 = agg["readings"]["predict"]["l2"]
    # the same report twice: every mean is the report's own value and every std 0
    assert l2["layers"][1]["auc"]["mean"] == pytest.approx(shipped["methods"]["l2"]["layers"][1]["auc"])
    assert l2["layers"][1]["auc"]["std"] == 0.0 and set(agg["readings"]) == {"predict"}
    # the report says how it was made and where each seed ran
    assert agg["command"] == f"python benchmarks/copying_seeds.py {files[0]} {files[1]} --out {tmp_path}"
    assert agg["runs"][0]["device"] == shipped["meta"]["device"]
    assert f"- command: `{agg['command']}`" in (tmp_path / "copying-mamba2-tiny-seeds.md").read_text()
    assert main([str(files[0]), str(files[0]), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("copying_seeds: error: a training seed appears twice")


# --- Table 5 analogue ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["alignment", "copy"])
def test_activation_study_trains_three_variants_and_reports_them(task_name, tmp_path):
    from latim_captum.paper.activations import main as study

    common = ["--n-samples", "3", "--batch", "3", "--out", str(tmp_path), "--quiet"]
    if task_name == "copy":  # the study trains the three models itself
        argv = ["--task", "copy", "--variant", "mamba2", "--train-steps", "2", "--train-out", str(tmp_path / "runs")]
    else:  # trained here on fewer pairs (generating the preset's 4,000 takes seconds), then read with --models
        from latim_captum.alignment.train import main as train

        dirs = [tmp_path / act for act in ("silu", "relu", "linear")]
        for d in dirs:
            flags = ["--variant", "mamba2", "--out", str(d), "--act", d.name, "--steps", "2", "--n-train", "16"]
            assert train([*flags, "--n-eval", "4", "--quiet"]) == 0
        argv = ["--task", "alignment", "--models", *map(str, dirs)]
    assert study(argv + common) == 0
    suite = json.loads((tmp_path / f"activations-{task_name}-mamba2-tiny.json").read_text())
    rows = {row["summary"]["act"]: row for row in suite["models"]}
    assert list(rows) == ["silu", "relu", "linear"] and suite["meta"]["same_seed"]
    expected = (("silu", "silu", "silu_gate"), ("linear", "act", "identity"), ("relu", "act", "act_gate"))
    for act, paper, exact in expected:
        s = rows[act]["summary"]
        assert (s["paper_strategy"], s["exact_strategy"]) == (paper, exact)
        errors = s["reconstruction_error"]
        # the SiLU strategies refuse the models without SiLU; act / act_gate decompose every model
        for strategy in ("silu", "taylor1", "taylor2", "silu_gate"):
            assert (errors[strategy] is None) == (act != "silu"), (act, strategy)
        # the model's exact strategy reconstructs every layer (act_gate: any activation, silu_gate's twin on SiLU)
        assert max(errors[exact]) < 1e-4 and max(errors["act_gate"]) < 1e-4
        suffix = "" if paper == "silu" else "_act"
        assert set(s["methods"]) == {f"l2{suffix}", f"alti_logit{suffix}", f"l2_{exact}", f"alti_logit_{exact}"}
        if act != "linear":  # the paper's approximations are not exact; for a linear model act is the identity
            assert min(errors[paper]) > 1e-3
        else:
            assert max(errors["act"]) < 1e-4
        for m in s["methods"].values():
            assert 0.0 <= m["value"] <= 1.0
    md = (tmp_path / f"activations-{task_name}-mamba2-tiny.md").read_text()
    assert "| Identity | 0.00 | 0.00 | 0.00 | 0.46 | 83.3 |" in md and "same recipe and seed" in md
    # the recorded command reruns this very study: the trained run's seed and steps, the evaluation's sample count
    if task_name == "copy":
        want = "--variant mamba2 --seed 0 --train-steps 2 --n-samples 3"
    else:
        want = f"--models {' '.join(map(str, dirs))} --n-samples 3"
    assert suite["meta"]["command"].endswith(want) and f"- command: `{suite['meta']['command']}`" in md


def test_activation_study_rows_of_continued_training(tmp_path):
    """The paper's Table 5 rows SiLU, SiLU + CP and ReLU + CP: a SiLU model and the runs continued from it
    (``--switch-from``) are rows of their own, named by the switch."""
    from latim_captum.copying.train import main as train
    from latim_captum.paper.activations import main as study

    small = ["--variant", "mamba2", "--n-train", "64", "--n-eval", "8", "--batch", "8", "--length", "4", "--vocab",
             "8", "--layers", "2", "--d-model", "16", "--head-dim", "8", "--state", "4", "--quiet"]  # fmt: skip
    assert train([*small, "--steps", "4", "--warmup", "2", "--out", str(tmp_path / "silu")]) == 0
    switch = ["--variant", "mamba2", "--switch-from", str(tmp_path / "silu"), "--steps", "4", "--warmup", "1",
              "--decay", "1", "--quiet"]  # fmt: skip
    for act in ("silu", "relu"):
        assert train([*switch, "--act", act, "--out", str(tmp_path / f"{act}-cp")]) == 0
    dirs = [tmp_path / "silu", tmp_path / "silu-cp", tmp_path / "relu-cp"]
    argv = ["--task", "copy", "--models", *map(str, dirs), "--n-samples", "2", "--batch", "2", "--out", str(tmp_path)]
    assert study([*argv, "--quiet"]) == 0
    suite = json.loads((tmp_path / "activations-copy-mamba2-tiny.json").read_text())
    assert [row["summary"]["label"] for row in suite["models"]] == ["silu", "silu + CP", "relu + CP"]
    assert [row["summary"]["act"] for row in suite["models"]] == ["silu", "silu", "relu"]
    assert suite["models"][2]["meta"]["switch"]["to"] == "relu"
    md = (tmp_path / "activations-copy-mamba2-tiny.md").read_text()
    assert f"- relu + CP: `{dirs[2]}`" in md and f"continued from `{dirs[0]}` switching SiLU → relu" in md
    assert "\n| silu + CP | " in md and "\n| relu + CP | " in md
    assert "the `+ CP` rows continue a SiLU model" in md and "same recipe and seed" not in md


def test_activation_study_trains_the_papers_procedure_in_one_command(tmp_path, capsys):
    """``--procedure switch``: the SiLU model, then each of ``--acts`` continued from it (App. B.3), as report rows
    SiLU, SiLU + CP, ReLU + CP, linear + CP of one seed, in a report of their own (``-cp``)."""
    from latim_captum.paper.activations import main as study

    argv = ["--task", "copy", "--variant", "mamba2", "--procedure", "switch", "--seed", "2", "--train-steps", "4",
            "--switch-steps", "4", "--train-out", str(tmp_path / "runs"), "--n-samples", "2", "--batch", "2",
            "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert study(argv) == 0
    suite = json.loads((tmp_path / "activations-copy-mamba2-tiny-cp.json").read_text())
    rows = suite["models"]
    assert [row["summary"]["label"] for row in rows] == ["silu", "silu + CP", "relu + CP", "linear + CP"]
    source = str(tmp_path / "runs" / "copy-mamba2-tiny-silu-s2")
    assert rows[0]["meta"]["model"] == source and rows[0]["meta"]["switch"] is None
    for row, act in zip(rows[1:], ("silu", "relu", "linear")):
        assert row["meta"]["switch"]["from"] == source and row["meta"]["switch"]["to"] == act
        assert row["meta"]["seed"] == 2 and row["meta"]["steps"] == 4 and row["meta"]["switch"]["alpha"] == 1.0
    assert suite["meta"]["same_seed"] and suite["meta"]["command"].endswith(
        "--variant mamba2 --seed 2 --train-steps 4 --procedure switch --switch-steps 4 --n-samples 2"
    )
    capsys.readouterr()
    assert study(["--task", "copy", "--variant", "mamba2", "--switch-steps", "4"]) == 2
    assert "give that procedure" in capsys.readouterr().err
    assert study(["--task", "copy", "--variant", "mamba2", "--procedure", "switch", "--switch-steps", "1"]) == 2
    assert "a switch needs at least 2 steps" in capsys.readouterr().err
    assert study(["--task", "copy", "--models", source, "--procedure", "switch"]) == 2
    assert "--procedure switch: they choose the models trained in the run" in capsys.readouterr().err


def test_activation_study_refuses_two_models_of_one_activation(tmp_path, capsys):
    from latim_captum.copying import copy_tokenizer
    from latim_captum.paper.activations import main as study
    from latim_captum.tasks.models import build_model

    for name in ("a", "b"):  # model folders as the trainers write them: the model and its tokenizer
        build_model("mamba1", layers=1, d_model=16, state=4, vocab=8).save_pretrained(tmp_path / name)
        copy_tokenizer(8).save_pretrained(tmp_path / name)
    capsys.readouterr()
    assert study(["--task", "copy", "--models", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("activations: error: two models share a conv activation") and len(err.splitlines()) == 1
    assert study(["--task", "copy"]) == 2
    assert "give --variant or --models" in capsys.readouterr().err


def test_latim_bench_activations_runs_the_study_and_names_itself(tmp_path, capsys):
    """``latim bench activations`` is the script's study under the CLI: same options, its own command recorded."""
    from latim_captum.cli import main

    argv = ["bench", "activations", "--task", "copy", "--variant", "mamba2", "--acts", "silu", "linear",
            "--train-steps", "2", "--train-out", str(tmp_path / "runs"), "--n-samples", "3", "--batch", "3",
            "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    suite = json.loads((tmp_path / "activations-copy-mamba2-tiny.json").read_text())
    assert [row["summary"]["act"] for row in suite["models"]] == ["silu", "linear"]
    assert suite["meta"]["command"] == (
        "latim bench activations --task copy --scale tiny --device cpu --variant mamba2 --seed 0 --train-steps 2 "
        "--acts silu linear --n-samples 3"
    )
    capsys.readouterr()
    assert main(["bench", "activations", "--task", "copy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "latim: error: give --variant or --models"
    assert main(["bench", "activations", "--task", "copy", "--models", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latim: error: ") and len(err.splitlines()) == 1 and "none" in err


@pytest.mark.parametrize("act, exact", [("swish", "silu_gate"), ("silu", "silu_gate"), ("none", "identity"),
                                        ("linear", "identity"), ("relu", "act_gate")])  # fmt: skip
def test_table5_summary_knows_every_name_of_an_activation(act, exact):
    """``hidden_act="swish"`` is SiLU: its exact-strategy columns were computed and then shown as "—"."""
    from latim_captum.paper.activations import summarize

    layers = {"layers": [_scores(0.6), _scores(0.8)]}
    report = {
        "act": act, "accuracy": {"token_acc": 1.0}, "reconstruction_error": {},
        "methods": {"l2_silu_gate": {"label": "LaTIM (ℓ2) exact", "per_layer": True, **layers}},
    }  # fmt: skip
    row = summarize(report, "copy")
    assert row["exact_strategy"] == exact
    assert row["methods"]["l2_silu_gate"]["strategy"] == exact and row["methods"]["l2_silu_gate"]["value"] == 0.8
