"""What the task benchmarks share (:mod:`latim_captum.copying`, :mod:`latim_captum.alignment`).

- :mod:`.models`: the HF Mamba / Mamba-2 models from configs, with the conv activation as an option
  (``silu``/``relu``/``linear``), and the checks that the CUDA kernels train the model the config describes;
- :mod:`.training`: AdamW, the warm-up schedules, the step loop and the saved run folder;
- :mod:`.reports`: loading a run folder, method names (registry + LaTIM measures under any strategy), decomposition
  errors per strategy, writing ``.md`` + ``.json`` reports.
"""
