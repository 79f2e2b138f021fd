"""The Table 5 analogue over training seeds: activation reports (``benchmarks/activations.py``), one per seed, as
mean ± sample std per conv activation (see :mod:`latim_captum.paper.study_seeds`)."""

from __future__ import annotations

from collections.abc import Sequence

from .seed_tables import (
    MEASURE,
    best_cell,
    check_same,
    common_keys,
    distinct_seeds,
    mean_errors,
    method_over_seeds,
    ms,
    per_seed_and_layers,
)
from .seeds import mean_std

__all__ = ["aggregate_activations", "render_activations_markdown"]


def aggregate_activations(suites: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Mean ± std over seeds of activation reports (``benchmarks/activations.py`` JSONs) of one task and variant,
    per row (conv activation, or its ``+ CP`` label) they all hold. A report whose models were trained with
    different seeds is refused (its rows would mix activation and seed)."""
    if not suites:
        raise ValueError("no reports to aggregate")
    metas = [s["meta"] for s in suites]
    check_same(metas, ("task", "variant", "scale"), "the reports")
    mixed = [src for s, src in zip(suites, sources or [None] * len(suites)) if not s["meta"].get("same_seed", True)]
    if mixed:
        raise ValueError(f"a report's models were trained with different seeds ({mixed}): not one seed per report")
    task = metas[0]["task"]
    # rows by label: "silu" and "silu + CP" (the paper's continued-training control) are two rows of one activation
    by_act = [{row["summary"].get("label", row["summary"]["act"]): row for row in s["models"]} for s in suites]
    acts, skipped_acts = common_keys(by_act)
    if not acts:
        raise ValueError("no conv activation is in every report")
    # one seed per report (same_seed); the model folders are checked per activation below
    seeds = distinct_seeds([{"seed": s["models"][0]["meta"].get("seed")} for s in suites], "the reports")
    out: dict = {
        "kind": "activations",
        "task": task,
        "variant": metas[0]["variant"],
        "scale": metas[0]["scale"],
        "measure": MEASURE[task][0],
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
        check_same(reports, ("n_layers", "task", "n_samples"), f"the {act} models")
        distinct_seeds([r["meta"] for r in rows], act)
        summaries = [r["summary"] for r in rows]
        check_same(summaries, ("paper_strategy", "exact_strategy"), f"the {act} models")
        names, skipped = common_keys([r["methods"] for r in reports])
        methods = {}
        for name in names:
            item = method_over_seeds([r["methods"][name] for r in reports], task)
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
            "reconstruction_error": mean_errors(summaries),
            "methods": methods,
            "skipped": skipped,
        }
    return out


def _layers_ms(layers: list[dict] | None) -> str:
    return "—" if layers is None else " / ".join(ms(x) for x in layers)


def render_activations_markdown(agg: dict) -> str:
    """Markdown: the Table 5 analogue over seeds (one row per activation), per-seed values, every strategy's error
    and the paper's Table 5."""
    from .activations import paper_table5_markdown, strategy_errors_markdown

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
        errors, methods = a["reconstruction_error"], a["methods"]

        def cell(name: str, methods: dict = methods) -> str:
            return best_cell(methods[name], "predict") if name in methods else "—"

        acc = a["accuracy"]
        lines.append(
            f"| {act} | {ms(acc['token_acc'], 3)} / {ms(acc['exact_match'], 3)} | {paper}: "
            f"{_layers_ms(errors.get(paper))} | {exact}: {_layers_ms(errors.get(exact))} | {cell(f'l2{suffix}')} | "
            f"{cell(f'l2_{exact}')} | {cell(f'alti_logit{suffix}')} | {cell(f'alti_logit_{exact}')} |"
        )
    for act, a in agg["acts"].items():
        lines += per_seed_and_layers(act, a, measure.upper(), "highest" if measure == "auc" else "lowest")
    errors = {act: a["reconstruction_error"] for act, a in agg["acts"].items()}
    title = "Decomposition error of every strategy (per layer, mean ± std)"
    lines += ["", *strategy_errors_markdown(title, errors, _layers_ms), "", *paper_table5_markdown()]
    return "\n".join(lines) + "\n"
