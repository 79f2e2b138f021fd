"""The Table 3 analogue over training seeds: alignment reports (``latim bench alignment``), one per seed, as
mean ± sample std per variant (see :mod:`latim_captum.paper.study_seeds`)."""

from __future__ import annotations

from collections.abc import Sequence

from .seed_tables import (
    best_cell,
    check_same,
    common_keys,
    distinct_seeds,
    mean_errors,
    method_over_seeds,
    ms,
    per_seed_and_layers,
    sci,
)
from .seeds import mean_std

__all__ = ["aggregate_alignment", "render_alignment_markdown"]


def aggregate_alignment(suites: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Mean ± std over seeds of alignment reports (``latim bench alignment`` JSONs), per variant they all hold."""
    if not suites:
        raise ValueError("no reports to aggregate")
    check_same([s["meta"] for s in suites], ("scale",), "the reports")
    variants, skipped_variants = common_keys([s["models"] for s in suites])
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
        check_same(reports, ("act", "n_layers", "task", "n_samples", "extraction"), f"the {variant} models")
        metas = [r.get("meta", {}) for r in reports]
        names, skipped = common_keys([r["methods"] for r in reports])
        out["variants"][variant] = {
            "act": reports[0]["act"],
            "n_layers": reports[0]["n_layers"],
            "n_samples": reports[0]["n_samples"],
            "seeds": distinct_seeds(metas, variant),
            "runs": [{k: m.get(k) for k in ("model", "train_device", "steps")} for m in metas],
            "eval_seeds": [r.get("eval_seed") for r in reports],
            "accuracy": {k: mean_std([r["accuracy"][k] for r in reports]) for k in ("token_acc", "exact_match")},
            "monotone": mean_std([r["baselines"]["monotone"]["aer"] for r in reports]),
            "methods": {n: method_over_seeds([r["methods"][n] for r in reports], "alignment") for n in names},
            "skipped": skipped,
            "reconstruction_error": mean_errors(reports),
        }
    return out


def render_alignment_markdown(agg: dict) -> str:
    """Markdown: Table 3 over seeds beside the paper's IWSLT17 column, per-seed values, every layer, the
    decomposition errors and the paper's whole Table 3."""
    from ..alignment.evaluate import paper_table3_markdown, table3_markdown

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
            f"token {ms(acc['token_acc'], 3)}, exact match {ms(acc['exact_match'], 3)}"
            + (f"; not in every report, left out: {', '.join(v['skipped'])}" if v["skipped"] else "")
        )
    lines.append(
        "- cells: AER mean ± sample std over seeds; a per-layer method at its best layer of the mean (the layer of "
        "lowest mean AER, the same for every seed; number in brackets). Readings: **predict** = the row that "
        "predicts the target word, **hold** = the row that holds it"
    )
    methods = {name: v["methods"] for name, v in variants.items()}
    monotone = [ms(v["monotone"]) for v in variants.values()]
    lines += ["", *table3_markdown("Table 3 over seeds", methods, best_cell, monotone, "Best layer of the mean")]
    for variant, v in variants.items():
        lines += per_seed_and_layers(variant, v, "AER", "lowest")
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
            cells = ["—"] * v["n_layers"] if layers is None else [sci(x) for x in layers]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *paper_table3_markdown()]
    return "\n".join(lines) + "\n"
