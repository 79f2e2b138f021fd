"""Speed benchmark of LaTIM's fast path; see :mod:`latim_captum.bench_speed` (``--quick`` runs on a CPU)."""

import sys

from latim_captum.bench_speed import main

if __name__ == "__main__":
    sys.exit(main())
