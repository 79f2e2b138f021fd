"""The Table 3 and Table 5 analogues over training seeds: several alignment reports (``latim bench alignment``) or
activation reports (``benchmarks/activations.py``), one per training seed, as mean ± sample standard deviation.

**Alignment (Table 3).** Per variant: held-out accuracy; per method and reading of the rows (``predict``,
``hold``), the AER of an aggregated method, and for a per-layer method every layer's AER, the **best layer of the
mean** (the layer of lowest mean AER, one layer for every seed: what a user who reads one layer of a recipe gets) and
the **per-seed best** (each seed at its own lowest-AER layer, the most favourable reading; the layers are listed);
the model-free monotone diagonal; the decomposition error per strategy and layer.

**Activations (Table 5).** Per conv activation: accuracy, the decomposition error per strategy and layer, and
LaTIM (ℓ2) / (ALTI-Logit) with the paper's ``f`` and the model's exact strategy, on the rows that predict (copy
AUC, higher is better, or AER, lower is better; per-layer methods at their best layer of the mean).

``std`` is the sample standard deviation (``n − 1``; None for one seed). Reports that disagree on what they
measured (task, scale, variant, activation, layers, held-out size, alignment extraction) or repeat a training seed
or a model folder are refused with the reason.

Usage::

    python benchmarks/study_seeds.py benchmarks/results/alignment-tiny-cpu-2026-12-05{,-s1,-s2}.json

Example:
    >>> layered([[0.9, 0.2], [0.8, 0.4]], better=min)["best_of_mean"]["layer"]
    1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .._environment import command_line
from ..tasks.reports import write_report
from .activation_seeds import aggregate_activations, render_activations_markdown
from .alignment_seeds import aggregate_alignment, render_alignment_markdown
from .seed_tables import MEASURE, layered

__all__ = [
    "aggregate_activations",
    "aggregate_alignment",
    "kind_of",
    "layered",
    "main",
    "render_activations_markdown",
    "render_alignment_markdown",
]


def kind_of(report: dict) -> str:
    """``"alignment"`` (``{"meta", "models": {variant: report}}``), ``"activations"`` (``{"meta": {"task", ...},
    "models": [row, ...]}``) or ``"copying"`` (one model's copying report)."""
    models = report.get("models")
    if isinstance(models, dict):
        return "alignment"
    if isinstance(models, list) and report.get("meta", {}).get("task") in MEASURE:
        return "activations"
    if "methods" in report and "variant" in report:
        return "copying"
    raise ValueError("not an alignment, activation or copying report (no 'models' or 'methods')")


# --- command line ---------------------------------------------------------------------------------------------------

_AGGREGATE = {"alignment": aggregate_alignment, "activations": aggregate_activations}
_RENDER = {"alignment": render_alignment_markdown, "activations": render_activations_markdown}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/study_seeds.py",
        description="Tables 3 and 5 over seeds: mean ± std of alignment or activation reports, one per seed",
    )
    p.add_argument("reports", nargs="+", help="alignment or activation report JSONs of one kind, one per seed")
    p.add_argument("--out", default="benchmarks/results", help="folder for the .md and .json")
    p.add_argument("--stem", default=None, help="file name stem (default <kind>-...-seeds)")
    return p


def _stem(agg: dict) -> str:
    if agg["kind"] == "alignment":
        return f"alignment-{agg.get('scale') or 'unknown'}-seeds"
    return f"activations-{agg['task']}-{agg['variant']}-{agg.get('scale') or 'unknown'}-seeds"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        suites = [json.loads(Path(f).read_text()) for f in args.reports]
        kinds = {kind_of(s) for s in suites}
        if len(kinds) > 1:
            raise ValueError(f"the reports are of different kinds ({', '.join(sorted(kinds))})")
        kind = kinds.pop()
        if kind == "copying":
            raise ValueError("copying reports: use benchmarks/copying_seeds.py (Table 2 over seeds)")
        agg = _AGGREGATE[kind](suites, list(args.reports))
        agg["command"] = command_line("python benchmarks/study_seeds.py", argv)
    except (ValueError, KeyError, TypeError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"study_seeds: error: {type(err).__name__ + ': ' if isinstance(err, KeyError) else ''}{reason}",
              file=sys.stderr)  # fmt: skip
        return 2
    json_path, md_path = write_report(agg, args.out, args.stem or _stem(agg), _RENDER[agg["kind"]])
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
