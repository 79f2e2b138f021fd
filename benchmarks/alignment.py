"""Alignment error rate on the synthetic translation task (LaTIM Table 3 analogue): same as ``latim bench alignment``.

Usage::

    python benchmarks/alignment.py --variant mamba1 mamba2 --scale tiny      # trains tiny models (CPU, minutes)
    python benchmarks/alignment.py --scale paper --device cuda --model runs/align-m1-paper runs/align-m2-paper

Writes ``benchmarks/results/alignment-<scale>.{md,json}`` (``alignment-<variant>-<scale>`` for one model): the
command, device, seeds and accuracy, every method at every layer in both readings of the rows, the paper's IWSLT
numbers beside ours (a different dataset), and the decomposition error per layer and activation strategy.
"""

from __future__ import annotations

import sys

from latim_captum.cli import bench_script_main

if __name__ == "__main__":
    sys.exit(bench_script_main("alignment", sys.argv[1:]))
