"""The Table 3 and Table 5 analogues over training seeds: mean ± std from alignment or activation reports (one per
seed).

Usage::

    python benchmarks/study_seeds.py benchmarks/results/alignment-tiny-cpu-2026-12-05{,-s1,-s2}.json
    python benchmarks/study_seeds.py benchmarks/results/activations-copy-mamba2-tiny-cpu-2026-12-05{,-s1,-s2}.json

Writes ``benchmarks/results/alignment-<scale>-seeds.{md,json}`` or
``activations-<task>-<variant>-<scale>-seeds.{md,json}`` (see :mod:`latim_captum.paper.study_seeds`).
"""

from __future__ import annotations

import sys

from latim_captum.paper.study_seeds import main

if __name__ == "__main__":
    sys.exit(main())
