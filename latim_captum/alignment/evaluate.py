"""Evaluate trained translation models: accuracy, AER of every method at every layer (paper Table 3), decomposition
error per activation strategy.

AER is computed on held-out pairs (``task.pairs(n, seed + 1)``, the set held out in training) for every method of
the registry (:mod:`latim_captum.methods`; ``<measure>_<activation>`` names too, see
:func:`latim_captum.tasks.reports.resolve_method`): per-layer methods at every layer, aggregated methods once, in
both readings of the rows (``predict``/``hold``, :mod:`latim_captum.alignment.metrics`). The table reports
aggregated methods as they are and per-layer methods at their best layer (lowest AER), like the paper's Table 3,
plus a model-free baseline (the monotone diagonal, :func:`~.metrics.monotone_alignment`).

The paper's numbers (:data:`PAPER_TABLE3`) come from a different dataset (IWSLT17 and GoldAlign, word alignments
by AwesomeAlign / human annotators) and different models (the released 130M and 370M checkpoints, fine-tuned):
they stand beside ours for shape, not for comparison.

Example:
    >>> task = AlignmentTask(**TINY_TASK)                                                   # doctest: +SKIP
    >>> report = evaluate_model(model, task, n_samples=16, methods=["l2", "alti_logit"])   # doctest: +SKIP
    >>> report["methods"]["l2"]["readings"]["predict"]["layers"][0]["aer"]                  # doctest: +SKIP
    0.61
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..tasks.reports import (
    model_act,
    progress,
    reconstruction_errors,
    resolve_method,
    resume_into,
    resumed_lines,
    variant_of,
)
from ..tasks.reports import write_report as _write_report
from .data import AlignmentTask
from .metrics import ROWS, alignment_error_rate, batch_alignments, gold_of, monotone_alignment
from .train import evaluate_translation

__all__ = [
    "DEFAULT_METHODS",
    "RESUME_KEYS",
    "PAPER_MODELS",
    "PAPER_TABLE3",
    "evaluate_model",
    "paper_cells",
    "resume_keys",
    "paper_table3_markdown",
    "render_markdown",
    "table3_markdown",
    "write_report",
]

#: the methods of the issue's Table 3 (every family of the registry; ALTI-Logit with both strategies)
DEFAULT_METHODS: tuple[str, ...] = (
    "l2",
    "l2_silu_gate",
    "alti",
    "alti_silu_gate",
    "alti_logit",
    "alti_logit_silu_gate",
    "alti_logit_layers",
    "alti_logit_layers_silu_gate",
    "mamba_attention",
    "mamba_attribution",
    "mamba_lrp",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
)

#: the paper's Table 3 columns within each dataset: Mamba-1 / Mamba-2, 130M ("S") and 370M ("L") checkpoints
PAPER_MODELS: tuple[str, ...] = ("M1 130M", "M1 370M", "M2 130M", "M2 370M")

#: the paper's Table 3 (AER; None: not reported, MambaLRP is Mamba-1 only). "aggregated": the paper's
#: "aggregating layers" block, otherwise its "best layer" block (it lists Mamba-Attribution there).
PAPER_TABLE3: dict[str, dict] = {
    "mamba_lrp": {
        "aggregated": True,
        "GoldAlign DE→EN": (0.50, 0.47, None, None),
        "IWSLT17 DE→EN": (0.65, 0.68, None, None),
        "IWSLT17 FR→EN": (0.65, 0.66, None, None),
    },
    "alti_logit": {
        "aggregated": True,
        "GoldAlign DE→EN": (0.68, 0.69, 0.63, 0.69),
        "IWSLT17 DE→EN": (0.67, 0.71, 0.60, 0.74),
        "IWSLT17 FR→EN": (0.71, 0.69, 0.62, 0.76),
    },
    "mamba_attention": {
        "aggregated": False,
        "GoldAlign DE→EN": (0.84, 0.85, 0.84, 0.85),
        "IWSLT17 DE→EN": (0.79, 0.79, 0.72, 0.79),
        "IWSLT17 FR→EN": (0.80, 0.79, 0.69, 0.78),
    },
    "mamba_attribution": {
        "aggregated": False,
        "GoldAlign DE→EN": (0.86, 0.87, 0.78, 0.70),
        "IWSLT17 DE→EN": (0.81, 0.82, 0.81, 0.81),
        "IWSLT17 FR→EN": (0.73, 0.68, 0.72, 0.66),
    },
    "l2": {
        "aggregated": False,
        "GoldAlign DE→EN": (0.46, 0.44, 0.49, 0.52),
        "IWSLT17 DE→EN": (0.47, 0.49, 0.43, 0.49),
        "IWSLT17 FR→EN": (0.46, 0.48, 0.35, 0.37),
    },
    "alti": {
        "aggregated": False,
        "GoldAlign DE→EN": (0.55, 0.54, 0.51, 0.51),
        "IWSLT17 DE→EN": (0.52, 0.53, 0.47, 0.47),
        "IWSLT17 FR→EN": (0.53, 0.53, 0.38, 0.38),
    },
}
_PAPER_DATASETS = ("GoldAlign DE→EN", "IWSLT17 DE→EN", "IWSLT17 FR→EN")
#: what a report to resume must share with the run that resumes it (the weights are the caller's check)
RESUME_KEYS: tuple[str, ...] = ("variant", "n_layers", "task", "n_samples", "eval_seed", "act", "extraction")


def resume_keys(model: nn.Module, task: AlignmentTask, *, n_samples: int, seed: int, sink: bool, ties: str) -> dict:
    """The fields of :data:`RESUME_KEYS` a run of :func:`evaluate_model` with these settings records: what a report
    it resumes must share (``latim bench alignment --resume`` checks every model's before any work)."""
    return {
        "variant": variant_of(model),
        "act": model_act(model),
        "n_layers": get_adapter(model).n_layers,
        "task": task.to_dict(),
        "n_samples": n_samples,
        "eval_seed": seed + 1,
        "extraction": {"sink": sink, "ties": ties, "readings": list(ROWS)},
    }


def evaluate_model(
    model: nn.Module,
    task: AlignmentTask,
    *,
    n_samples: int = 128,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    batch: int = 32,
    max_sequences: int | None = None,
    backend: str = "auto",
    sink: bool = True,
    ties: str = "first",
    quiet: bool = False,
    on_update: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """Accuracy, AER of each method in both readings of the rows, and decomposition error of a translation model.

    Args:
        model: a trained HF Mamba / Mamba-2 translation model (on its device).
        task: the task it was trained on.
        n_samples: held-out pairs (``task.pairs(n_samples, seed + 1)``).
        seed: the training seed (the evaluation pairs are drawn with ``seed + 1``).
        methods: method names (default :data:`DEFAULT_METHODS`).
        batch: pairs per attribution call (right-padded; every map is causal, so padding changes no real row).
        max_sequences: sequences per backward pass of the row-replicating methods (default
            :data:`~latim_captum.methods.DEFAULT_MAX_SEQUENCES`; lower it on a CPU).
        backend: LaTIM's path (``"auto"``, ``"ref"``, ``"fast"``, ``"triton"``: same maps).
        sink, ties: hard-alignment extraction (:func:`~.metrics.extract_alignment`).
        on_update: called with the report so far after the decomposition errors and after every method.
        resume: the report such a cut run left, of *this* model (the caller checks the weights: ``latim bench
            alignment --resume`` compares their fingerprints): its accuracy, decomposition errors and finished
            methods are kept, and only the methods it lacks run. ``ValueError`` when it was computed on other pairs,
            task, extraction or model shape (:data:`RESUME_KEYS`).

    Returns:
        A dict with ``variant``, ``accuracy``, ``extraction``, ``gold`` (link counts), ``baselines`` (the monotone
        diagonal's AER, precision and recall), ``reconstruction_error`` (strategy → per-layer errors, None where
        the strategy refuses the model) and ``methods``: name → ``label``, ``family``, ``per_layer`` and
        ``readings`` (``"predict"`` and ``"hold"``, each ``{"layers": [scores per layer]}`` or ``{"all": scores}``,
        scores being ``{"aer", "precision", "recall"}``).
    """
    from ..methods import DEFAULT_MAX_SEQUENCES

    names = list(methods or DEFAULT_METHODS)
    resolved = [resolve_method(name) for name in names]  # an unknown name fails before any work or report
    device = next(model.parameters()).device
    data = task.encode(task.pairs(n_samples, seed + 1))
    sure, possible = gold_of(data)
    err_mask = torch.arange(data.ids.shape[1])[None] < data.lengths[:, None]
    monotone = [monotone_alignment(len(p.source), len(p.target)) for p in data.pairs]
    report: dict = {
        **resume_keys(model, task, n_samples=n_samples, seed=seed, sink=sink, ties=ties),
        # a resumed report's: same weights, same pairs (measured once, not again)
        "accuracy": resume["accuracy"] if resume is not None else evaluate_translation(model, data),
        "gold": {
            "source_words": int(data.source_lengths.sum()),
            "target_words": int(data.target_lengths.sum()),
            "sure_links": sum(len(s) for s in sure),
            "possible_only_links": sum(len(p) - len(s) for s, p in zip(sure, possible)),
        },
        "baselines": {"monotone": alignment_error_rate(monotone, sure, possible)},
        "methods": {},
        "reconstruction_error_samples": n_samples,
        "backend": backend,
    }
    if not resume_into(report, resume, RESUME_KEYS):
        report["reconstruction_error"] = reconstruction_errors(
            model, data.ids.to(device), err_mask.to(device), batch, backend=backend
        )
    names_todo = [(n, m) for n, m in zip(names, resolved) if n not in report["methods"]]
    if on_update is not None:
        on_update(report)
    cap = DEFAULT_MAX_SEQUENCES if max_sequences is None else max_sequences
    for name, method in progress(names_todo, "methods", quiet):
        t0 = time.time()
        # found[reading][layer] = hard alignments of every sample (one "layer" for an aggregated method)
        found: dict[str, list[list]] = {r: [] for r in ROWS}
        for start in range(0, n_samples, batch):
            part = data.select(list(range(start, min(n_samples, start + batch))))
            maps = method(model, part.ids.to(device), max_sequences=cap, backend=backend).float().cpu()
            per_layer = maps.unbind(1) if maps.dim() == 4 else (maps,)
            for r in ROWS:
                if not found[r]:
                    found[r] = [[] for _ in per_layer]
                for k, layer_maps in enumerate(per_layer):
                    found[r][k] += batch_alignments(layer_maps, part, rows=r, sink=sink, ties=ties)
        entry: dict = {"label": method.label, "family": method.family, "per_layer": method.per_layer}
        entry["seconds"] = time.time() - t0
        entry["readings"] = {
            r: {"layers": [alignment_error_rate(f, sure, possible) for f in found[r]]}
            if method.per_layer
            else {"all": alignment_error_rate(found[r][0], sure, possible)}
            for r in ROWS
        }
        report["methods"][name] = entry
        if on_update is not None:
            on_update(report)
    return report


# --- the report -----------------------------------------------------------------------------------------------------


def _best(entry: dict, reading: str) -> tuple[dict, int | None]:
    """The entry's scores in ``reading``: aggregated as they are, per-layer at the lowest-AER layer (0-based)."""
    scores = entry["readings"][reading]
    if "all" in scores:
        return scores["all"], None
    layers = scores["layers"]
    best = min(range(len(layers)), key=lambda k: layers[k]["aer"])
    return layers[best], best


def _cell(entry: dict | None, reading: str) -> str:
    if entry is None:
        return "—"
    score, layer = _best(entry, reading)
    return f"{score['aer']:.2f}" + (f" (L{layer + 1})" if layer is not None else "")


def paper_cells(name: str, dataset: str) -> str:
    """The paper's Table 3 AERs of a method on one dataset, ``M1 130M / M1 370M / M2 130M / M2 370M``."""
    ref = PAPER_TABLE3.get(name, {}).get(dataset)
    return " / ".join("—" if v is None else f"{v:.2f}" for v in ref) if ref else "—"


#: the paper's Table 3 rows as it labels them
_PAPER_LABELS = {
    "mamba_lrp": "MambaLRP",
    "alti_logit": "LaTIM (ALTI-Logit)",
    "mamba_attention": "Mamba-Attention (best layer)",
    "mamba_attribution": "Mamba-Attribution (best layer)",
    "l2": "LaTIM (ℓ2) (best layer)",
    "alti": "LaTIM (ALTI) (best layer)",
}


def paper_table3_markdown() -> list[str]:
    """The paper's whole Table 3 (every dataset and checkpoint) as markdown lines, headed as different data."""
    lines = [
        "## The paper's Table 3 (AER; different data and models)",
        "",
        "| Method | " + " | ".join(f"{d}: " + " / ".join(PAPER_MODELS) for d in _PAPER_DATASETS) + " |",
        "| --- |" + " --- |" * len(_PAPER_DATASETS),
    ]
    for name, label in _PAPER_LABELS.items():
        lines.append(f"| {label} | " + " | ".join(paper_cells(name, d) for d in _PAPER_DATASETS) + " |")
    return lines


def table3_markdown(
    title: str,
    methods: dict[str, dict[str, dict]],
    cell: Callable[[dict, str], str],
    monotone: Sequence[str],
    best_layer: str = "Best layer",
) -> list[str]:
    """Table 3's shape as markdown lines: a column per variant and reading, the aggregated methods, then the
    per-layer ones at their best layer, then the model-free diagonal, each row beside the paper's IWSLT17 DE→EN cells.

    ``methods``: ``{variant: {method: entry}}``; ``cell(entry, reading)`` writes one variant's reading of an entry
    (— where a variant lacks the method); ``monotone``: the diagonal's cell per variant; ``best_layer``: how the
    per-layer block is headed.
    """
    variants = list(methods)
    heads = [f"{v} {r}" for v in variants for r in ROWS]
    paper_head = "Paper, IWSLT17 DE→EN, different data (" + " / ".join(PAPER_MODELS) + ")"
    lines = [
        f"## {title}",
        "",
        "| Method | " + " | ".join(heads) + f" | {paper_head} |",
        "| --- |" + " --- |" * (len(heads) + 1),
    ]
    names: list[str] = []
    for table in methods.values():
        names += [n for n in table if n not in names]
    blank = " |" * (len(heads) + 1)

    def row(name: str) -> str:
        entries = [methods[v].get(name) for v in variants]
        label = next(e["label"] for e in entries if e is not None)
        if name == "mamba_attribution":
            label += " (aggregated here; the paper lists it under best layer)"
        cells = [cell(e, r) if e is not None else "—" for e in entries for r in ROWS]
        return f"| {label} | " + " | ".join(cells) + f" | {paper_cells(name, 'IWSLT17 DE→EN')} |"

    def per_layer(name: str) -> bool:
        return any(methods[v].get(name, {}).get("per_layer") for v in variants)

    lines.append("| *Aggregating layers* |" + blank)
    lines += [row(n) for n in names if not per_layer(n)]
    lines.append(f"| *{best_layer} (its number in brackets)* |" + blank)
    lines += [row(n) for n in names if per_layer(n)]
    lines.append("| *No model* |" + blank)
    lines.append("| Monotone diagonal | " + " | ".join(m for m in monotone for _ in ROWS) + " | — |")
    return lines


def render_markdown(suite: dict) -> str:
    """Markdown: Table 3 with ours beside the paper's, every layer, decomposition errors, the paper's whole table.

    ``suite``: ``{"meta": {...}, "models": {variant: evaluate_model(...) report}}``.
    """
    meta = suite.get("meta", {})
    models: dict = suite["models"]
    variants = list(models)
    first = next(iter(models.values()), None)
    lines = [
        f"# Alignment error rate on the synthetic translation task ({meta.get('scale', '?')} scale)",
        "",
        "Lower is better. **Ours and the paper's numbers come from different data**: ours from the synthetic task "
        "of `latim_captum.alignment` (gold links by construction) and models trained on it from scratch; the "
        "paper's from IWSLT17 / GoldAlign with its fine-tuned 130M and 370M checkpoints. They sit side by side for "
        "shape only.",
        "",
        f"- command: `{meta.get('command', '?')}`; evaluated on: {meta.get('device', '?')}",
        *resumed_lines(meta),
    ]
    for variant, report in models.items():
        m = report.get("meta", {})
        acc = report["accuracy"]
        lines.append(
            f"- {variant}: `{m.get('model', '?')}` ({report['n_layers']} layers, conv activation {report['act']}), "
            f"trained on {m.get('train_device') or '?'}, seed {m.get('seed', '?')}, {m.get('steps', '?')} steps; "
            f"held-out accuracy (teacher forcing): token {acc['token_acc']:.4f}, exact match {acc['exact_match']:.4f}"
        )
    if first is not None:
        gold, ex = first["gold"], first["extraction"]
        lines += [
            f"- evaluation: {first['n_samples']} held-out pairs (seed {first['eval_seed']}), {gold['source_words']} "
            f"source and {gold['target_words']} target words, {gold['sure_links']} sure and "
            f"{gold['possible_only_links']} possible-only gold links",
            "- hard alignment: per target word, the argmax over its row's source columns"
            + (" and `<sep>` (a link to `<sep>` is dropped, as Ferrando et al. drop `</s>`)" if ex["sink"] else "")
            + f"; ties: {ex['ties']}; AER pooled over the corpus (Och & Ney 2000)",
            "- readings: **predict** = the row that predicts the target word (S + t, the decoder output; AWO), "
            "**hold** = the row that holds it (S + 1 + t, the decoder input; AWI / Shift-Att)",
        ]
    monotone = [f"{models[v]['baselines']['monotone']['aer']:.2f}" for v in variants]
    lines += ["", *table3_markdown("Table 3", {v: models[v]["methods"] for v in variants}, _cell, monotone)]
    for variant, report in models.items():
        n_layers = report["n_layers"]
        lines += [
            "",
            f"## Every layer, {variant} (AER)",
            "",
            "| Method | rows | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
            "| --- | --- |" + " --- |" * n_layers,
        ]
        for entry in report["methods"].values():
            if entry["per_layer"]:
                for r in ROWS:
                    cells = " | ".join(f"{m['aer']:.2f}" for m in entry["readings"][r]["layers"])
                    lines.append(f"| {entry['label']} | {r} | {cells} |")
        lines += [
            "",
            f"## Decomposition error, {variant}",
            "",
            f"‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer over the tokens of "
            f"{report['reconstruction_error_samples']} pairs (— : the strategy refuses this model's activation).",
            "",
            "| Strategy | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
            "| --- |" + " --- |" * n_layers,
        ]
        for act, errs in report["reconstruction_error"].items():
            cells = " | ".join(f"{e:.2e}" for e in errs) if errs is not None else " | ".join(["—"] * n_layers)
            lines.append(f"| {act} | {cells} |")
    lines += ["", *paper_table3_markdown()]
    return "\n".join(lines) + "\n"


def write_report(suite: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    return _write_report(suite, out_dir, stem, render_markdown)
