"""Table 2 over training seeds: several copying reports (one per seed, ``latim bench copying``) as mean ± std.

For every method and reading of the query rows (``predict``, and ``hold`` when every report has it) this gives,
over seeds: each layer's AUC / AP / R@K as mean ± std; the paper's layer; the **best layer of the mean** (the layer
whose mean AUC is highest, one layer for every seed); and the **per-seed best** (each seed at its own best layer,
which may differ between seeds; the layers are listed). Aggregated methods (ALTI-Logit, gradients, ...) have one
value per seed. ``std`` is the sample standard deviation (``n − 1``; None for one seed).

Usage::

    python benchmarks/copying_seeds.py results/copying-mamba1-paper-seed{0,1,2}.json --out benchmarks/results

Example:
    >>> mean_std([0.8, 0.7, 0.7])
    {'mean': 0.7333333333333334, 'std': 0.05773502691896263, 'values': [0.8, 0.7, 0.7]}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .._environment import command_line
from ..copying.evaluate import PAPER_TABLE2
from ..copying.metrics import ROWS
from ..tasks.reports import write_report

__all__ = ["METRICS", "aggregate", "main", "mean_std", "render_markdown"]

METRICS: tuple[str, ...] = ("auc", "ap", "recall_at_k")


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "values"}``; ``std`` is the sample standard deviation (None for a single value)."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def _reading(entry: dict, rows: str) -> dict | None:
    if "by_rows" in entry:
        return entry["by_rows"].get(rows)
    return entry if rows == "predict" else None  # reports written before both readings existed


def _per_layer(scores: list[dict], paper_layer: int | None) -> dict:
    """Aggregate one method's per-seed layer lists ``scores[seed]["layers"]``."""
    n_layers = len(scores[0]["layers"])
    layers = [{m: mean_std([s["layers"][k][m] for s in scores]) for m in METRICS} for k in range(n_layers)]
    best = max(range(n_layers), key=lambda k: layers[k]["auc"]["mean"])
    seed_best = [max(range(n_layers), key=lambda k: s["layers"][k]["auc"]) for s in scores]
    return {
        "layers": layers,
        "best_of_mean": {"layer": best, **layers[best]},
        "per_seed_best": {
            "layers": seed_best,
            **{m: mean_std([s["layers"][k][m] for s, k in zip(scores, seed_best)]) for m in METRICS},
        },
        "paper_layer": {"layer": paper_layer, **layers[paper_layer]} if paper_layer is not None else None,
    }


def aggregate(reports: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Mean ± std over seeds of copying reports (``latim bench copying`` JSONs) of one variant.

    ``ValueError`` when the reports mix variants, layer counts, tasks, conv activations (``act``: a SiLU and a
    linear model are two rows of Table 5, not two seeds of one) or held-out sample counts, or repeat a training seed
    or a model folder.
    """
    if not reports:
        raise ValueError("no reports to aggregate")
    first = reports[0]
    for key in ("variant", "n_layers", "task", "act", "n_samples"):
        values = {json.dumps(r.get(key), sort_keys=True) for r in reports}
        if len(values) > 1:
            raise ValueError(f"the reports differ in {key}: {', '.join(sorted(values))}")
    seeds = [r.get("meta", {}).get("seed") for r in reports]
    known = [s for s in seeds if s is not None]
    if len(set(known)) < len(known):
        raise ValueError(f"a training seed appears twice ({seeds}): one report per seed")
    models = [r.get("meta", {}).get("model") for r in reports]
    named = [m for m in models if m is not None]
    if len(set(named)) < len(named):
        raise ValueError(f"a model folder appears twice ({named}): one report per trained model")
    pl = first.get("paper_layer")
    common = [name for name in first["methods"] if all(name in r["methods"] for r in reports)]
    out: dict = {
        "variant": first["variant"],
        "n_layers": first["n_layers"],
        "task": first["task"],
        "act": first.get("act"),
        "n_seeds": len(reports),
        "seeds": seeds,
        "sources": list(sources or []),
        "models": [r.get("meta", {}).get("model") for r in reports],
        # where each seed was trained and scored, and for how many steps (from each report's meta)
        "runs": [{k: r.get("meta", {}).get(k) for k in ("train_device", "steps", "device")} for r in reports],
        "scale": first.get("meta", {}).get("scale"),
        "n_samples": [r["n_samples"] for r in reports],
        "accuracy": {m: mean_std([r["accuracy"][m] for r in reports]) for m in ("token_acc", "exact_match")},
        "skipped": sorted({n for r in reports for n in r["methods"]} - set(common)),
        "readings": {},
    }
    for rows in ROWS:
        table = {}
        for name in common:
            scores = [_reading(r["methods"][name], rows) for r in reports]
            if any(s is None for s in scores):
                continue
            entry = {"label": first["methods"][name]["label"], "per_layer": first["methods"][name]["per_layer"]}
            if entry["per_layer"]:
                entry.update(_per_layer(scores, pl))
            else:
                entry["all"] = {m: mean_std([s["all"][m] for s in scores]) for m in METRICS}
            table[name] = entry
        if table:
            out["readings"][rows] = table
    return out


def _ms(x: dict) -> str:
    return f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else "")


def _three(x: dict) -> str:
    return " / ".join(_ms(x[m]) for m in METRICS)


def render_markdown(agg: dict) -> str:
    """Markdown: Table 2 as mean ± std per reading, every layer (AUC), and the per-seed numbers."""
    variant, n = agg["variant"], agg["n_seeds"]
    paper = PAPER_TABLE2.get(variant, {})
    acc = agg["accuracy"]
    lines = [
        f"# Copying faithfulness over {n} training seeds — {variant} ({agg.get('scale') or '?'} scale)",
        "",
        f"- seeds: {', '.join(str(s) for s in agg['seeds'])}; reports: {', '.join(agg['sources']) or '?'}",
        f"- conv activation: {agg.get('act') or '? (reports older than the field)'}; held-out samples per seed: "
        f"{agg['n_samples'][0]}",
        *([f"- command: `{agg['command']}`"] if agg.get("command") else []),
        *(
            [
                "- per seed, trained on / steps / evaluated on: "
                + "; ".join(f"{r['train_device']} / {r['steps']} / {r['device']}" for r in agg["runs"])
            ]
            if agg.get("runs")
            else []
        ),
        f"- copy accuracy (teacher forcing), mean ± std: token {_ms(acc['token_acc'])}, exact match "
        f"{_ms(acc['exact_match'])}; per seed: " + ", ".join(f"{v:.4f}" for v in acc["token_acc"]["values"]),
        "- cells: AUC / AP / R@K, mean ± sample std over seeds. Best layer of the mean: the layer with the highest "
        "mean AUC (the same for every seed); per-seed best: each seed at its own best layer (layers listed)",
    ]
    if agg["skipped"]:
        lines.append(f"- not in every report, left out: {', '.join(agg['skipped'])}")
    for rows, table in agg["readings"].items():
        span = "L..2L-1, which predict the copied tokens" if rows == "predict" else "L+1..2L, which hold them"
        lines += [
            "",
            f"## Table 2 over seeds, rows {span}",
            "",
            "| Method | paper layer or aggregated | best layer of the mean | per-seed best | Paper |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, e in table.items():
            ref = " / ".join(f"{v:.2f}" for v in paper[name]) if name in paper else "—"
            if e["per_layer"]:
                at = e["paper_layer"]
                at_s = f"{_three(at)} (layer {at['layer'] + 1})" if at else "—"
                b, s = e["best_of_mean"], e["per_seed_best"]
                layers = ", ".join(str(k + 1) for k in s["layers"])
                lines.append(
                    f"| {e['label']} | {at_s} | {_three(b)} (layer {b['layer'] + 1}) | {_three(s)} (layers {layers}) "
                    f"| {ref} |"
                )
            else:
                lines.append(f"| {e['label']} | {_three(e['all'])} (all layers) | — | — | {ref} |")
        n_layers = agg["n_layers"]
        lines += [
            "",
            f"### Every layer, rows {rows} (AUC, mean ± std)",
            "",
            "| Method | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
            "| --- |" + " --- |" * n_layers,
        ]
        for e in table.values():
            if e["per_layer"]:
                lines.append(f"| {e['label']} | " + " | ".join(_ms(x["auc"]) for x in e["layers"]) + " |")
        lines += [
            "",
            f"### Per seed, rows {rows} (AUC; per-layer methods at their best layer of the mean)",
            "",
            "| Method | " + " | ".join(f"seed {s}" for s in agg["seeds"]) + " |",
            "| --- |" + " --- |" * n,
        ]
        for e in table.values():
            values = e["best_of_mean"]["auc"]["values"] if e["per_layer"] else e["all"]["auc"]["values"]
            lines.append(f"| {e['label']} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/copying_seeds.py", description="Table 2 over seeds: mean ± std of copying reports"
    )
    p.add_argument("reports", nargs="+", help="copying report JSONs (latim bench copying), one per training seed")
    p.add_argument("--out", default="benchmarks/results", help="folder for the .md and .json")
    p.add_argument("--stem", default=None, help="file name stem (default copying-<variant>-<scale>-seeds)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reports = [json.loads(Path(f).read_text()) for f in args.reports]
        agg = aggregate(reports, list(args.reports))
        agg["command"] = command_line("python benchmarks/copying_seeds.py", argv)
    except (ValueError, KeyError, OSError) as err:
        print(f"copying_seeds: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    stem = args.stem or f"copying-{agg['variant']}-{agg.get('scale') or 'unknown'}-seeds"
    json_path, md_path = write_report(agg, args.out, stem, render_markdown)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
