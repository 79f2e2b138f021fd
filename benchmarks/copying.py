"""Copying faithfulness benchmark (LaTIM Table 2): same as ``latim bench copying``.

Usage::

    python benchmarks/copying.py --variant mamba2 --scale tiny
    python benchmarks/copying.py --variant mamba1 --scale paper --device cuda --model runs/copy-mamba1-paper

Writes ``benchmarks/results/copying-<variant>-<scale>.{md,json}`` (device, seed, steps, accuracy, every method at
every layer, the paper's numbers beside ours, and the decomposition error per layer and activation strategy).
"""

from __future__ import annotations

import sys

from latim_captum.cli import bench_script_main

if __name__ == "__main__":
    sys.exit(bench_script_main("copying", sys.argv[1:]))
