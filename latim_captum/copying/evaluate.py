"""Evaluate a trained copy model: copy accuracy, Table 2 faithfulness of every method, Table 5 decomposition error.

Faithfulness is computed on the evaluation samples (``CopyTask.sample(n_eval, seed + 1)``, the set held out in
training) for every registered method (:mod:`latim_captum.methods`): per-layer methods at every layer, aggregated
methods once; rows ``L..2L-1`` against source columns ``0..L-1`` (see :mod:`.metrics`). The paper reads Mamba-1 at
layer 4 and Mamba-2 at layer 3 (1-based); we report those, the best layer (highest AUC) and all layers.

Example:
    >>> from latim_captum.models import load_copy_model
    >>> model, tok = load_copy_model("mamba2")                                  # doctest: +SKIP
    >>> report = evaluate_model(model, CopyTask(10, 16), n_samples=8, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from .data import CopyTask
from .metrics import faithfulness
from .train import evaluate_copy

__all__ = ["PAPER_LAYER", "PAPER_TABLE2", "evaluate_model", "load_model_dir", "render_markdown", "write_report"]

# 0-based layer the paper reads its copy maps at (§4.1 footnote 6: layer 4 for Mamba-1, layer 3 for Mamba-2)
PAPER_LAYER = {"mamba1": 3, "mamba2": 2}

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


def variant_of(model: nn.Module) -> str:
    """``"mamba1"`` or ``"mamba2"`` from the HF model class."""
    name = type(model).__name__
    if name.startswith("Mamba2"):
        return "mamba2"
    if "Mamba" in name:
        return "mamba1"
    raise TypeError(f"copy evaluation supports HF Mamba / Mamba-2 models, got {name}")


def load_model_dir(path: str | Path) -> tuple[nn.Module, object, dict]:
    """Load a folder written by ``train.py``: ``(model in float32 eval mode, tokenizer, metrics.json dict)``, safely
    (:func:`latim_captum._loading.load_pretrained`: never the folder's code, safetensors first)."""
    from .._loading import load_pretrained

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no trained model at {path} (config.json missing)")
    model, tok = load_pretrained(path, dtype=torch.float32)
    meta_file = path / "metrics.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return model, tok, meta


def _progress(items, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=quiet, leave=False)


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
    quiet: bool = False,
    on_update: Callable[[dict], None] | None = None,
) -> dict:
    """Accuracy, faithfulness of each method and reconstruction error of a copy model on held-out samples.

    Args:
        model: a trained HF Mamba / Mamba-2 copy model (on its device).
        task: the copy task it was trained on.
        n_samples: evaluation samples (the first ``n_samples`` of ``task.sample(128+, seed + 1)``).
        seed: the training seed (the evaluation set is drawn with ``seed + 1``).
        methods: registry names (default: every available one).
        batch: samples per attribution call.
        max_sequences: replicated sequences per backward pass of the row-replicating methods (default
            :data:`~latim_captum.methods.DEFAULT_MAX_SEQUENCES`; lower it on a CPU).
        backend: LaTIM's path (``"auto"``: fast on CUDA, reference elsewhere; ``"fast"`` on a CPU is much faster).
        on_update: called with the report so far after the reconstruction errors and after every method, so a run
            cut short (a time limit on a lent GPU) still leaves the rows it finished.

    Returns:
        ``{"accuracy": {...}, "methods": {name: {"label", "per_layer", "layers": [{auc, ap, recall_at_k}, ...]
        | "all": {...}}}, "reconstruction_error": {activation: [per layer]}, ...}``.
    """
    from .._validation import check_size
    from ..activations import ACTIVATIONS
    from ..api import reconstruction_error
    from ..methods import DEFAULT_MAX_SEQUENCES, available_methods, get_method

    for name, value in (("n_samples", n_samples), ("batch", batch), ("max_sequences", max_sequences)):
        check_size(name, value)  # 0 samples would give an empty report; batch 0 an endless loop
    variant = variant_of(model)
    n_layers = get_adapter(model).n_layers
    device = next(model.parameters()).device
    ids = task.sample(max(n_samples, 128), seed + 1)[:n_samples]
    err_ids = ids[: min(n_samples, batch)].to(device)
    report: dict = {
        "variant": variant,
        "n_layers": n_layers,
        "paper_layer": PAPER_LAYER[variant] if n_layers > PAPER_LAYER[variant] else None,
        "task": task.to_dict(),
        "n_samples": n_samples,
        "eval_seed": seed + 1,
        "accuracy": evaluate_copy(model, task, ids),
        "methods": {},
        "reconstruction_error": {},
        "reconstruction_error_samples": int(err_ids.shape[0]),
        "backend": backend,
    }
    for act in _progress(list(ACTIVATIONS), "reconstruction error", quiet):
        report["reconstruction_error"][act] = [float(e) for e in reconstruction_error(model, err_ids, activation=act)]
    if on_update is not None:
        on_update(report)
    names = list(methods) if methods is not None else available_methods(demo_only=True)
    cap = DEFAULT_MAX_SEQUENCES if max_sequences is None else max_sequences
    for name in _progress(names, "methods", quiet):
        method = get_method(name)
        t0 = time.time()
        chunks = [
            method(model, ids[s : s + batch].to(device), max_sequences=cap, backend=backend).float().cpu()
            for s in range(0, n_samples, batch)
        ]
        maps = torch.cat(chunks)
        entry: dict = {"label": method.label, "family": method.family, "seconds": time.time() - t0}
        if maps.dim() == 4:
            entry["per_layer"] = True
            entry["layers"] = [faithfulness(maps[:, layer], task.length) for layer in range(maps.shape[1])]
        else:
            entry["per_layer"] = False
            entry["all"] = faithfulness(maps, task.length)
        report["methods"][name] = entry
        if on_update is not None:
            on_update(report)
    return report


def _fmt(m: dict) -> str:
    return f"{m['auc']:.2f} / {m['ap']:.2f} / {m['recall_at_k']:.2f}"


def render_markdown(report: dict) -> str:
    """Markdown tables: Table 2 (ours beside the paper's), all layers, and the Table 5 decomposition error."""
    variant = report["variant"]
    paper = PAPER_TABLE2.get(variant, {})
    pl = report.get("paper_layer")
    meta = report.get("meta", {})
    lines = [
        f"# Copying faithfulness — {variant} ({meta.get('scale', '?')} scale)",
        "",
        f"- model: `{meta.get('model', '?')}`; evaluated on: {meta.get('device', '?')}; "
        f"trained on: {meta.get('train_device') or '?'}, seed {meta.get('seed', '?')}, {meta.get('steps', '?')} steps",
        f"- task: strings of {report['task']['length']} tokens, vocabulary {report['task']['vocab_size']}; "
        f"{report['n_samples']} evaluation samples (seed {report['eval_seed']})",
        f"- copy accuracy (teacher forcing): token {report['accuracy']['token_acc']:.4f}, "
        f"exact match {report['accuracy']['exact_match']:.4f}",
        "- metrics per query row (rows L..2L-1 × source columns 0..L-1, gold = 3 diagonals), averaged over rows "
        "and samples: AUC / AP / R@K",
        "",
        "## Table 2",
        "",
        f"| Method | ours @ paper layer{f' ({pl + 1})' if pl is not None else ''} or aggregated | ours @ best layer | "
        "Paper (AUC / AP / R@K) |",
        "| --- | --- | --- | --- |",
    ]
    for name, entry in report["methods"].items():
        ref = paper.get(name)
        ref_s = " / ".join(f"{v:.2f}" for v in ref) if ref else "—"
        if entry["per_layer"]:
            layers = entry["layers"]
            best = max(range(len(layers)), key=lambda k: layers[k]["auc"])
            at_paper = _fmt(layers[pl]) if pl is not None else "—"
            lines.append(f"| {entry['label']} | {at_paper} | {_fmt(layers[best])} (layer {best + 1}) | {ref_s} |")
        else:
            lines.append(f"| {entry['label']} | {_fmt(entry['all'])} (all layers) | — | {ref_s} |")
    n_layers = report["n_layers"]
    lines += [
        "",
        "## Every layer (AUC / AP / R@K)",
        "",
        "| Method | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
        "| --- |" + " --- |" * n_layers,
    ]
    for entry in report["methods"].values():
        if entry["per_layer"]:
            lines.append(f"| {entry['label']} | " + " | ".join(_fmt(m) for m in entry["layers"]) + " |")
    lines += [
        "",
        "## Decomposition error (paper Table 5 metric)",
        "",
        f"Relative error ‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer, on "
        f"{report['reconstruction_error_samples']} samples.",
        "",
        "| Activation | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
        "| --- |" + " --- |" * n_layers,
    ]
    for act, errs in report["reconstruction_error"].items():
        lines.append(f"| {act} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
