"""The Table 3 and Table 5 analogues over training seeds: several alignment reports (``latim bench alignment``) or
activation reports (``benchmarks/activations.py``), one per training seed, as mean ± sample standard deviation.

**Alignment (Table 3).** Per variant: held-out accuracy; per method and reading of the rows (``predict``,
``hold``), the AER of an aggregated method, and for a per-layer method every layer's AER, the **best layer of the
mean** (the layer of lowest mean AER, one layer for every seed: what a user who reads one layer of a recipe gets) and
the **per-seed best** (each seed at its own lowest-AER layer, the most favourable reading; the layers are listed);
the model-free monotone diagonal; the decomposition error per strategy and layer.

**Activations (Table 5).** Per conv activation: accuracy, the decomposition error per strategy and layer, and
LaTIM (ℓ2) / (ALTI-Logit) with the paper's ``f`` and the model's exact strategy, on the rows that predict (copy
AUC, higher is better, or AER, lower is better; per-layer methods at their best layer of the mean).

``std`` is the sample standard deviation (``n − 1``; None for one seed). Reports that disagree on what they
measured (task, scale, variant, activation, layers, held-out size, alignment extraction) or repeat a training seed
or a model folder are refused with the reason.

Usage::

    python benchmarks/study_seeds.py benchmarks/results/alignment-tiny-cpu-2026-12-05{,-s1,-s2}.json

Example:
    >>> layered([[0.9, 0.2], [0.8, 0.4]], better=min)["best_of_mean"]["layer"]
    1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..copying.metrics import ROWS
from ..tasks.reports import write_report
from .seeds import mean_std

__all__ = [
    "aggregate_activations",
    "aggregate_alignment",
    "kind_of",
    "layered",
    "main",
    "render_activations_markdown",
    "render_alignment_markdown",
]

#: the measure of each task's report, and which way is better
_MEASURE: dict[str, tuple[str, Callable]] = {"alignment": ("aer", min), "copy": ("auc", max)}


def kind_of(report: dict) -> str:
    """``"alignment"`` (``{"meta", "models": {variant: report}}``), ``"activations"`` (``{"meta": {"task", ...},
    "models": [row, ...]}``) or ``"copying"`` (one model's copying report)."""
    models = report.get("models")
    if isinstance(models, dict):
        return "alignment"
    if isinstance(models, list) and report.get("meta", {}).get("task") in _MEASURE:
        return "activations"
    if "methods" in report and "variant" in report:
        return "copying"
    raise ValueError("not an alignment, activation or copying report (no 'models' or 'methods')")


def layered(per_seed: Sequence[Sequence[float]], better: Callable = min) -> dict:
    """Every layer's mean ± std over seeds, the best layer of the mean and each seed's own best layer.

    ``per_seed[s][k]``: seed ``s``'s score at layer ``k`` (0-based); ``better``: ``min`` for AER, ``max`` for AUC.
    Ties go to the lowest layer.
    """
    n_layers = {len(s) for s in per_seed}
    if len(n_layers) != 1:
        raise ValueError(f"the seeds have different numbers of layers ({sorted(n_layers)})")
    n = n_layers.pop()
    layers = [mean_std([s[k] for s in per_seed]) for k in range(n)]
    best = better(range(n), key=lambda k: layers[k]["mean"])
    seed_best = [better(range(n), key=lambda k: s[k]) for s in per_seed]
    return {
        "layers": layers,
        "best_of_mean": {"layer": best, **layers[best]},
        "per_seed_best": {"layers": seed_best, **mean_std([s[k] for s, k in zip(per_seed, seed_best)])},
    }


def _same(items: Sequence[dict], keys: Sequence[str], what: str) -> None:
    for key in keys:
        values = {json.dumps(item.get(key), sort_keys=True) for item in items}
        if len(values) > 1:
            raise ValueError(f"{what} differ in {key}: {', '.join(sorted(values))}")


def _distinct_runs(metas: Sequence[dict], what: str) -> list:
    """The training seeds of ``metas`` (model metadata), refusing a seed or a model folder that appears twice."""
    seeds = [m.get("seed") for m in metas]
    known = [s for s in seeds if s is not None]
    if len(set(known)) < len(known):
        raise ValueError(f"{what}: a training seed appears twice ({seeds}); one report per seed")
    models = [m.get("model") for m in metas if m.get("model") is not None]
    if len(set(models)) < len(models):
        raise ValueError(f"{what}: a model folder appears twice ({models}); one report per trained model")
    return seeds


def _errors(reports: Sequence[dict], key: str = "reconstruction_error") -> dict:
    """Decomposition error per strategy (those in every report) and layer, mean ± std; None where refused."""
    names = [n for n in reports[0][key] if all(n in r[key] for r in reports)]
    out = {}
    for name in names:
        runs = [r[key][name] for r in reports]
        refused = [r is None for r in runs]
        if any(refused) and not all(refused):
            raise ValueError(f"strategy {name} refused some models of the seeds and not others")
        out[name] = None if all(refused) else layered(runs)["layers"]
    return out


def _scores(entry: dict, task: str, rows: str) -> dict | None:
    """One reading of a method's report entry: ``{"layers": [...]}`` or ``{"all": {...}}``; None when absent."""
    if task == "alignment":
        return entry["readings"].get(rows)
    if "by_rows" in entry:
        return entry["by_rows"].get(rows)
    return entry if rows == "predict" else None  # copying reports written before both readings existed


def _method(entries: Sequence[dict], task: str) -> dict:
    """One method over seeds: label, per_layer and, per reading every report has, :func:`layered` (per-layer) or
    ``{"all": mean_std}`` of the task's measure."""
    measure, better = _MEASURE[task]
    first = entries[0]
    out: dict = {"label": first["label"], "per_layer": bool(first["per_layer"])}
    for rows in ROWS:
        scores = [_scores(e, task, rows) for e in entries]
        if any(s is None for s in scores):
            continue
        if out["per_layer"]:
            out[rows] = layered([[layer[measure] for layer in s["layers"]] for s in scores], better)
        else:
            out[rows] = {"all": mean_std([s["all"][measure] for s in scores])}
    return out


def _common(dicts: Sequence[dict]) -> tuple[list[str], list[str]]:
    """The keys every dict has (in the first's order, then the others'), and those some lack."""
    names: list[str] = []
    for d in dicts:
        names += [n for n in d if n not in names]
    common = [n for n in names if all(n in d for d in dicts)]
    return common, [n for n in names if n not in common]


# --- alignment (Table 3) --------------------------------------------------------------------------------------------


def aggregate_alignment(suites: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Mean ± std over seeds of alignment reports (``latim bench alignment`` JSONs), per variant they all hold."""
    if not suites:
        raise ValueError("no reports to aggregate")
    _same([s["meta"] for s in suites], ("scale",), "the reports")
    variants, skipped_variants = _common([s["models"] for s in suites])
    if not variants:
        raise ValueError("no variant is in every report")
    out: dict = {
        "kind": "alignment",
        "scale": suites[0]["meta"].get("scale"),
        "devices": [s["meta"].get("device") for s in suites],
        "sources": list(sources or []),
        "commands": [s["meta"].get("command") for s in suites],
        "skipped_variants": skipped_variants,
        "variants": {},
    }
    for variant in variants:
        reports = [s["models"][variant] for s in suites]
        _same(reports, ("act", "n_layers", "task", "n_samples", "extraction"), f"the {variant} models")
        metas = [r.get("meta", {}) for r in reports]
        names, skipped = _common([r["methods"] for r in reports])
        out["variants"][variant] = {
            "act": reports[0]["act"],
            "n_layers": reports[0]["n_layers"],
            "n_samples": reports[0]["n_samples"],
            "seeds": _distinct_runs(metas, variant),
            "runs": [{k: m.get(k) for k in ("model", "train_device", "steps")} for m in metas],
            "eval_seeds": [r.get("eval_seed") for r in reports],
            "accuracy": {k: mean_std([r["accuracy"][k] for r in reports]) for k in ("token_acc", "exact_match")},
            "monotone": mean_std([r["baselines"]["monotone"]["aer"] for r in reports]),
            "methods": {n: _method([r["methods"][n] for r in reports], "alignment") for n in names},
            "skipped": skipped,
            "reconstruction_error": _errors(reports),
        }
    return out


def _ms(x: dict, digits: int = 2) -> str:
    return f"{x['mean']:.{digits}f}" + (f" ± {x['std']:.{digits}f}" if x["std"] is not None else "")


def _best_cell(item: dict, rows: str) -> str:
    """An aggregated method's mean ± std, or a per-layer method's at its best layer of the mean (layer in brackets);
    — when the reading is absent."""
    reading = item.get(rows)
    if reading is None:
        return "—"
    if "all" in reading:
        return _ms(reading["all"])
    best = reading["best_of_mean"]
    return f"{_ms(best)} (L{best['layer'] + 1})"


def _seed_values(item: dict, rows: str) -> list[float] | None:
    reading = item.get(rows)
    if reading is None:
        return None
    return reading["all"]["values"] if "all" in reading else reading["best_of_mean"]["values"]


def _seed_best_line(label: str, item: dict, rows: str) -> str | None:
    reading = item.get(rows)
    if reading is None or "per_seed_best" not in reading:
        return None
    s = reading["per_seed_best"]
    return f"| {label} | {_ms(s)} | {', '.join(str(k + 1) for k in s['layers'])} |"


def render_alignment_markdown(agg: dict) -> str:
    """Markdown: Table 3 over seeds beside the paper's IWSLT17 column, per-seed values, every layer, the
    decomposition errors and the paper's whole Table 3."""
    from ..alignment.evaluate import PAPER_MODELS, paper_cells, paper_table3_markdown

    variants: dict = agg["variants"]
    lines = [
        f"# Alignment error rate over training seeds ({agg.get('scale') or '?'} scale)",
        "",
        "Lower is better. Ours come from the synthetic translation task of `latim_captum.alignment` (gold links by "
        "construction); the paper's from IWSLT17 with its fine-tuned checkpoints: **different data**, side by side "
        "for shape only.",
        "",
        f"- reports: {', '.join(agg['sources']) or '?'}",
        *([f"- command: `{agg['command']}`"] if agg.get("command") else []),
        "- each report's command: " + "; ".join(f"`{c}`" for c in agg["commands"]),
    ]
    if agg.get("skipped_variants"):
        lines.append(f"- not in every report, left out: {', '.join(agg['skipped_variants'])}")
    for variant, v in variants.items():
        acc = v["accuracy"]
        runs = "; ".join(f"{r['train_device'] or '?'} / {r['steps']}" for r in v["runs"])
        lines.append(
            f"- {variant} ({v['n_layers']} layers, conv activation {v['act']}): seeds "
            f"{', '.join(str(s) for s in v['seeds'])} (trained on / steps: {runs}); {v['n_samples']} held-out pairs "
            f"per seed (held-out seeds {', '.join(str(s) for s in v['eval_seeds'])}); accuracy (teacher forcing) "
            f"token {_ms(acc['token_acc'], 3)}, exact match {_ms(acc['exact_match'], 3)}"
            + (f"; not in every report, left out: {', '.join(v['skipped'])}" if v["skipped"] else "")
        )
    lines.append(
        "- cells: AER mean ± sample std over seeds; a per-layer method at its best layer of the mean (the layer of "
        "lowest mean AER, the same for every seed; number in brackets). Readings: **predict** = the row that "
        "predicts the target word, **hold** = the row that holds it"
    )
    heads = [f"{v} {r}" for v in variants for r in ROWS]
    paper_head = "Paper, IWSLT17 DE→EN, different data (" + " / ".join(PAPER_MODELS) + ")"
    lines += [
        "",
        "## Table 3 over seeds",
        "",
        "| Method | " + " | ".join(heads) + f" | {paper_head} |",
        "| --- |" + " --- |" * (len(heads) + 1),
    ]
    names, _ = _common([v["methods"] for v in variants.values()])
    blank = " |" * (len(heads) + 1)

    def row(name: str) -> str:
        items = [v["methods"].get(name) for v in variants.values()]
        label = next(i["label"] for i in items if i is not None)
        cells = [_best_cell(i, r) if i is not None else "—" for i in items for r in ROWS]
        return f"| {label} | " + " | ".join(cells) + f" | {paper_cells(name, 'IWSLT17 DE→EN')} |"

    def per_layer(name: str) -> bool:
        return any(v["methods"].get(name, {}).get("per_layer") for v in variants.values())

    lines.append("| *Aggregating layers* |" + blank)
    lines += [row(n) for n in names if not per_layer(n)]
    lines.append("| *Best layer of the mean (its number in brackets)* |" + blank)
    lines += [row(n) for n in names if per_layer(n)]
    lines.append("| *No model* |" + blank)
    mono = [_ms(v["monotone"]) for v in variants.values() for _ in ROWS]
    lines.append("| Monotone diagonal | " + " | ".join(mono) + " | — |")
    for variant, v in variants.items():
        lines += _per_seed_and_layers(variant, v, "AER", "lowest")
        lines += [
            "",
            f"## Decomposition error, {variant} (mean ± std over seeds)",
            "",
            "‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer (— : the strategy refuses this activation).",
            "",
            "| Strategy | " + " | ".join(f"layer {k + 1}" for k in range(v["n_layers"])) + " |",
            "| --- |" + " --- |" * v["n_layers"],
        ]
        for name, layers in v["reconstruction_error"].items():
            cells = ["—"] * v["n_layers"] if layers is None else [_sci(x) for x in layers]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *paper_table3_markdown()]
    return "\n".join(lines) + "\n"


def _sci(x: dict) -> str:
    return f"{x['mean']:.2e}" + (f" ± {x['std']:.1e}" if x["std"] is not None else "")


def _per_seed_and_layers(name: str, group: dict, measure: str, best_word: str) -> list[str]:
    """Per-seed values (rows predict), each seed's own best layer, and every layer's mean ± std of one group."""
    seeds = group["seeds"]
    lines = [
        "",
        f"## Per seed, {name}, rows predict ({measure}; per-layer methods at the best layer of the mean)",
        "",
        "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- |" + " --- |" * len(seeds),
    ]
    for item in group["methods"].values():
        values = _seed_values(item, "predict")
        if values is not None:
            lines.append(f"| {item['label']} | " + " | ".join(f"{x:.2f}" for x in values) + " |")
    per_layer = [(item["label"], item) for item in group["methods"].values() if item["per_layer"]]
    if per_layer:
        lines += [
            "",
            f"### Each seed at its own best layer ({best_word} {measure}; the most favourable reading), {name}, "
            "rows predict",
            "",
            f"| Method | {measure} mean ± std | layers per seed |",
            "| --- | --- | --- |",
        ]
        lines += [line for label, item in per_layer if (line := _seed_best_line(label, item, "predict"))]
        n_layers = len(per_layer[0][1]["predict"]["layers"])
        lines += [
            "",
            f"### Every layer, {name} ({measure}, mean ± std)",
            "",
            "| Method | rows | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
            "| --- | --- |" + " --- |" * n_layers,
        ]
        for label, item in per_layer:
            for rows in ROWS:
                if rows in item:
                    lines.append(f"| {label} | {rows} | " + " | ".join(_ms(x) for x in item[rows]["layers"]) + " |")
    return lines


# --- activations (Table 5) ------------------------------------------------------------------------------------------


def aggregate_activations(suites: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Mean ± std over seeds of activation reports (``benchmarks/activations.py`` JSONs) of one task and variant,
    per conv activation they all hold. A report whose models were trained with different seeds is refused (its rows
    would mix activation and seed)."""
    if not suites:
        raise ValueError("no reports to aggregate")
    metas = [s["meta"] for s in suites]
    _same(metas, ("task", "variant", "scale"), "the reports")
    mixed = [src for s, src in zip(suites, sources or [None] * len(suites)) if not s["meta"].get("same_seed", True)]
    if mixed:
        raise ValueError(f"a report's models were trained with different seeds ({mixed}): not one seed per report")
    task = metas[0]["task"]
    by_act = [{row["summary"]["act"]: row for row in s["models"]} for s in suites]
    acts, skipped_acts = _common(by_act)
    if not acts:
        raise ValueError("no conv activation is in every report")
    # one seed per report (same_seed); the model folders are checked per activation below
    seeds = _distinct_runs([{"seed": s["models"][0]["meta"].get("seed")} for s in suites], "the reports")
    out: dict = {
        "kind": "activations",
        "task": task,
        "variant": metas[0]["variant"],
        "scale": metas[0]["scale"],
        "measure": _MEASURE[task][0],
        "seeds": seeds,
        "devices": [m.get("device") for m in metas],
        "sources": list(sources or []),
        "commands": [m.get("command") for m in metas],
        "skipped_acts": skipped_acts,
        "acts": {},
    }
    for act in acts:
        rows = [b[act] for b in by_act]
        reports = [r["report"] for r in rows]
        _same(reports, ("n_layers", "task", "n_samples"), f"the {act} models")
        _distinct_runs([r["meta"] for r in rows], act)
        summaries = [r["summary"] for r in rows]
        _same(summaries, ("paper_strategy", "exact_strategy"), f"the {act} models")
        names, skipped = _common([r["methods"] for r in reports])
        methods = {}
        for name in names:
            item = _method([r["methods"][name] for r in reports], task)
            item["strategy"] = summaries[0]["methods"][name]["strategy"]
            methods[name] = item
        out["acts"][act] = {
            "n_layers": reports[0]["n_layers"],
            "n_samples": reports[0]["n_samples"],
            "seeds": [r["meta"].get("seed") for r in rows],
            "runs": [{k: r["meta"].get(k) for k in ("model", "train_device", "steps")} for r in rows],
            "paper_strategy": summaries[0]["paper_strategy"],
            "exact_strategy": summaries[0]["exact_strategy"],
            "accuracy": {k: mean_std([r["accuracy"][k] for r in reports]) for k in ("token_acc", "exact_match")},
            "reconstruction_error": _errors(summaries),
            "methods": methods,
            "skipped": skipped,
        }
    return out


def _layers_ms(layers: list[dict] | None) -> str:
    return "—" if layers is None else " / ".join(_ms(x) for x in layers)


def render_activations_markdown(agg: dict) -> str:
    """Markdown: the Table 5 analogue over seeds (one row per activation), per-seed values, every strategy's error
    and the paper's Table 5."""
    from .activations import paper_table5_markdown

    task, measure = agg["task"], agg["measure"]
    better = "higher is better" if measure == "auc" else "lower is better"
    lines = [
        f"# What the activation costs over training seeds (paper Table 5 analogue) — {task} task, "
        f"{agg['variant']} ({agg.get('scale') or '?'} scale)",
        "",
        f"- seeds: {', '.join(str(s) for s in agg['seeds'])}; reports: {', '.join(agg['sources']) or '?'}",
        *([f"- command: `{agg['command']}`"] if agg.get("command") else []),
        "- each report's command: " + "; ".join(f"`{c}`" for c in agg["commands"]),
        "- within each seed, every activation has the same recipe and seed",
        f"- interpretability: {measure.upper()}, {better}, mean ± sample std over seeds; rows that predict the "
        "token; ℓ2 at its best layer of the mean (number in brackets), ALTI-Logit aggregated. The paper's f: eq 19 "
        "with f := the model's own activation; exact f: `silu_gate` for SiLU, `identity` for none, `act_gate` for "
        "ReLU",
        "- decomposition error: ‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer (layer 1 / layer 2 / ...), "
        "mean ± std",
    ]
    if agg.get("skipped_acts"):
        lines.append(f"- not in every report, left out: {', '.join(agg['skipped_acts'])}")
    lines += [
        "",
        "## Ours over seeds",
        "",
        "| Conv activation | accuracy token / exact | error per layer, the paper's f | exact f: error per layer | "
        "ℓ2, the paper's f | ℓ2, exact f | ALTI-Logit, the paper's f | ALTI-Logit, exact f |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for act, a in agg["acts"].items():
        paper, exact = a["paper_strategy"], a["exact_strategy"]
        suffix = "" if paper == "silu" else f"_{paper}"
        errors, ms = a["reconstruction_error"], a["methods"]

        def cell(name: str, ms: dict = ms) -> str:
            return _best_cell(ms[name], "predict") if name in ms else "—"

        acc = a["accuracy"]
        lines.append(
            f"| {act} | {_ms(acc['token_acc'], 3)} / {_ms(acc['exact_match'], 3)} | {paper}: "
            f"{_layers_ms(errors.get(paper))} | {exact}: {_layers_ms(errors.get(exact))} | {cell(f'l2{suffix}')} | "
            f"{cell(f'l2_{exact}')} | {cell(f'alti_logit{suffix}')} | {cell(f'alti_logit_{exact}')} |"
        )
    for act, a in agg["acts"].items():
        lines += _per_seed_and_layers(act, a, measure.upper(), "highest" if measure == "auc" else "lowest")
    strategies, _ = _common([a["reconstruction_error"] for a in agg["acts"].values()])
    lines += [
        "",
        "## Decomposition error of every strategy (per layer, mean ± std)",
        "",
        "| Conv activation | " + " | ".join(strategies) + " |",
        "| --- |" + " --- |" * len(strategies),
    ]
    for act, a in agg["acts"].items():
        errors = a["reconstruction_error"]
        lines.append(f"| {act} | " + " | ".join(_layers_ms(errors.get(k)) for k in strategies) + " |")
    lines += ["", *paper_table5_markdown()]
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------------------

_AGGREGATE = {"alignment": aggregate_alignment, "activations": aggregate_activations}
_RENDER = {"alignment": render_alignment_markdown, "activations": render_activations_markdown}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/study_seeds.py",
        description="Tables 3 and 5 over seeds: mean ± std of alignment or activation reports, one per seed",
    )
    p.add_argument("reports", nargs="+", help="alignment or activation report JSONs of one kind, one per seed")
    p.add_argument("--out", default="benchmarks/results", help="folder for the .md and .json")
    p.add_argument("--stem", default=None, help="file name stem (default <kind>-...-seeds)")
    return p


def _stem(agg: dict) -> str:
    if agg["kind"] == "alignment":
        return f"alignment-{agg.get('scale') or 'unknown'}-seeds"
    return f"activations-{agg['task']}-{agg['variant']}-{agg.get('scale') or 'unknown'}-seeds"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        suites = [json.loads(Path(f).read_text()) for f in args.reports]
        kinds = {kind_of(s) for s in suites}
        if len(kinds) > 1:
            raise ValueError(f"the reports are of different kinds ({', '.join(sorted(kinds))})")
        kind = kinds.pop()
        if kind == "copying":
            raise ValueError("copying reports: use benchmarks/copying_seeds.py (Table 2 over seeds)")
        agg = _AGGREGATE[kind](suites, list(args.reports))
        agg["command"] = " ".join(["python benchmarks/study_seeds.py", *(sys.argv[1:] if argv is None else argv)])
    except (ValueError, KeyError, TypeError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"study_seeds: error: {type(err).__name__ + ': ' if isinstance(err, KeyError) else ''}{reason}",
              file=sys.stderr)  # fmt: skip
        return 2
    json_path, md_path = write_report(agg, args.out, args.stem or _stem(agg), _RENDER[agg["kind"]])
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
