"""What the conv activation costs (LaTIM Table 5 analogue): accuracy, decomposition error per strategy, and the
faithfulness (copy) or AER (alignment) of ℓ2 and ALTI-Logit for models trained with silu, relu and no activation.

Usage::

    python benchmarks/activations.py --task alignment --variant mamba2 --scale tiny          # trains 3 tiny models
    python benchmarks/activations.py --task copy --scale paper --device cuda --models DIR_SILU DIR_RELU DIR_LINEAR

Writes ``benchmarks/results/activations-<task>-<variant>-<scale>.{md,json}`` (:mod:`latim_captum.paper.activations`).
"""

from __future__ import annotations

import sys

from latim_captum.paper.activations import main

if __name__ == "__main__":
    sys.exit(main())
