"""Long-context retrieval study (LaTIM §4.3, Tables 4 and 6, Figure 3): same as ``latim bench retrieval``.

Usage::

    python benchmarks/retrieval.py --variant mamba1 mamba2 --scale tiny      # trains tiny models (CPU, minutes)
    python benchmarks/retrieval.py --scale paper --device cuda --model gpu-models/retrieval-mamba1-paper-s0 \
        gpu-models/retrieval-mamba2-paper-s0

Writes ``benchmarks/results/retrieval-<scale>.{md,json}`` (``retrieval-<variant>-<scale>`` for one model) and three
PNGs (``-shares``, ``-fwe``, ``-long``): passkey accuracy per length and key count beside the paper's Table 6, split
by the gold key's place beside Table 4, what wrong answers spell, FWE accuracy, the share of attribution mass on the
gold key, the first key and the filler for every method (right vs wrong answers), FWE contribution per occurrence
against the planted frequency, and every method's wall time in the same run.
"""

from __future__ import annotations

import sys

from latim_captum.cli import bench_script_main

if __name__ == "__main__":
    sys.exit(bench_script_main("retrieval", sys.argv[1:]))
