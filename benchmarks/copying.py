"""Copying faithfulness benchmark (LaTIM Table 2): same as ``latim bench copying``.

Usage::

    python benchmarks/copying.py --variant mamba2 --scale tiny
    python benchmarks/copying.py --variant mamba1 --scale paper --device cuda --model runs/copy-mamba1-paper

Writes ``benchmarks/results/copying-<variant>-<scale>.{md,json}`` (device, seed, steps, accuracy, every method at
every layer, the paper's numbers beside ours, and the decomposition error per layer and activation strategy).
"""

from __future__ import annotations

import sys

from latim_captum.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    # the repository's results folder unless told otherwise (``latim bench copying`` writes ./latim-bench)
    out = [] if any(a == "--out" or a.startswith("--out=") for a in argv) else ["--out", "benchmarks/results"]
    sys.exit(main(["bench", "copying", *argv, *out]))
