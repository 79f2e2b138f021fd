"""Baselines from the LaTIM paper, with one signature: Mamba-Attention, Mamba-Attribution (Ali et al., 2024) and
MambaLRP (Jafari et al., 2024).

Every function is ``fn(model_or_trace, input_ids=None, inputs_embeds=None, *, attention_mask=None, layers=None,
target=None, position=None, ..., dtype=torch.float32) -> Tensor``:

======================  =========================  ==============================================================
function                returns                    needs
======================  =========================  ==============================================================
``mamba_attention``     ``[B, L, N, N]`` per layer  a model or a :class:`~latim_captum.traces.ModelTrace`
``mamba_attribution``   ``[B, N, N]``               the model (gradients)
``mamba_lrp``           ``[B, N, N]``               a Hugging Face Mamba / FalconMamba / Mamba2 model
======================  =========================  ==============================================================

Row i explains the prediction (or the mixing) at position i over input tokens j; entries above the diagonal are 0.
With ``position=p`` only row p is computed and returned (``[B, L, N]`` / ``[B, N]``).

Example:
    >>> from latim_captum.baselines import mamba_lrp
    >>> rel = mamba_lrp(model, ids, position=-1)   # doctest: +SKIP
"""

from .mamba_attention import NORMALIZATIONS, mamba_attention
from .mamba_attribution import GRADIENTS, mamba_attribution
from .mamba_lrp import mamba_lrp

__all__ = ["GRADIENTS", "NORMALIZATIONS", "mamba_attention", "mamba_attribution", "mamba_lrp"]
