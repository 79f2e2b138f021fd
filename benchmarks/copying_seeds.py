"""Table 2 over training seeds: mean ± std per method, per layer and best layer, from copying reports (one per seed).

Usage::

    python benchmarks/copying_seeds.py results/copying-mamba1-paper-seed0.json results/copying-mamba1-paper-seed1.json

Writes ``benchmarks/results/copying-<variant>-<scale>-seeds.{md,json}`` (see :mod:`latim_captum.paper.seeds`).
"""

from __future__ import annotations

import sys

from latim_captum.paper.seeds import main

if __name__ == "__main__":
    sys.exit(main())
