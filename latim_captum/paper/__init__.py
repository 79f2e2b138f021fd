"""Reports that reproduce the paper's tables from several runs (docs: "Reproducing the paper").

- :mod:`.seeds`: Table 2 over training seeds (mean ± std of ``latim bench copying`` reports);
- :mod:`.activations`: the Table 5 analogue, what the conv activation costs (models trained with
  ``--act silu|relu|linear``, on the copy and the alignment task).
- :mod:`.alti_logit_parts`: ALTI-Logit (eq 8) taken apart into each layer's logit terms and ALTI maps, for the
  studies of which part makes or loses a task's signal.
"""
