"""Shared pieces of the over-seed tables (:mod:`latim_captum.paper.study_seeds`): a method's scores over seeds
(every layer's mean ± std, the best layer of the mean, each seed's own best), the checks that reports measured the
same thing, and the markdown cells.

Example:
    >>> layered([[0.9, 0.2], [0.8, 0.4]], better=min)["best_of_mean"]["layer"]
    1
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from ..copying.metrics import ROWS
from .seeds import mean_std

__all__ = [
    "MEASURE",
    "best_cell",
    "check_same",
    "common_keys",
    "distinct_seeds",
    "layered",
    "mean_errors",
    "method_over_seeds",
    "ms",
    "per_seed_and_layers",
    "sci",
]

#: the measure of each task's report, and which way is better
MEASURE: dict[str, tuple[str, Callable]] = {"alignment": ("aer", min), "copy": ("auc", max)}


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


def check_same(items: Sequence[dict], keys: Sequence[str], what: str) -> None:
    """``ValueError`` naming the first of ``keys`` whose value (compared as JSON) differs between ``items``."""
    for key in keys:
        values = {json.dumps(item.get(key), sort_keys=True) for item in items}
        if len(values) > 1:
            raise ValueError(f"{what} differ in {key}: {', '.join(sorted(values))}")


def distinct_seeds(metas: Sequence[dict], what: str) -> list:
    """The training seeds of ``metas`` (model metadata), refusing a seed or a model folder that appears twice."""
    seeds = [m.get("seed") for m in metas]
    known = [s for s in seeds if s is not None]
    if len(set(known)) < len(known):
        raise ValueError(f"{what}: a training seed appears twice ({seeds}); one report per seed")
    models = [m.get("model") for m in metas if m.get("model") is not None]
    if len(set(models)) < len(models):
        raise ValueError(f"{what}: a model folder appears twice ({models}); one report per trained model")
    return seeds


def mean_errors(reports: Sequence[dict], key: str = "reconstruction_error") -> dict:
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


def _reading_of(entry: dict, task: str, rows: str) -> dict | None:
    """One reading of a method's report entry: ``{"layers": [...]}`` or ``{"all": {...}}``; None when absent."""
    if task == "alignment":
        return entry["readings"].get(rows)
    if "by_rows" in entry:
        return entry["by_rows"].get(rows)
    return entry if rows == "predict" else None  # copying reports written before both readings existed


def method_over_seeds(entries: Sequence[dict], task: str) -> dict:
    """One method over seeds: label, per_layer and, per reading every report has, :func:`layered` (per-layer) or
    ``{"all": mean_std}`` of the task's measure."""
    measure, better = MEASURE[task]
    first = entries[0]
    out: dict = {"label": first["label"], "per_layer": bool(first["per_layer"])}
    for rows in ROWS:
        scores = [_reading_of(e, task, rows) for e in entries]
        if any(s is None for s in scores):
            continue
        if out["per_layer"]:
            out[rows] = layered([[layer[measure] for layer in s["layers"]] for s in scores], better)
        else:
            out[rows] = {"all": mean_std([s["all"][measure] for s in scores])}
    return out


def common_keys(dicts: Sequence[dict]) -> tuple[list[str], list[str]]:
    """The keys every dict has (in the first's order, then the others'), and those some lack."""
    names: list[str] = []
    for d in dicts:
        names += [n for n in d if n not in names]
    common = [n for n in names if all(n in d for d in dicts)]
    return common, [n for n in names if n not in common]


def ms(x: dict, digits: int = 2) -> str:
    """``"0.62 ± 0.04"`` of a :func:`~latim_captum.paper.seeds.mean_std` (the mean alone for one seed)."""
    return f"{x['mean']:.{digits}f}" + (f" ± {x['std']:.{digits}f}" if x["std"] is not None else "")


def best_cell(item: dict, rows: str) -> str:
    """An aggregated method's mean ± std, or a per-layer method's at its best layer of the mean (layer in brackets);
    — when the reading is absent."""
    reading = item.get(rows)
    if reading is None:
        return "—"
    if "all" in reading:
        return ms(reading["all"])
    best = reading["best_of_mean"]
    return f"{ms(best)} (L{best['layer'] + 1})"


def _seed_values(item: dict, rows: str) -> list[float] | None:
    """Each seed's value in ``rows``: an aggregated method's, a per-layer one's at the best layer of the mean."""
    reading = item.get(rows)
    if reading is None:
        return None
    return reading["all"]["values"] if "all" in reading else reading["best_of_mean"]["values"]


def _seed_best_line(label: str, item: dict, rows: str) -> str | None:
    reading = item.get(rows)
    if reading is None or "per_seed_best" not in reading:
        return None
    s = reading["per_seed_best"]
    return f"| {label} | {ms(s)} | {', '.join(str(k + 1) for k in s['layers'])} |"


def sci(x: dict) -> str:
    """:func:`ms` in scientific notation, for decomposition errors that span orders of magnitude."""
    return f"{x['mean']:.2e}" + (f" ± {x['std']:.1e}" if x["std"] is not None else "")


def per_seed_and_layers(name: str, group: dict, measure: str, best_word: str) -> list[str]:
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
                    lines.append(f"| {label} | {rows} | " + " | ".join(ms(x) for x in item[rows]["layers"]) + " |")
    return lines
