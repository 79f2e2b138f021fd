"""Which part of ALTI-Logit an activation strategy moves: the layers' logit terms Δ or the rollout R below them.

ALTI-Logit (eq 8) is ``C = diag(u · x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}``: each layer's logit terms
``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i`` carried to the input tokens by the ALTI rollout ``R^{(l-1)}`` of the layers
below. Both are built from the contribution vectors ``T^{(l)}_i(x_k)``, so both depend on the activation strategy
``f`` (eq 19). This script computes, on trained copy models, ALTI-Logit with Δ from one strategy and R from another
(the paper's ``silu`` and the exact ``silu_gate``, all four pairings) and scores each map on the copy task (Table 2's
AUC / AP / R@K, both readings of the rows), aggregated and per layer (``Δ^{(l)} R^{(l-1)}``). A pairing that uses
one strategy throughout is checked against :func:`latim_captum.maps.all_layers.alti_logit` before it is scored.
Then one layer at a time: one strategy throughout but for that layer's ALTI map in R, from the other (both ways),
which says whether one rollout step carries the difference; and ``silu``'s decomposition error per layer.

Writes ``<stem>.{md,json}`` under ``--out``.

Usage (repository root, models from ``gpu_checks.sh train-eval``)::

    python benchmarks/alti_logit_parts.py --model gpu-models/copy-mamba2-paper-silu-s{0,1,2} --samples 32 \\
        --out benchmarks/results --stem alti-logit-parts-copy-mamba2-paper-cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import latim_captum
from latim_captum.api import reconstruction_error_terms
from latim_captum.copying.data import CopyTask
from latim_captum.copying.metrics import ROWS, faithfulness
from latim_captum.methods import next_token_targets
from latim_captum.paper.alti_logit_parts import STRATEGIES, aggregate, check_same_path, layer_parts, terms, write_study
from latim_captum.tasks.reports import load_model_dir, variant_of

#: (strategy of Δ, strategy of R): the paper's, the exact one, and the two mixtures
PAIRINGS = (("silu", "silu"), ("silu_gate", "silu_gate"), ("silu", "silu_gate"), ("silu_gate", "silu"))


def pairing_name(pair: tuple[str, str]) -> str:
    return f"Δ {pair[0]}, R {pair[1]}"


def swapped_rollout(parts: dict, layer: int, base: str, swap: str) -> torch.Tensor:
    """``[B, L, N, N]`` ALTI maps from strategy ``base`` but for layer ``layer``'s (0-based), from ``swap``."""
    maps = parts["alti"][base].clone()
    maps[:, layer] = parts["alti"][swap][:, layer]
    return maps


#: the one-layer swaps: (key in the report, strategy of Δ and of the other layers' ALTI maps, strategy of the swapped
#: layer's map): does one layer's rollout step carry the paper's strategy's loss, and does mending it alone recover it
SWAPS = (("one_layer_silu_rollout", "silu_gate", "silu"), ("one_layer_exact_rollout", "silu", "silu_gate"))


def study_model(path: Path, n_samples: int, batch: int) -> dict:
    model, _, meta = load_model_dir(path)
    variant = variant_of(model)  # before any work: HF Mamba / Mamba-2 copy models only
    task = CopyTask(**meta["task"]) if "task" in meta else CopyTask()
    seed = meta.get("seed", 0)
    ids = task.sample(max(n_samples, 128), seed + 1)[:n_samples]  # the copying report's held-out strings
    chunks: list[dict] = []
    err2 = norm2 = 0.0
    for start in range(0, n_samples, batch):
        part_ids = ids[start : start + batch]
        tr = latim_captum.trace(model, part_ids)
        targets = next_token_targets(part_ids)
        got = layer_parts(tr, targets)
        check_same_path(tr, targets, got)
        chunks.append(got)
        e2, n2 = reconstruction_error_terms(tr, activation="silu")
        err2, norm2 = err2 + e2, norm2 + n2
        print(f"{path.name}: {min(start + batch, n_samples)}/{n_samples}", file=sys.stderr, flush=True)
    parts = {
        "direct": torch.cat([c["direct"] for c in chunks]),
        **{m: {act: torch.cat([c[m][act] for c in chunks]) for act in STRATEGIES} for m in ("logit", "alti")},
    }
    n_layers = parts["logit"]["silu"].shape[1]

    def scored(maps: torch.Tensor) -> dict:
        return {r: faithfulness(maps, task.length, rows=r) for r in ROWS}

    result: dict = {"model": str(path), "variant": variant, "seed": seed, "steps": meta.get("steps"),
                    "n_samples": n_samples, "pairings": [], **{key: [] for key, _, _ in SWAPS},
                    "silu_decomposition_error": (err2 / norm2).sqrt().tolist()}  # fmt: skip
    for d_act, r_act in PAIRINGS:
        layer_terms = terms(parts["logit"][d_act], parts["alti"][r_act])
        result["pairings"].append({
            "delta": d_act, "rollout": r_act,
            "aggregate": scored(aggregate(parts["direct"], layer_terms)),
            "layers": [scored(layer_terms[:, layer]) for layer in range(n_layers)],
        })  # fmt: skip
    # the same logit terms without the rollout (each layer's inputs read as the tokens at their positions): not eq 8,
    # it says how much of the copy a layer's terms hold before R carries them to the input tokens
    result["no_rollout"] = {
        act: {
            "aggregate": scored(aggregate(parts["direct"], parts["logit"][act])),
            "layers": [scored(parts["logit"][act][:, layer]) for layer in range(n_layers)],
        }
        for act in STRATEGIES
    }
    for key, base, swap in SWAPS:
        for layer in range(n_layers - 1):  # the top layer's ALTI map is read by no term
            layer_terms = terms(parts["logit"][base], swapped_rollout(parts, layer, base, swap))
            result[key].append({"layer": layer + 1, **scored(aggregate(parts["direct"], layer_terms))})
    return result


def _cell(m: dict) -> str:
    return f"{m['auc']:.2f} / {m['ap']:.2f} / {m['recall_at_k']:.2f}"


def render(report: dict) -> str:
    lines = [
        "# ALTI-Logit's parts under two activation strategies (copy task)",
        "",
        f"- command: `{report['command']}`",
        f"- device: {report['device']}; {report['models'][0]['n_samples']} held-out strings per model (the first of "
        "the copying report's)",
        "- Δ: each layer's logit terms `T_i(x_k) · u_i`; R: the ALTI rollout of the layers below; a pairing takes Δ "
        "from one strategy and R from the other. Cells: AUC / AP / R@K",
        "",
    ]
    for model in report["models"]:
        lines += [f"## {model['model']} ({model['variant']}, seed {model['seed']}, {model['steps']} steps)", ""]
        lines += ["| Pairing | aggregated, predict rows | aggregated, hold rows |", "| --- | --- | --- |"]
        for p in model["pairings"]:
            name = pairing_name((p["delta"], p["rollout"]))
            lines.append(f"| {name} | {_cell(p['aggregate']['predict'])} | {_cell(p['aggregate']['hold'])} |")
        n_layers = len(model["pairings"][0]["layers"])
        lines += ["", "Per-layer terms Δ^(l) R^(l-1), AUC on the predict rows:", ""]
        lines.append("| Pairing | " + " | ".join(f"layer {i + 1}" for i in range(n_layers)) + " |")
        lines.append("| --- |" + " --- |" * n_layers)
        for p in model["pairings"]:
            cells = " | ".join(f"{m['predict']['auc']:.2f}" for m in p["layers"])
            lines.append(f"| {pairing_name((p['delta'], p['rollout']))} | {cells} |")
        lines += ["", "Without the rollout: Δ^(l) alone per layer, and `diag(u·x⁰) + Σ_l Δ^(l)` aggregated (not eq "
                  "8; AUC on the predict rows, aggregated predict / hold):", ""]  # fmt: skip
        lines.append("| Δ from | aggregated | " + " | ".join(f"layer {i + 1}" for i in range(n_layers)) + " |")
        lines.append("| --- | --- |" + " --- |" * n_layers)
        for act, got in model["no_rollout"].items():
            agg = f"{got['aggregate']['predict']['auc']:.2f} / {got['aggregate']['hold']['auc']:.2f}"
            cells = " | ".join(f"{m['predict']['auc']:.2f}" for m in got["layers"])
            lines.append(f"| `{act}` | {agg} | {cells} |")
        for key, base, swap in SWAPS:
            swaps = model[key]
            lines += ["", f"Δ and R from `{base}` but for one layer's ALTI map in R, from `{swap}` (aggregated; AUC "
                      "predict / hold):", ""]  # fmt: skip
            lines.append("| " + " | ".join(f"layer {s['layer']}" for s in swaps) + " |")
            lines.append("|" + " --- |" * len(swaps))
            cells = " | ".join(f"{s['predict']['auc']:.2f} / {s['hold']['auc']:.2f}" for s in swaps)
            lines.append(f"| {cells} |")
        errors = ", ".join(f"{e:.2f}" for e in model["silu_decomposition_error"])
        lines += ["", f"`silu`'s decomposition error, layers 1 to {n_layers} (Table 5's metric, these strings): "
                  f"{errors}", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="trained copy model folders")
    parser.add_argument("--samples", type=int, default=32, help="held-out strings per model (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="strings per trace")
    parser.add_argument("--out", default="latim-bench", help="folder for the .md and .json")
    parser.add_argument("--stem", default="alti-logit-parts", help="file name stem")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.batch < 1:
        parser.error("--samples and --batch must be positive")
    with torch.no_grad():  # not set_grad_enabled(False): main() may run inside another program (the tests)
        models = [study_model(Path(p), args.samples, args.batch) for p in args.model]
    js, md = write_study(models, "benchmarks/alti_logit_parts.py", argv, args, render)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
