"""Evaluate a trained copy model: copy accuracy, Table 2 faithfulness of every method, Table 5 decomposition error.

Faithfulness is computed on the evaluation samples (``CopyTask.sample(n_eval, seed + 1)``, the set held out in
training) for every registered method (:mod:`latim_captum.methods`): per-layer methods at every layer, aggregated
methods once; query rows against source columns ``0..L-1`` (see :mod:`.metrics`), in both readings of the rows:
``rows`` (default ``"predict"``: rows ``L..2L-1``) fills the main table, the other reading (``"hold"``: rows
``L+1..2L``) a second one. The paper reads Mamba-1 at layer 4 and Mamba-2 at layer 3 (1-based); we report those,
the best layer (highest AUC) and all layers.

Example:
    >>> from latim_captum.models import load_copy_model
    >>> model, tok = load_copy_model("mamba2")                                  # doctest: +SKIP
    >>> report = evaluate_model(model, CopyTask(10, 16), n_samples=8, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..tasks.reports import (
    load_model_dir,
    model_act,
    progress,
    reconstruction_errors,
    resolve_method,
    resume_into,
    resumed_lines,
    variant_of,
)
from ..tasks.reports import write_report as _write_report
from .data import CopyTask
from .metrics import MODEL_FREE, ROWS, faithfulness, model_free_maps
from .train import evaluate_copy

__all__ = [
    "PAPER_LAYER",
    "RESUME_KEYS",
    "PAPER_TABLE2",
    "evaluate_model",
    "load_model_dir",
    "render_markdown",
    "variant_of",
    "write_report",
]

# 0-based layer the paper reads its copy maps at (§4.1 footnote 6: layer 4 for Mamba-1, layer 3 for Mamba-2)
PAPER_LAYER = {"mamba1": 3, "mamba2": 2}
#: what a report to resume must share with the run that resumes it (the weights are the caller's check)
RESUME_KEYS: tuple[str, ...] = ("variant", "n_layers", "task", "n_samples", "eval_seed", "rows", "act")

# Table 2 of the paper: (AUC, AP, R@K)
PAPER_TABLE2: dict[str, dict[str, tuple[float, float, float]]] = {
    "mamba1": {
        "l2": (0.88, 0.41, 0.27),
        "alti": (0.86, 0.47, 0.36),
        "alti_logit": (0.85, 0.44, 0.31),
        "mamba_attention": (0.84, 0.36, 0.22),
        "mamba_attribution": (0.83, 0.31, 0.19),
        "mamba_lrp": (0.40, 0.22, 0.20),
    },
    "mamba2": {
        "l2": (0.98, 0.86, 0.74),
        "alti": (0.85, 0.71, 0.63),
        "alti_logit": (0.87, 0.70, 0.61),
        "mamba_attention": (0.79, 0.49, 0.39),
        "mamba_attribution": (0.79, 0.47, 0.39),
    },
}


def _scores(maps: torch.Tensor, length: int, rows: str) -> dict:
    """``{"layers": [...]}`` for ``[B, L, N, N]`` maps, ``{"all": ...}`` for ``[B, N, N]``."""
    if maps.dim() == 4:
        return {"layers": [faithfulness(maps[:, layer], length, rows=rows) for layer in range(maps.shape[1])]}
    return {"all": faithfulness(maps, length, rows=rows)}


def evaluate_model(
    model: nn.Module,
    task: CopyTask,
    *,
    n_samples: int = 128,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    batch: int = 32,
    max_sequences: int | None = None,
    backend: str = "auto",
    rows: str = "predict",
    quiet: bool = False,
    on_update: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """Accuracy, faithfulness of each method and reconstruction error of a copy model on held-out samples.

    Args:
        model: a trained HF Mamba / Mamba-2 copy model (on its device).
        task: the copy task it was trained on.
        n_samples: evaluation samples (the first ``n_samples`` of ``task.sample(128+, seed + 1)``).
        seed: the training seed (the evaluation set is drawn with ``seed + 1``).
        methods: registry names, or ``<measure>_<activation>`` for a LaTIM measure under another strategy
            (:func:`latim_captum.tasks.reports.resolve_method`; default: the benchmark's methods).
        batch: samples per attribution call.
        max_sequences: replicated sequences per backward pass of the row-replicating methods (default
            :data:`~latim_captum.methods.DEFAULT_MAX_SEQUENCES`; lower it on a CPU).
        backend: LaTIM's path (``"auto"``: the tiles, on every device; ``"ref"``: the readable reference).
        rows: the main reading of the query rows (``"predict"`` or ``"hold"``); both are computed.
        on_update: called with the report so far after the reconstruction errors and after every method, so a run
            cut short (a time limit on a lent GPU) still leaves the rows it finished.
        resume: the report such a cut run left, of *this* model (the caller checks the weights: ``latim bench
            copying --resume`` compares their fingerprints): its accuracy, reconstruction errors and finished
            methods are kept, and only the methods it lacks run. ``ValueError`` when it was computed on other
            samples, rows, task or model shape (:data:`RESUME_KEYS`).

    Returns:
        ``{"accuracy": {...}, "rows": rows, "methods": {name: {"label", "per_layer", "layers": [{auc, ap,
        recall_at_k}, ...] | "all": {...}, "by_rows": {"predict": {"layers" | "all"}, "hold": {...}}}},
        "reconstruction_error": {activation: [per layer] or None where the strategy refuses the model},
        "model_free": {name: {"label", "by_rows"}} (:func:`~latim_captum.copying.metrics.model_free_maps`), ...}``;
        ``layers``/``all`` are the ``rows`` reading.
    """
    from .._validation import check_size
    from ..methods import DEFAULT_MAX_SEQUENCES, available_methods

    if rows not in ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")

    for name, value in (("n_samples", n_samples), ("batch", batch), ("max_sequences", max_sequences)):
        check_size(name, value)  # 0 samples would give an empty report; batch 0 an endless loop
    names = list(methods) if methods is not None else available_methods(demo_only=True)
    resolved = [resolve_method(name) for name in names]  # an unknown name fails before any work or report
    variant = variant_of(model)
    n_layers = get_adapter(model).n_layers
    device = next(model.parameters()).device
    ids = task.sample(max(n_samples, 128), seed + 1)[:n_samples]
    report: dict = {
        "variant": variant,
        "n_layers": n_layers,
        "paper_layer": PAPER_LAYER[variant] if n_layers > PAPER_LAYER[variant] else None,
        "task": task.to_dict(),
        "n_samples": n_samples,
        "eval_seed": seed + 1,
        # a resumed report's: same weights, same samples (measured once, not again)
        "accuracy": resume["accuracy"] if resume is not None else evaluate_copy(model, task, ids),
        "rows": rows,
        "act": model_act(model),
        "methods": {},
        "reconstruction_error": {},
        "reconstruction_error_samples": n_samples,
        "backend": backend,
    }
    free = model_free_maps(ids.cpu(), seed=seed + 1)
    report["model_free"] = {
        name: {"label": label, "by_rows": {r: faithfulness(free[name], task.length, rows=r) for r in ROWS}}
        for name, label in MODEL_FREE.items()
    }
    if not resume_into(report, resume, RESUME_KEYS):
        report["reconstruction_error"] = reconstruction_errors(model, ids.to(device), batch=batch, backend=backend)
    names_todo = [(n, m) for n, m in zip(names, resolved) if n not in report["methods"]]
    if on_update is not None:
        on_update(report)
    cap = DEFAULT_MAX_SEQUENCES if max_sequences is None else max_sequences
    for name, method in progress(names_todo, "methods", quiet):
        t0 = time.time()
        chunks = [
            method(model, ids[s : s + batch].to(device), max_sequences=cap, backend=backend).float().cpu()
            for s in range(0, n_samples, batch)
        ]
        maps = torch.cat(chunks)
        entry: dict = {"label": method.label, "family": method.family, "seconds": time.time() - t0}
        entry["per_layer"] = maps.dim() == 4
        entry["by_rows"] = {r: _scores(maps, task.length, r) for r in ROWS}
        entry.update(entry["by_rows"][rows])
        report["methods"][name] = entry
        if on_update is not None:
            on_update(report)
    return report


def _fmt(m: dict) -> str:
    return f"{m['auc']:.2f} / {m['ap']:.2f} / {m['recall_at_k']:.2f}"


_ROW_SPANS = {"predict": "rows L..2L-1, which predict the copied tokens", "hold": "rows L+1..2L, which hold them"}


def _reading(entry: dict, rows: str) -> dict | None:
    """An entry's scores in one reading of the rows (reports from before ``by_rows`` hold ``predict`` only)."""
    if "by_rows" in entry:
        return entry["by_rows"].get(rows)
    return entry if rows == "predict" else None


def _table2(report: dict, rows: str) -> list[str]:
    paper = PAPER_TABLE2.get(report["variant"], {})
    pl = report.get("paper_layer")
    lines = [
        f"| Method | ours @ paper layer{f' ({pl + 1})' if pl is not None else ''} or aggregated | ours @ best layer | "
        "Paper (AUC / AP / R@K) |",
        "| --- | --- | --- | --- |",
    ]
    for name, entry in report["methods"].items():
        scores = _reading(entry, rows)
        if scores is None:
            continue
        ref = paper.get(name)
        ref_s = " / ".join(f"{v:.2f}" for v in ref) if ref else "—"
        if entry["per_layer"]:
            layers = scores["layers"]
            best = max(range(len(layers)), key=lambda k: layers[k]["auc"])
            at_paper = _fmt(layers[pl]) if pl is not None else "—"
            lines.append(f"| {entry['label']} | {at_paper} | {_fmt(layers[best])} (layer {best + 1}) | {ref_s} |")
        else:
            lines.append(f"| {entry['label']} | {_fmt(scores['all'])} (all layers) | — | {ref_s} |")
    for entry in report.get("model_free", {}).values():  # reports older than the field have none
        lines.append(f"| *{entry['label']}* | {_fmt(entry['by_rows'][rows])} | — | — |")
    return lines


def render_markdown(report: dict) -> str:
    """Markdown tables: Table 2 (ours beside the paper's) in both readings of the rows, all layers, and the Table 5
    decomposition error."""
    variant = report["variant"]
    meta = report.get("meta", {})
    rows = report.get("rows", "predict")
    other = "hold" if rows == "predict" else "predict"
    lines = [
        f"# Copying faithfulness — {variant} ({meta.get('scale', '?')} scale)",
        "",
        *([f"- command: `{meta['command']}`"] if meta.get("command") else []),
        *resumed_lines(meta),
        f"- model: `{meta.get('model', '?')}`; evaluated on: {meta.get('device', '?')}; "
        f"trained on: {meta.get('train_device') or '?'}, seed {meta.get('seed', '?')}, {meta.get('steps', '?')} steps"
        f", conv activation {report.get('act', 'silu')}",
        f"- task: strings of {report['task']['length']} tokens, vocabulary {report['task']['vocab_size']}; "
        f"{report['n_samples']} evaluation samples (seed {report['eval_seed']})",
        f"- copy accuracy (teacher forcing): token {report['accuracy']['token_acc']:.4f}, "
        f"exact match {report['accuracy']['exact_match']:.4f}",
        f"- metrics per query row ({_ROW_SPANS[rows]} × source columns 0..L-1, gold = 3 diagonals), averaged over "
        "rows and samples: AUC / AP / R@K",
        *(
            ["- the rows in italics use no model: a method has to beat them, not 0.5, to show that it finds the copy "
             "(the gold band holds the source twin of each row's own input token)"]
            if report.get("model_free")
            else []
        ),  # fmt: skip
        "",
        "## Table 2",
        "",
        *_table2(report, rows),
    ]
    if any(_reading(e, other) is not None for e in report["methods"].values()):
        lines += ["", f"## Table 2, the other reading of the rows ({_ROW_SPANS[other]})", "", *_table2(report, other)]
    n_layers = report["n_layers"]
    lines += [
        "",
        "## Every layer (AUC / AP / R@K)",
        "",
        "| Method | rows | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
        "| --- | --- |" + " --- |" * n_layers,
    ]
    for entry in report["methods"].values():
        if entry["per_layer"]:
            for reading in (rows, other):
                scores = _reading(entry, reading)
                if scores is not None:
                    cells = " | ".join(_fmt(m) for m in scores["layers"])
                    lines.append(f"| {entry['label']} | {reading} | {cells} |")
    lines += [
        "",
        "## Decomposition error (paper Table 5 metric)",
        "",
        f"Relative error ‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer, on "
        f"{report['reconstruction_error_samples']} samples (— : the strategy refuses this model's activation).",
        "",
        "| Activation | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
        "| --- |" + " --- |" * n_layers,
    ]
    for act, errs in report["reconstruction_error"].items():
        cells = " | ".join(f"{e:.2e}" for e in errs) if errs is not None else " | ".join("—" for _ in range(n_layers))
        lines.append(f"| {act} | {cells} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    return _write_report(report, out_dir, stem, render_markdown)
