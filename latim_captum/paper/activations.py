"""The paper's Table 5 analogue: what the conv activation costs. Models of one task and variant trained with
``hidden_act`` = ``silu``, ``relu`` and ``linear`` (no activation), same recipe and seed, compared on:

- task accuracy (teacher forcing, held-out set);
- decomposition error per layer for every activation strategy (:func:`latim_captum.reconstruction_error`:
  ``silu``, ``identity``, ``taylor1``, ``taylor2``, ``silu_gate``, ``act``, ``act_gate``; the SiLU strategies
  refuse a model without SiLU);
- interpretability of LaTIM (ℓ2) and LaTIM (ALTI-Logit), with the paper's ``f`` (eq 19 with ``f`` := the model's own
  activation: ``silu`` for SiLU, ``act`` for ReLU, ``identity`` for none) and with the model's exact strategy
  (``silu_gate``, our own, for SiLU; ``identity`` for no activation; ``act_gate`` for ReLU): copying faithfulness
  (AUC, higher is better) or alignment error rate (AER, lower is better), rows ``predict``; per-layer methods at
  their best layer. (Reports before 2026-12-05 used ``f = silu`` on every model and had no exact strategy for
  ReLU.)

The paper's question: does an exactly decomposable model give better interpretations at no cost in quality? Its
Table 5 (:data:`PAPER_TABLE5`) answers it for Mamba-2 370M after continued pretraining, on IWSLT17 DE→EN (AER and
COMET): a different model and data; it stands beside ours for shape.

Usage::

    python benchmarks/activations.py --task alignment --variant mamba2 --scale tiny     # trains 3 tiny models
    # the paper's way (App. B.3): the SiLU model, then SiLU + CP, ReLU + CP and no activation + CP from it
    python benchmarks/activations.py --task copy --variant mamba2 --scale tiny --procedure switch
    python benchmarks/activations.py --task copy --scale paper --device cuda --models runs/copy-m2-{silu,relu,linear}

Example:
    >>> from latim_captum.tasks.models import build_model
    >>> methods_for(build_model("mamba1", layers=1, d_model=16, state=4, vocab=8, act="relu"))
    ['l2_act', 'alti_logit_act', 'l2_act_gate', 'alti_logit_act_gate']
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._environment import device_name
from ..maps.options import BACKENDS
from ..tasks.models import HIDDEN_ACTS
from ..tasks.reports import (
    exact_strategy,
    exact_strategy_of,
    load_model_dir,
    model_act,
    paper_strategy_of,
    quiet_transformers,
    variant_of,
    write_report,
)

__all__ = [
    "PAPER_TABLE5",
    "TASKS",
    "add_arguments",
    "evaluate_variant",
    "main",
    "methods_for",
    "paper_table5_markdown",
    "render_markdown",
    "row_label",
    "run_and_save",
    "strategy_errors_markdown",
    "summarize",
]

TASKS: tuple[str, ...] = ("copy", "alignment")

#: the paper's Table 5 (Mamba-2 370M, IWSLT17 DE→EN): decomposition error per group of 16 layers, AER, COMET
PAPER_TABLE5: tuple[dict, ...] = (
    {"activation": "SiLU", "error": (0.21, 0.45, 0.57), "aer": 0.47, "comet": 83.4},
    {"activation": "SiLU + CP", "error": (0.21, 0.43, 0.54), "aer": 0.46, "comet": 83.6},
    {"activation": "ReLU", "error": (0.35, 0.83, 1.07), "aer": 0.51, "comet": 82.8},
    {"activation": "Identity", "error": (0.00, 0.00, 0.00), "aer": 0.46, "comet": 83.3},
)
PAPER_TABLE5_LAYERS: tuple[str, ...] = ("layers 0-16", "16-32", "32-48")


def methods_for(model: nn.Module) -> list[str]:
    """ℓ2 and ALTI-Logit with the paper's ``f`` (``silu`` for SiLU models, the model's own activation ``act``
    otherwise), then with the model's exact strategy."""
    exact = exact_strategy(model)
    paper = "" if paper_strategy_of(model_act(model)) == "silu" else "_act"  # the registry's "l2" is silu's
    return [f"l2{paper}", f"alti_logit{paper}", f"l2_{exact}", f"alti_logit_{exact}"]


def evaluate_variant(model: nn.Module, task_name: str, meta: dict, **kwargs) -> dict:
    """The task's evaluation (:func:`latim_captum.copying.evaluate.evaluate_model` or
    :func:`latim_captum.alignment.evaluate.evaluate_model`) with :func:`methods_for` the model."""
    if task_name == "copy":
        from ..copying.data import CopyTask
        from ..copying.evaluate import evaluate_model

        task = CopyTask(**meta["task"])
    elif task_name == "alignment":
        from ..alignment.data import AlignmentTask
        from ..alignment.evaluate import evaluate_model

        task = AlignmentTask(**meta["task"])
    else:
        raise ValueError(f"unknown task {task_name!r}; choose one of {', '.join(TASKS)}")
    kwargs.setdefault("n_samples", meta.get("n_eval", 128))
    return evaluate_model(model, task, seed=int(meta.get("seed", 0)), methods=methods_for(model), **kwargs)


def _headline(entry: dict, task_name: str) -> dict:
    """One number per method: copy AUC / alignment AER, rows ``predict``, per-layer methods at their best layer."""
    if task_name == "copy":
        scores = entry["by_rows"]["predict"] if "by_rows" in entry else entry
        key, better = "auc", max
    else:
        scores = entry["readings"]["predict"]
        key, better = "aer", min
    if "all" in scores:
        return {"value": scores["all"][key], "layer": None}
    layers = scores["layers"]
    best = better(range(len(layers)), key=lambda k: layers[k][key])
    return {"value": layers[best][key], "layer": best}


def summarize(report: dict, task_name: str) -> dict:
    """The Table 5 row of one model's report."""
    exact = exact_strategy_of(report["act"])  # the names methods_for knows too (swish, none, ...)
    methods = {}
    for name, entry in report["methods"].items():
        strategy = "silu" if name in ("l2", "alti_logit") else "act" if name.endswith("_act") else exact
        methods[name] = {"label": entry["label"], "strategy": strategy, **_headline(entry, task_name)}
    return {
        "act": report["act"],
        "accuracy": report["accuracy"],
        "paper_strategy": paper_strategy_of(report["act"]),
        "exact_strategy": exact,
        "reconstruction_error": report["reconstruction_error"],
        "methods": methods,
    }


def _errs(errs: list[float] | None) -> str:
    return " / ".join(f"{e:.2f}" for e in errs) if errs is not None else "—"


def _value(m: dict | None) -> str:
    if m is None:
        return "—"
    return f"{m['value']:.2f}" + (f" (L{m['layer'] + 1})" if m["layer"] is not None else "")


def paper_table5_markdown() -> list[str]:
    """The paper's Table 5 as markdown lines, headed as a different model and data."""
    lines = [
        "## The paper's Table 5 (different model and data)",
        "",
        "Mamba-2 370M after continued pretraining on FineWebEdu with the new activation, fine-tuned on IWSLT17 "
        "DE→EN; error per group of 16 layers (f = the model's own activation, identity for Identity), AER (the paper "
        "does not say of which method) and COMET.",
        "",
        "| Activation | error " + " | ".join(PAPER_TABLE5_LAYERS) + " | AER | COMET |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in PAPER_TABLE5:
        errs = " | ".join(f"{e:.2f}" for e in r["error"])
        lines.append(f"| {r['activation']} | {errs} | {r['aer']:.2f} | {r['comet']:.1f} |")
    return lines


def strategy_errors_markdown(
    title: str, errors: dict[str, dict[str, Any]], cell: Callable[[Any | None], str]
) -> list[str]:
    """The table of every strategy's decomposition error, a row per conv activation: ``errors[act][strategy]`` is
    that model's per-layer error (None where the strategy refuses the activation), written by ``cell``."""
    strategies: list[str] = []
    for by_strategy in errors.values():
        strategies += [k for k in by_strategy if k not in strategies]
    lines = [
        f"## {title}",
        "",
        "| Conv activation | " + " | ".join(strategies) + " |",
        "| --- |" + " --- |" * len(strategies),
    ]
    for act, by_strategy in errors.items():
        lines.append(f"| {act} | " + " | ".join(cell(by_strategy.get(k)) for k in strategies) + " |")
    return lines


def row_label(act: str, run_meta: dict) -> str:
    """A report row's name: the conv activation, ``+ CP`` for a model continued from a SiLU one while its activation
    switched (:mod:`latim_captum.tasks.switch`; the paper's "SiLU + CP" row is the switch to SiLU itself)."""
    return f"{act} + CP" if run_meta.get("switch") else act


def render_markdown(suite: dict) -> str:
    """Markdown: ours (one row per trained activation), every strategy's error, and the paper's Table 5."""
    meta = suite["meta"]
    task_name = meta["task"]
    metric = "AUC, higher is better" if task_name == "copy" else "AER, lower is better"
    rows = suite["models"]
    if not rows:
        raise ValueError("no model in the report")
    lines = [
        f"# What the activation costs (paper Table 5 analogue) — {task_name} task, {meta.get('variant')} "
        f"({meta.get('scale', '?')} scale)",
        "",
        f"- command: `{meta.get('command', '?')}`; evaluated on: {meta.get('device', '?')}",
        ("- same seed for every model; the `+ CP` rows continue a SiLU model while its activation switches (the "
         "paper's continued pretraining, App. B.3), for the steps named below"
         if any(row["meta"].get("switch") for row in rows) else "- same recipe and seed for every model")
        if meta.get("same_seed", True)
        else "- **the models were trained with different seeds**: differences mix activation and seed",
    ]
    for row in rows:
        m = row["meta"]
        switch = m.get("switch")
        how = f", continued from `{switch['from']}` switching SiLU → {switch['to']}" if switch else ""
        lines.append(
            f"- {row['summary'].get('label', row['summary']['act'])}: `{m.get('model', '?')}`, trained on "
            f"{m.get('train_device') or '?'}, seed {m.get('seed', '?')}, {m.get('steps', '?')} steps{how}"
        )
    lines += [
        f"- interpretability: {metric}; rows that predict the token (`predict`); ℓ2 at its best layer (number in "
        "brackets), ALTI-Logit aggregated. The paper's f: eq 19 with f := the model's own activation (`silu`, `act` "
        "for ReLU, the same as `identity` for none); exact f: `silu_gate` (ours) for SiLU, `identity` for no "
        "activation, `act_gate` (ours) for ReLU",
        "- decomposition error: ‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ per layer (layer 1 / layer 2 / ...)",
        "",
        "## Ours",
        "",
        "| Conv activation | accuracy (token / exact) | error per layer, the paper's f | exact f: error per layer | "
        "ℓ2, the paper's f | ℓ2, exact f | ALTI-Logit, the paper's f | ALTI-Logit, exact f |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        s = row["summary"]
        exact = s["exact_strategy"]
        paper = s.get("paper_strategy", "silu")  # reports older than the field used f = silu everywhere
        suffix = "" if paper == "silu" else f"_{paper}"
        errors = s["reconstruction_error"]
        exact_err = f"{exact}: {_errs(errors.get(exact))}" if exact else "none"
        ms = s["methods"]
        lines.append(
            f"| {s.get('label', s['act'])} | {s['accuracy']['token_acc']:.3f} / {s['accuracy']['exact_match']:.3f} | "
            f"{paper}: {_errs(errors.get(paper))} | {exact_err} | {_value(ms.get(f'l2{suffix}'))} | "
            f"{_value(ms.get(f'l2_{exact}')) if exact else '—'} | {_value(ms.get(f'alti_logit{suffix}'))} | "
            f"{_value(ms.get(f'alti_logit_{exact}')) if exact else '—'} |"
        )
    errors = {r["summary"].get("label", r["summary"]["act"]): r["summary"]["reconstruction_error"] for r in rows}
    lines += ["", *strategy_errors_markdown("Decomposition error of every strategy (per layer)", errors, _errs)]
    lines += ["", *paper_table5_markdown()]
    return "\n".join(lines) + "\n"


#: how a tiny run makes its models: ``scratch``, each activation trained from scratch with one recipe; ``switch``,
#: the paper's App. B.3: the SiLU model, then that model continued while its activation switches to each of ``--acts``
#: (``silu``: the paper's SiLU + CP control)
PROCEDURES: tuple[str, ...] = ("scratch", "switch")


def _train_tiny(task_name: str, variant: str, flags: list[str], out: Path, quiet: bool) -> None:
    if task_name == "copy":
        from ..copying.train import resolve_args, train
    else:
        from ..alignment.train import resolve_args, train
    train(resolve_args(["--variant", variant, *flags, "--out", str(out), *(["--quiet"] if quiet else [])]))


def _tiny_models(args: argparse.Namespace) -> list[Path]:
    """Train a tiny run's models (see :data:`PROCEDURES`) under ``--train-out``; their folders, one per report row."""
    seed, steps = args.seed or 0, args.train_steps
    stem = Path(args.train_out) / f"{args.task}-{args.variant}-tiny"
    recipe = ["--scale", "tiny", "--seed", str(seed), *(["--steps", str(steps)] if steps else [])]
    if args.procedure == "scratch":
        paths = [Path(f"{stem}-{act}") for act in args.acts]
        for act, path in zip(args.acts, paths):
            _train_tiny(args.task, args.variant, [*recipe, "--act", act], path, args.quiet)
        return paths
    source = Path(f"{stem}-silu-s{seed}")
    _train_tiny(args.task, args.variant, recipe, source, args.quiet)
    paths = [Path(f"{stem}-{act}-cp-s{seed}") for act in args.acts]
    # the source's task, data, seed and model; the switch's own recipe (SWITCH_RECIPES["tiny"]), or --switch-steps
    # steps with the recipe's shares of warm-up (5 %) and decay (10 %)
    n = args.switch_steps
    shorter = ["--steps", str(n), "--warmup", str(max(1, n // 20)), "--decay", str(max(1, n // 10))] if n else []
    for act, path in zip(args.acts, paths):
        _train_tiny(args.task, args.variant, ["--switch-from", str(source), "--act", act, *shorter], path, args.quiet)
    return [source, *paths]


#: the command a report of ``benchmarks/activations.py`` names (``latim bench activations`` sets its own)
SCRIPT = "python benchmarks/activations.py"


def add_arguments(p: argparse.ArgumentParser, out_default: str = "benchmarks/results") -> None:
    """The study's options on ``p``: this script's parser, and ``latim bench activations``'s (whose reports name
    that command and go to ``./latim-bench`` by default)."""
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--variant", choices=["mamba1", "mamba2"], default=None, help="needed unless --models")
    p.add_argument("--scale", choices=["tiny", "paper"], default="tiny", help="tiny: train the models in the run")
    p.add_argument("--models", nargs="+", default=None, help="trained folders, one per activation")
    p.add_argument("--acts", nargs="+", choices=HIDDEN_ACTS, default=list(HIDDEN_ACTS), help="activations to train")
    p.add_argument("--procedure", choices=PROCEDURES, default="scratch",
                   help="tiny scale: scratch, each activation trained from scratch; switch, the paper's App. B.3: "
                   "the SiLU model, then continued while its activation switches to each of --acts (silu: the "
                   "SiLU + CP control)")  # fmt: skip
    p.add_argument("--train-out", default="runs", help="tiny scale: where the trained models go")
    p.add_argument("--train-steps", type=int, default=None,
                   help="tiny scale: training steps (default: preset; with --procedure switch, the SiLU model's)")
    p.add_argument("--switch-steps", type=int, default=None,
                   help="--procedure switch: each switch's steps (default: the trainers' tiny switch recipe)")
    p.add_argument("--seed", type=int, default=None, help="tiny scale: the one training seed of every variant (0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-samples", type=int, default=None, help="held-out samples (default: the model's n_eval)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-sequences", type=int, default=None)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="LaTIM's path (same maps)")
    p.add_argument("--out", default=out_default, help="folder for the .md and .json")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def rerun_command(args: argparse.Namespace, paths: list[Path], variant: str) -> str:
    """The command that reruns this study: every option that changes its numbers (a tiny run's seed, steps and
    activations; the evaluation's sample counts), not only the task and the models."""
    parts = [getattr(args, "program", SCRIPT), f"--task {args.task}", f"--scale {args.scale}"]
    parts.append(f"--device {args.device}")
    if args.models:
        parts.append(f"--models {' '.join(map(str, paths))}")
    else:
        parts.append(f"--variant {variant}")
        if args.scale == "tiny":
            parts += [f"--seed {args.seed or 0}", *([f"--train-steps {args.train_steps}"] if args.train_steps else [])]
            parts += [f"--procedure {args.procedure}"] if args.procedure != "scratch" else []
            parts += [f"--switch-steps {args.switch_steps}"] if args.switch_steps else []
        if list(args.acts) != list(HIDDEN_ACTS):
            parts.append(f"--acts {' '.join(args.acts)}")
    parts += [f"--n-samples {args.n_samples}"] if args.n_samples else []  # --batch, --max-sequences: memory only
    return " ".join(parts)


def run(args: argparse.Namespace) -> dict:
    """Train (tiny scale without ``--models``), evaluate every model and write the report; returns the suite."""
    quiet_transformers()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda given but CUDA is not available")
    trains = not args.models and args.scale == "tiny"
    ineffective = [f for f, v in (("--seed", args.seed), ("--train-steps", args.train_steps)) if v is not None]
    ineffective += ["--procedure switch"] if args.procedure != "scratch" else []
    if args.switch_steps is not None and args.procedure != "switch":
        raise ValueError("--switch-steps: the steps of --procedure switch's continued runs; give that procedure")
    if args.switch_steps is not None and args.switch_steps < 2:
        raise ValueError(f"--switch-steps {args.switch_steps}: a switch needs at least 2 steps (the last on the new "
                         "activation alone)")  # fmt: skip
    if ineffective and not trains:
        raise ValueError(f"{' and '.join(ineffective)}: they choose the models trained in the run (tiny scale, no "
                         "--models)")  # fmt: skip
    if args.models:
        paths = [Path(m) for m in args.models]
    elif args.variant is None:
        raise ValueError("give --variant or --models")
    elif args.scale == "tiny":
        paths = _tiny_models(args)
    else:
        paths = [Path("runs") / f"{args.task}-{args.variant}-paper-{act}" for act in args.acts]
    loaded = [load_model_dir(p) for p in paths]
    variants = {variant_of(m) for m, _, _ in loaded}
    labels = [row_label(model_act(m), run_meta) for m, _, run_meta in loaded]
    if len(variants) > 1:
        raise ValueError(f"the models mix variants ({', '.join(sorted(variants))}): one variant per report")
    if len(set(labels)) < len(labels):
        raise ValueError(f"two models share a conv activation ({', '.join(labels)}): one model per activation "
                         "(and per continued-training switch)")  # fmt: skip
    variant = variants.pop()
    device = device_name(args.device)
    command = rerun_command(args, paths, variant)
    same_seed = len({m.get("seed") for _, _, m in loaded}) == 1
    meta = {"task": args.task, "variant": variant, "scale": args.scale, "device": device, "command": command}
    meta["same_seed"] = same_seed
    suite: dict = {"meta": meta, "models": []}
    stem = f"activations-{args.task}-{variant}-{args.scale}" + ("-cp" if trains and args.procedure == "switch" else "")
    for path, label, (model, _, run_meta) in zip(paths, labels, loaded):
        kwargs = dict(batch=args.batch, max_sequences=args.max_sequences, backend=args.backend, quiet=args.quiet)
        if args.n_samples:
            kwargs["n_samples"] = args.n_samples
        report = evaluate_variant(model.to(args.device), args.task, run_meta, **kwargs)
        keep = ("seed", "steps", "act", "switch")
        row_meta = {"model": str(path), "train_device": run_meta.get("device"), **{k: run_meta.get(k) for k in keep}}
        summary = {**summarize(report, args.task), "label": label}
        suite["models"].append({"meta": row_meta, "summary": summary, "report": report})
        write_report(suite, args.out, stem, render_markdown)
    json_path, md_path = write_report(suite, args.out, stem, render_markdown)
    print(render_markdown(suite))
    print(f"wrote {json_path} and {md_path}")
    return suite


def run_and_save(args: argparse.Namespace) -> int:
    """``latim bench activations``: :func:`run` (which writes the report); failures reach the CLI's one-line error."""
    run(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError, OSError, KeyError) as err:
        print(f"activations: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
