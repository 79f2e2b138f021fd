"""What an Inseq token-map method explains: its ``attributed_fn``, contrastive targets, and the scale of the scores.

Inseq lets a method explain any step function (``attributed_fn``). A LaTIM map explains one thing:

- target-free maps (ℓp, ALTI, Mamba-Attention) explain no output at all; Inseq warns that such methods are
  output-agnostic (as for its attention methods);
- ALTI-Logit, MambaLRP and Mamba-Attribution explain the **logit** of the generated token, which Inseq's default
  ``probability`` and its ``logit`` select;
- ALTI-Logit also decomposes a **logit difference** exactly (the logit is linear in the unembedding row, so project on
  ``U_target − U_contrast``): that is what Inseq's contrastive functions ``contrast_logits_diff`` and
  ``contrast_prob_diff`` with ``contrast_targets=`` select. At each step the contrast token is read at the *original*
  prefix (one forward pass). Inseq's own contrastive functions read it at the contrast text's prefix once the two
  texts have differed, so at the steps after that a warning says the two readings part.

Any other ``attributed_fn`` is refused with a ``ValueError`` (never silently replaced by the logit).

Example:
    >>> check_attributed_fn("latim", get_step_function("entropy"), uses_target=True, supports_contrast=True)
    Traceback (most recent call last):
    ValueError: latim explains the logit of each generated token ...
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from inseq.attr.feat.attribution_utils import check_attribute_positions
from inseq.attr.step_functions import get_step_function
from inseq.data.batch import slice_batch_from_position
from torch import Tensor

__all__ = [
    "LOGIT_FUNCTIONS",
    "CONTRAST_FUNCTIONS",
    "RAW_SCALES",
    "check_attributed_fn",
    "contrast_ids",
    "is_contrastive",
    "scale_note",
]

#: step functions whose attribution is the generated token's logit (Inseq's default ``probability`` included: its
#: argmax and its sign agree with the logit's, and a logit is what these methods decompose)
LOGIT_FUNCTIONS: tuple[str, ...] = ("logit", "probability")
#: contrastive step functions, explained as the logit difference of target and contrast token
CONTRAST_FUNCTIONS: tuple[str, ...] = ("contrast_logits_diff", "contrast_prob_diff")

#: what each method's raw scores are (Inseq's default aggregation normalises them, as it does for gradient methods)
RAW_SCALES: dict[str, str] = {
    "alti_logit": "logit contributions (each generated token's column sums to its logit minus the offset)",
    "alti_logit_contrast": "logit-difference contributions (each column sums to logit(target) − logit(contrast) "
    "minus the offset)",
    "alti": "ALTI shares, averaged over layers (each layer's column sums to 1)",
    "alti_no_residual": "ALTI shares without the residual, averaged over layers (each layer's column sums to 1)",
    "alti_logit_layers": "logit contributions per layer, averaged over layers (each layer's column sums to its "
    "share of the logit; aggregate('sum') adds the layers)",
    "alti_logit_layers_contrast": "logit-difference contributions per layer (each layer's column sums to its share "
    "of logit(target) − logit(contrast))",
    "l2": "ℓ2 norms of the contribution vectors, averaged over layers",
    "l1": "ℓ1 norms of the contribution vectors, averaged over layers",
    "mamba_attention": "hidden attention, min-max normalised per row, averaged over layers",
    "mamba_attribution": "gradient-weighted attention rollout (each column sums to 1)",
    "mamba_lrp": "LRP relevance (each column sums to the logit minus what the biases absorb)",
}


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", repr(fn))


def is_contrastive(attributed_fn: Any) -> bool:
    """Whether ``attributed_fn`` is one of Inseq's contrastive differences (:data:`CONTRAST_FUNCTIONS`)."""
    return any(attributed_fn is get_step_function(name) for name in CONTRAST_FUNCTIONS)


def check_attributed_fn(method_name: str, attributed_fn: Any, *, uses_target: bool, supports_contrast: bool) -> None:
    """Refuse an ``attributed_fn`` that a method explaining a logit (difference) would not honour.

    Raises:
        ValueError: naming the function and what the method explains instead.
    """
    if not uses_target:
        return  # output-agnostic: Inseq itself warns
    if any(attributed_fn is get_step_function(name) for name in LOGIT_FUNCTIONS):
        return
    if supports_contrast and is_contrastive(attributed_fn):
        return
    also = (
        "; or, with attributed_fn='contrast_prob_diff' / 'contrast_logits_diff' and contrast_targets=..., the logit "
        "difference of target and contrast token"
        if supports_contrast
        else ""
    )
    raise ValueError(
        f"{method_name} explains the logit of each generated token (attributed_fn 'probability', the default, or "
        f"'logit'){also}; attributed_fn={_name(attributed_fn)} is not supported"
    )


def contrast_ids(method: Any, batch: Any, attributed_fn: Any, kwargs: dict[str, Any]) -> Tensor | None:
    """The contrast token of every query position, ``[B, N-1]`` (row i: the token compared with ``ids[:, i+1]``),
    for a contrastive ``attributed_fn``; None otherwise.

    The tokens come from Inseq's own machinery (``format_contrastive_targets`` and, per step, the slice its step
    functions use), so ``contrast_targets_alignments`` work as in Inseq. Steps outside ``[attr_pos_start,
    attr_pos_end)`` keep the target itself (a zero difference: they are not attributed).

    Raises:
        ValueError: no ``contrast_targets``, ``contrast_sources`` (encoder-decoder only), or
            ``contrast_force_inputs=True`` (the contrast would then be read from another forward pass, which one
            decomposition cannot hold).
    """
    if not is_contrastive(attributed_fn):
        return None
    fn_args = dict(kwargs.get("attributed_fn_args") or {})
    name = _name(attributed_fn)
    if not fn_args.get("contrast_targets"):
        raise ValueError(f"attributed_fn={name} needs contrast_targets=..., the contrastive continuation")
    if fn_args.get("contrast_sources"):
        raise ValueError("contrast_sources is for encoder-decoder models; a decoder-only model takes contrast_targets")
    if fn_args.get("contrast_force_inputs"):
        raise ValueError(
            f"{method.method_name} decomposes one forward pass: the contrast token is read at the original prefix "
            "(Inseq's default for an attributed function), so contrast_force_inputs=True is not supported"
        )
    ids = batch.input_ids
    start, end = check_attribute_positions(batch.max_generation_length, kwargs.get("attr_pos_start"),
                                           kwargs.get("attr_pos_end"))  # fmt: skip
    model = method.attribution_model
    sequences = model.formatter.get_text_sequences(model, batch)
    c_batch, alignments, _, _ = method.format_contrastive_targets(
        sequences.targets, batch.target_tokens, fn_args, {}, start, end, kwargs.get("skip_special_tokens", False)
    )
    _warn_on_differing_prefix(method.method_name, c_batch.target_ids, ids, start, end)
    contrast = ids[:, 1:].clone().cpu()
    for step in range(start, end):
        try:
            _, tokens = slice_batch_from_position(c_batch, step, alignments)
        except IndexError as err:
            raise ValueError(f"contrast_targets has no token aligned with generation step {step}") from err
        contrast[:, step - 1] = torch.as_tensor(tokens).reshape(-1).cpu()
    return contrast


def _warn_on_differing_prefix(method_name: str, c_ids: Tensor, ids: Tensor, start: int, end: int) -> None:
    """Warn when an attributed step comes after the contrast text has differed from the attributed one: Inseq's own
    contrastive step functions (its step scores, its gradient methods) read the contrast logit there in a second
    forward pass over the contrast prefix, while one decomposition of the attributed text reads it at the text's own
    prefix, so the two differ at those steps."""
    n = min(c_ids.shape[1], ids.shape[1])
    differs = (c_ids[:, :n].cpu() != ids[:, :n].cpu()).any(0).nonzero().flatten()
    first = int(differs[0]) if differs.numel() else (n if c_ids.shape[1] != ids.shape[1] else None)
    if first is not None and end - 1 > first:
        steps = f"{max(start, first + 1)} to {end - 1}"
        fix = (
            f"end the attribution at attr_pos_end={first + 1} to compare only the step where the two texts part"
            if first >= start
            else "give a contrast text that shares the prompt"
        )
        warnings.warn(
            f"{method_name}: contrast_targets differs from the attributed text at position {first}; at steps "
            f"{steps} Inseq's own contrastive functions read the contrast logit at the contrast text's prefix, "
            "while this map reads it at the attributed text's prefix (one decomposition holds one forward pass), "
            f"so its columns there are not what Inseq's step scores show; {fix}",
            UserWarning,
            stacklevel=2,
        )


def scale_note(method_name: str, raw: str, kwargs: dict[str, Any]) -> str:
    """One line saying what the shown numbers are, for ``show(**kwargs)``."""
    if not kwargs.get("do_aggregation", True):
        return f"{method_name}: scores as stored; raw, they are {raw}"
    if kwargs.get("rescale"):
        return f"{method_name}: {raw}, rescaled so that the largest |score| is 1"
    if kwargs.get("normalize") is False:
        return f"{method_name}: raw scores, {raw}"
    return (
        f"{method_name}: each generated token's scores divided by their sum of |score| (Inseq's default "
        f"normalize=True, as for gradient methods); raw ({raw}) with normalize=False"
    )
