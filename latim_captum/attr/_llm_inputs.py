"""Captum's LLM inputs as LaTIM columns: which model tokens make up each interpretable feature of a prompt.

Captum's LLM wrappers attribute to *interpretable features*: the prompt's tokens minus ``skip_tokens``
(:class:`~captum.attr.TextTokenInput`) or the values filled into a template (:class:`~captum.attr.TextTemplateInput`).
LaTIM scores every model token, so a feature's score is the sum of its tokens' scores (exact for ALTI-Logit, whose
scores add up to the logit), and tokens outside every feature (a skipped BOS, a template's fixed text) are dropped, as
Captum drops them: the result then lines up column for column with ``LLMAttribution`` / ``LLMGradientAttribution``.

Example:
    >>> cols = prompt_columns(TextTokenInput("the cat", tokenizer, skip_tokens=[bos_id]), tokenizer)  # doctest: +SKIP
    >>> cols.features                                    # the BOS is not a feature       # doctest: +SKIP
    ['the', 'cat']
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import InterpretableInput, TextTemplateInput, TextTokenInput
from torch import Tensor

__all__ = ["PromptColumns", "prompt_columns"]


@dataclass(frozen=True)
class PromptColumns:
    """A prompt as model tokens and interpretable features.

    Attributes:
        ids: the model's input ids, ``[N]`` (special tokens included).
        groups: ``[F, N]``, 1 where model token j belongs to feature f: ``feature scores = groups @ token scores``.
        features: the features' names, Captum's ``input_tokens``.
        inp: the Captum input it came from (None for a string or ids), passed on to the result.
    """

    ids: Tensor
    groups: Tensor
    features: list[str]
    inp: InterpretableInput | None = None


def _token_input(inp: TextTokenInput) -> PromptColumns:
    ids = inp.inp_tensor.reshape(-1).long()
    keep = torch.ones_like(ids, dtype=torch.bool) if inp.itp_mask is None else inp.itp_mask.reshape(-1).bool()
    groups = torch.eye(ids.numel())[keep]
    return PromptColumns(ids, groups, list(inp.values), inp)


def _template_text(inp: TextTemplateInput) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and each value's character span, from the format string's fields in order."""
    spans: list[tuple[int, int] | None] = [None] * len(inp.values)
    text, auto = "", 0
    for literal, field, spec, conversion in string.Formatter().parse(inp.template):
        text += literal
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"TextTemplateInput field {{{field}}} has a format spec or conversion; use plain fields")
        if field == "":
            idx, auto = auto, auto + 1
        elif field.isdigit():
            idx = int(field)
        elif field in inp.dict_keys:
            idx = inp.dict_keys.index(field)
        else:
            raise ValueError(f"TextTemplateInput field {{{field}}} names no value")
        if spans[idx] is not None:
            raise ValueError(f"TextTemplateInput value {inp.values[idx]!r} appears twice in the template")
        spans[idx] = (len(text), len(text) + len(inp.values[idx]))
        text += inp.values[idx]
    if any(span is None for span in spans):
        raise ValueError("every value of a TextTemplateInput must appear in its template")
    if text != inp.to_model_input():
        raise ValueError("the template does not render as a plain format string; LaTIM cannot locate its values")
    return text, [span for span in spans if span is not None]


def _template_input(inp: TextTemplateInput, tokenizer: Any) -> PromptColumns:
    """Each value's tokens (the tokens its character span overlaps), grouped by ``mask`` as Captum does."""
    if not isinstance(inp.template, str):
        raise ValueError(
            "TextTemplateInput with a callable template: LaTIM cannot tell which tokens hold which value; use a "
            "format string such as '{} lives in {}'"
        )
    if callable(inp.baselines) or any(b != "" for b in inp.baselines):
        raise ValueError(
            "LaTIM needs no baselines: TextTemplateInput(baselines=...) sets what a perturbation method swaps in, "
            "which LaTIM never does; build the input without baselines"
        )
    text, spans = _template_text(inp)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a TextTemplateInput needs a fast tokenizer (its character offsets locate each value)")
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    owner = torch.full((ids.numel(),), -1, dtype=torch.long)
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        hits = [i for i, (s, e) in enumerate(spans) if start < e and end > s and end > start]
        if len(hits) > 1:
            raise ValueError(f"token {tokenizer.convert_ids_to_tokens(int(ids[j]))!r} spans two template values")
        if hits:
            owner[j] = hits[0]
    # Captum's mask: values with the same mask id are one feature, whose score every one of them shows
    group_of = inp.formatted_mask if inp.mask is not None else list(range(len(inp.values)))
    groups = torch.zeros(len(inp.values), ids.numel())
    for i, g in enumerate(group_of):
        members = [k for k, other in enumerate(group_of) if other == g]
        groups[i] = torch.isin(owner, torch.tensor(members)).float()
    return PromptColumns(ids, groups, list(inp.values), inp)


def _refuse_padding(ids: Tensor, tokenizer: Any) -> None:
    """A tensor prompt carries no attention mask, so a pad token in it would be read by the model as text and
    attributed (``skip_tokens`` hides its column, not its effect on the state): refuse it.

    Where the pad token is also a real token it passes only where that token can stand: the BOS at position 0 when
    the tokenizer prepends one; the EOS at the last position or between text (documents joined by it). Padding is
    a run at the start or the end, so two pads there are refused either way.

    Raises:
        ValueError: the prompt holds the tokenizer's pad token where it can only be padding.
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        return
    where = (ids == pad).nonzero().flatten().tolist()
    if not where:
        return
    n = ids.numel()
    lead = next((k for k in range(n) if int(ids[k]) != pad), n)  # the leading run of pads: positions < lead
    trail = next((k for k in range(n - 1, -1, -1) if int(ids[k]) != pad), -1)  # the trailing run: positions > trail
    allowed: set[int] = set()
    if pad == getattr(tokenizer, "bos_token_id", None) and _prepends_bos(tokenizer, pad):
        allowed.add(0)
    if pad == getattr(tokenizer, "eos_token_id", None):
        allowed |= {k for k in where if lead <= k <= trail}  # between text: a separator, not padding
        allowed.add(n - 1)
    bad = [k for k in where if k not in allowed]
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise ValueError(
            f"the prompt holds the pad token (id {pad}) at position(s) {shown}: token ids carry no attention mask, "
            "so the model would read the padding as text; pass the prompt without it (ids[mask.bool()])"
        )


def _prepends_bos(tokenizer: Any, bos: int) -> bool:
    """Whether ``tokenizer`` starts what it encodes with its BOS ``bos`` (a tokenizer that cannot say: assumed so)."""
    try:
        first = tokenizer("", add_special_tokens=True)["input_ids"][:1]
    except Exception:  # noqa: BLE001 - any tokenizer failure means we cannot tell; one position is exempted
        return True
    return first == [bos]


def _plain(ids: Tensor, tokenizer: Any, skip_tokens: list[int] | list[str] | None) -> PromptColumns:
    if skip_tokens and isinstance(skip_tokens[0], str):
        skip_tokens = tokenizer.convert_tokens_to_ids(skip_tokens)
    skip = torch.tensor(list(skip_tokens or []), dtype=torch.long)
    keep = ~torch.isin(ids, skip)
    features = tokenizer.convert_ids_to_tokens(ids[keep].tolist())
    return PromptColumns(ids, torch.eye(ids.numel())[keep], features)


def prompt_columns(
    inp: Any, tokenizer: Any, skip_tokens: list[int] | list[str] | None = None, add_special_tokens: bool = True
) -> PromptColumns:
    """The model tokens and interpretable features of a prompt.

    Args:
        inp: a :class:`~captum.attr.TextTokenInput`, a :class:`~captum.attr.TextTemplateInput` (format-string
            template, no baselines), a string, or token ids (``[N]`` or ``[1, N]``).
        tokenizer: the model's Hugging Face tokenizer.
        skip_tokens: for a string or ids, tokens that are no features (ids or token strings), as
            ``TextTokenInput(skip_tokens=...)``.
        add_special_tokens: for a string, whether the tokenizer adds its special tokens (a BOS).

    Raises:
        ValueError: a batch of prompts, an empty prompt, a template LaTIM cannot map onto tokens, template baselines,
            or ``skip_tokens`` given twice.
        TypeError: another input type.
    """
    if isinstance(inp, (TextTokenInput, TextTemplateInput)) and skip_tokens is not None:
        raise ValueError(f"skip_tokens belongs in the {type(inp).__name__}; it was given to attribute() too")
    if isinstance(inp, TextTokenInput):
        cols = _token_input(inp)
    elif isinstance(inp, TextTemplateInput):
        cols = _template_input(inp, tokenizer)
    elif isinstance(inp, str):
        ids = torch.tensor(tokenizer.encode(inp, add_special_tokens=add_special_tokens), dtype=torch.long)
        cols = _plain(ids, tokenizer, skip_tokens)
    elif isinstance(inp, Tensor):
        if inp.dim() == 2 and inp.shape[0] > 1:
            raise ValueError(
                f"LatimLLMAttribution attributes one prompt, got a batch of {inp.shape[0]} (ids {tuple(inp.shape)}); "
                "call it once per prompt with its padding removed (ids[i][mask[i].bool()]), or call the method's "
                "own attribute() on the padded batch with its attention mask"
            )
        if inp.dim() > 2 or inp.dtype.is_floating_point:
            raise ValueError(f"expected token ids [N] or [1, N], got a {inp.dtype} tensor of shape {tuple(inp.shape)}")
        ids = inp.reshape(-1).long().cpu()
        _refuse_padding(ids, tokenizer)
        cols = _plain(ids, tokenizer, skip_tokens)
    else:
        raise TypeError(
            "inp must be a TextTokenInput, a TextTemplateInput, a string or token ids, got " + type(inp).__name__
        )
    if cols.ids.numel() == 0:
        raise ValueError("the prompt encodes to no tokens")
    return cols
