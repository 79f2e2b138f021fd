"""Where ALTI-Logit's alignment is made or lost on a translation model: each layer's logit terms, or eq 8's rollout.

ALTI-Logit (eq 8) is ``C = diag(u · x^{(0)}) + Σ_l Δ^{(l)} R^{(l-1)}``: each layer's logit terms
``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i``, read on the layer's own inputs ``x_k``, carried back to the input tokens by
the ALTI rollout ``R^{(l-1)} = P^{(l-1)} ⋯ P^{(1)}`` of the layers below. On trained alignment models this script
scores each part on the Table 3 analogue (AER, the rows that predict each target word, the report's extraction), per
layer:

- ``Δ^{(l)}``: the layer's logit terms alone, without the rollout;
- ``Δ^{(l)} R^{(l-1)}``: eq 8's term of the layer (the method table's ``alti_logit_layers``), and the same with
  ``Δ^{(l)}``'s columns outside the source sentence set to 0: what the rollout makes of the terms on the source words
  alone, without those on ``<sep>`` and the target prefix, which it also carries back to source words;
- ``P^{(l)}``: the layer's ALTI map (``alti``), and ``R^{(l)}``: the rollout up to it;
- the share ``R^{(l)}_{kk}`` a row keeps on its own token (1 where the layers up to l mix nothing), at the source
  rows (where ``Δ^{(l+1)} R^{(l)}`` reads the alignment of the layer above) and at the predicting rows;

and aggregated, eq 8 (checked against :func:`latim_captum.maps.all_layers.alti_logit` before it is scored) beside
``diag(u · x^{(0)}) + Σ_l Δ^{(l)}``, the same terms with no rollout. Each activation strategy of ``--strategies``
builds every part.

Writes ``<stem>.{md,json}`` under ``--out``.

Usage (repository root, models from ``gpu_checks.sh train-eval alignment``)::

    python benchmarks/alignment_alti_logit_parts.py --model gpu-models/alignment-mamba{1,2}-paper-silu-s0 \\
        --out benchmarks/results --stem alignment-alti-logit-parts-paper-cpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import latim_captum
from latim_captum.aggregate import through
from latim_captum.alignment.data import AlignmentBatch, AlignmentTask
from latim_captum.alignment.metrics import alignment_error_rate, batch_alignments, gold_of
from latim_captum.methods import next_token_targets
from latim_captum.paper.alti_logit_parts import aggregate, check_same_path, layer_parts, terms, write_study
from latim_captum.tasks.reports import ACTIVATIONS, load_model_dir, variant_of

#: the per-layer parts, in the report's order: (key, label)
PARTS = (
    ("delta", "Δ^(l), no rollout"),
    ("term", "Δ^(l) R^(l-1), eq 8's term"),
    ("term_source", "Δ^(l) R^(l-1), source columns of Δ only"),
    ("alti", "P^(l), ALTI map"),
    ("rollout", "R^(l), rollout"),
)
#: the aggregated maps: (key, label)
AGGREGATES = (("eq8", "eq 8: diag(u·x⁰) + Σ_l Δ^(l) R^(l-1)"), ("no_rollout", "diag(u·x⁰) + Σ_l Δ^(l), no rollout"))
#: the rows whose self-share of the rollout is reported (:func:`rows_of`)
SHARE_ROWS = ("source", "predict")


def rows_of(batch: AlignmentBatch, k: int, which: str) -> torch.Tensor:
    """Sample ``k``'s source rows ``0..S-1`` (``which="source"``: where eq 8 reads the upper layers' alignment) or
    the rows ``S + t`` (``t < T``) that predict its target words (``"predict"``, the report's reading)."""
    s, t = int(batch.source_lengths[k]), int(batch.target_lengths[k])
    return torch.arange(s) if which == "source" else torch.arange(s, s + t)


def self_shares(rollout: torch.Tensor, batch: AlignmentBatch, which: str) -> list[float]:
    """``R_{ii}`` at every ``which`` row (:func:`rows_of`) of every sample of ``rollout`` (``[B, N, N]``)."""
    out: list[float] = []
    for k in range(len(batch)):
        rows = rows_of(batch, k, which)
        out += rollout[k, rows, rows].tolist()
    return out


def batch_parts(model, part: AlignmentBatch, strategies: Sequence[str]) -> dict:
    """Every part's ``[B, N, N]`` maps of one batch under each strategy, from one trace: ``{act: {"delta": [per
    layer], "term": [...], "term_source": [...], "alti": [...], "rollout": [...], "eq8": map, "no_rollout": map}}``;
    eq 8 is checked against ``alti_logit`` first."""
    ids = part.ids.to(next(model.parameters()).device)
    tr = latim_captum.trace(model, ids)
    targets = next_token_targets(ids)
    parts = layer_parts(tr, targets, strategies)
    check_same_path(tr, targets, parts)
    source = torch.zeros_like(parts["logit"][strategies[0]], dtype=torch.bool)  # [B, L, N, N]: source-word columns
    for k in range(len(part)):
        source[k, ..., : int(part.source_lengths[k])] = True
    out = {}
    for act in strategies:
        deltas, altis = parts["logit"][act], parts["alti"][act]
        layer_terms = terms(deltas, altis)
        rollouts, flow = [], None
        for alti_map in altis.unbind(1):
            flow = through(alti_map, flow)
            rollouts.append(flow)
        out[act] = {
            "delta": deltas.unbind(1), "term": layer_terms.unbind(1),
            "term_source": terms(deltas.masked_fill(~source, 0.0), altis).unbind(1),
            "alti": altis.unbind(1), "rollout": rollouts,
            "eq8": aggregate(parts["direct"], layer_terms), "no_rollout": aggregate(parts["direct"], deltas),
        }  # fmt: skip
    return out


def study_model(path: Path, n_samples: int, batch: int, strategies: list[str]) -> dict:
    model, _, meta = load_model_dir(path)
    variant = variant_of(model)  # before any work: HF Mamba / Mamba-2 task models only
    model.eval()
    task = AlignmentTask(**meta["task"]) if "task" in meta else AlignmentTask()
    seed = int(meta.get("seed", 0))
    data = task.encode(task.pairs(n_samples, seed + 1))  # the Table 3 report's held-out pairs
    sure, possible = gold_of(data)
    n_layers = model.config.num_hidden_layers  # one Mamba mixer per layer (variant_of checked the model)
    found = {act: {key: [[] for _ in range(n_layers)] for key, _ in PARTS} for act in strategies}
    found_all = {act: {key: [] for key, _ in AGGREGATES} for act in strategies}
    shares = {act: {which: [[] for _ in range(n_layers)] for which in SHARE_ROWS} for act in strategies}
    for start in range(0, n_samples, batch):
        part = data.select(list(range(start, min(n_samples, start + batch))))
        for act, got in batch_parts(model, part, strategies).items():
            for key, _ in PARTS:
                for layer, maps in enumerate(got[key]):
                    found[act][key][layer] += batch_alignments(maps, part, rows="predict")
            for key, _ in AGGREGATES:
                found_all[act][key] += batch_alignments(got[key], part, rows="predict")
            for layer, flow in enumerate(got["rollout"]):
                for which in SHARE_ROWS:
                    shares[act][which][layer] += self_shares(flow, part, which)
        print(f"{path.name}: {min(start + batch, n_samples)}/{n_samples}", file=sys.stderr, flush=True)

    def aer(links: list) -> float:
        return alignment_error_rate(links, sure, possible)["aer"]

    return {
        "model": str(path), "variant": variant, "seed": seed, "steps": meta.get("steps"),
        "token_acc": meta.get("eval_token_acc"), "n_samples": n_samples,
        "strategies": {
            act: {
                "layers": {key: [aer(links) for links in found[act][key]] for key, _ in PARTS},
                "rollout_self_share": {w: [sum(s) / len(s) for s in shares[act][w]] for w in SHARE_ROWS},
                "aggregated": {key: aer(found_all[act][key]) for key, _ in AGGREGATES},
            }
            for act in strategies
        },
    }  # fmt: skip


def render(report: dict) -> str:
    lines = [
        "# ALTI-Logit's parts on the alignment task (Table 3 analogue)",
        "",
        f"- command: `{report['command']}`",
        f"- device: {report['device']}; the first {report['models'][0]['n_samples']} held-out pairs of the Table 3 "
        "report (seed + 1); AER (lower is better) on the rows that predict each target word, argmax with the "
        "`<sep>` sink, ties: first",
        "- Δ^(l): layer l's logit terms `T_i(x_k) · u_i` on the layer's inputs; R^(l): the ALTI rollout of layers "
        "1..l; eq 8's term of layer l is Δ^(l) R^(l-1); R_kk: the share a row keeps on its own token (source rows: "
        "where eq 8 reads the alignment of the layer above)",
        "",
    ]
    for model in report["models"]:
        lines += [f"## {model['model']} ({model['variant']}, seed {model['seed']}, {model['steps']} steps)", ""]
        for act, got in model["strategies"].items():
            n_layers = len(got["layers"]["delta"])
            lines += [f"Strategy `{act}`, per layer (AER):", ""]
            lines.append("| Part | " + " | ".join(f"layer {i + 1}" for i in range(n_layers)) + " |")
            lines.append("| --- |" + " --- |" * n_layers)
            for key, label in PARTS:
                lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in got["layers"][key]) + " |")
            for which in SHARE_ROWS:
                shares = " | ".join(f"{v:.3f}" for v in got["rollout_self_share"][which])
                lines.append(f"| R^(l)_kk, mean over {which} rows | {shares} |")
            lines += ["", "| Aggregated | AER |", "| --- | --- |"]
            lines += [f"| {label} | {got['aggregated'][key]:.2f} |" for key, label in AGGREGATES]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="trained alignment model folders")
    parser.add_argument("--samples", type=int, default=256, help="held-out pairs per model (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="pairs per trace")
    parser.add_argument("--strategies", nargs="+", default=["silu", "silu_gate"], choices=ACTIVATIONS,
                        help="activation strategies (default: the paper's and the exact one)")  # fmt: skip
    parser.add_argument("--out", default="latim-bench", help="folder for the .md and .json")
    parser.add_argument("--stem", default="alignment-alti-logit-parts", help="file name stem")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.batch < 1:
        parser.error("--samples and --batch must be positive")
    with torch.no_grad():  # not set_grad_enabled(False): main() may run inside another program (the tests)
        models = [study_model(Path(p), args.samples, args.batch, args.strategies) for p in args.model]
    js, md = write_study(models, "benchmarks/alignment_alti_logit_parts.py", argv, args, render)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
