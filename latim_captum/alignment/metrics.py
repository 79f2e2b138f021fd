"""Alignment error rate of token-to-token maps (LaTIM §4.2, Table 3): hard alignments from maps, AER against gold.

**AER** (Och & Ney, 2000). With sure links ``S`` ⊆ possible links ``P`` and a predicted alignment ``A``::

    AER = 1 − (|A ∩ S| + |A ∩ P|) / (|A| + |S|),   precision = |A ∩ P| / |A|,   recall = |A ∩ S| / |S|

summed over the corpus before dividing (counts of every sentence added, then one ratio), as in Och & Ney and in
the AER code of Ferrando et al. (2022, ALTI+), whose convention the LaTIM paper follows for MT.

**Hard alignment from a map** (Ferrando et al. 2022's code; "argmax over source words" in the paper's sources):
for each target word, the source word with the highest score in its row of the target×source block is its one
link. Choices, each an argument:

- ``rows``: which row of a decoder-only map explains target word ``t`` (at position ``S + 1 + t``).
  ``"predict"``: row ``S + t``, the row whose output *predicts* ``t`` (the decoder output; Ferrando et al.'s
  "AWO", Chen et al.'s Naive-Att). ``"hold"``: row ``S + 1 + t``, the row whose input *is* ``t`` (the decoder
  input; "AWI", Chen et al. 2020's Shift-Att, which found it gives better alignments from attention).
- ``sink``: the ``<sep>`` column (the token that ends the source, as ``</s>`` does in an encoder–decoder) joins
  the argmax, and a target word whose argmax is ``<sep>`` gets no link. This is Ferrando et al.'s treatment of
  the source ``</s>`` (their argmax runs over the source tokens and ``</s>``; a link to ``</s>`` is dropped), so a
  method can leave a word unaligned. ``sink=False``: argmax over the source words only (every target word linked).
- ``ties``: ``"first"`` keeps the lowest source index among equal maxima (``numpy``/``torch`` argmax, as
  Ferrando et al.); ``"all"`` links every tied source word. Raw scores are ranked (signed scores as they come, as
  the copy metric does).

Columns of target-side tokens (the target prefix, the row's own token) never enter: the paper scores the
source→target block (in ``"predict"`` the first target word's row is ``<sep>`` itself, so its sink cell, the row's
own token, is left out too). ``<eos>`` gets no alignment (it is not a word).

Example:
    >>> sure, possible = {(0, 0), (2, 1)}, {(0, 0), (2, 1), (1, 1)}
    >>> alignment_error_rate([{(0, 0), (1, 1)}], [sure], [possible])
    {'aer': 0.25, 'precision': 1.0, 'recall': 0.5}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .data import AlignmentBatch

__all__ = [
    "ROWS",
    "alignment_error_rate",
    "batch_alignments",
    "extract_alignment",
    "gold_of",
    "monotone_alignment",
    "target_rows",
    "target_source_block",
]

#: the two readings of which row explains a target word (see the module docstring)
ROWS: tuple[str, ...] = ("predict", "hold")

Links = frozenset[tuple[int, int]]


def target_rows(source_length: int, target_length: int, rows: str = "predict") -> range:
    """Rows of a ``source <sep> target <eos>`` map that explain target words ``0..T-1``.

    Example:
        >>> list(target_rows(3, 2, "predict")), list(target_rows(3, 2, "hold"))
        ([3, 4], [4, 5])
    """
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
    first = source_length + (rows == "hold")
    return range(first, first + target_length)


def target_source_block(
    scores: Tensor, source_length: int, target_length: int, *, rows: str = "predict", sink: bool = True
) -> Tensor:
    """The ``[T, S]`` block of one sample's ``[N, N]`` map (``[T, S + 1]`` with the ``<sep>`` column last if
    ``sink``): target rows (per ``rows``) × source columns.

    With ``rows="predict"`` and ``sink``, target word 0 is read on row ``S``, which *is* ``<sep>``: its sink cell
    would be the row's own token (a self-term that dominates many maps and would drop word 0 every time), so it is
    set to the lowest finite value and never wins the argmax; every other sink cell is an earlier token, as the
    source ``</s>`` of an encoder–decoder.
    """
    n = source_length + target_length + 2
    if scores.dim() != 2 or scores.shape[0] < n or scores.shape[1] < n:
        raise ValueError(f"a map of shape {tuple(scores.shape)} does not hold a sample of {n} tokens")
    r = target_rows(source_length, target_length, rows)
    block = scores[r.start : r.stop, : source_length + int(sink)]
    if sink and rows == "predict" and target_length > 0:
        block = block.clone()
        block[0, -1] = torch.finfo(block.dtype).min if block.dtype.is_floating_point else block.min() - 1
    return block


def extract_alignment(block: Tensor, *, sink: bool = True, ties: str = "first") -> Links:
    """Hard alignment ``{(s, t)}`` of a ``[T, S(+1)]`` block: each target row linked to its argmax source column.

    With ``sink`` the last column is ``<sep>``: a row whose argmax is there gets no link.

    Example:
        >>> block = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.1, 0.0, 0.9]])
        >>> sorted(extract_alignment(block))
        [(0, 1), (1, 0)]
        >>> sorted(extract_alignment(block, ties="all"))
        [(0, 1), (1, 0), (1, 1)]
    """
    if ties not in ("first", "all"):
        raise ValueError(f"ties must be 'first' or 'all', got {ties!r}")
    if block.dim() != 2:
        raise ValueError(f"expected a [T, S] block, got shape {tuple(block.shape)}")
    if not torch.isfinite(block).all():
        raise ValueError("the map contains NaN or inf")
    n_src = block.shape[1] - int(sink)
    if n_src < 1:
        raise ValueError("the block has no source column")
    if ties == "first":
        best = block.argmax(-1).tolist()  # the first maximum: the lowest source index wins a tie
        return frozenset((s, t) for t, s in enumerate(best) if s < n_src)
    top = block == block.max(-1, keepdim=True).values
    return frozenset((s, t) for t, s in top.nonzero().tolist() if s < n_src)


def alignment_error_rate(
    predicted: Iterable[Iterable[tuple[int, int]]],
    sure: Iterable[Iterable[tuple[int, int]]],
    possible: Iterable[Iterable[tuple[int, int]]],
) -> dict[str, float | None]:
    """Corpus AER, precision and recall of predicted alignments against gold, one link set per sentence.

    Returns:
        ``{"aer", "precision", "recall"}``; ``precision`` is None when nothing is predicted.

    Example:
        >>> alignment_error_rate([{(0, 0)}], [{(0, 0), (1, 1)}], [{(0, 0), (1, 1)}])
        {'aer': 0.33333333333333337, 'precision': 1.0, 'recall': 0.5}
    """
    a = s = a_s = a_p = 0
    n = 0
    for pred, gold_s, gold_p in zip(predicted, sure, possible, strict=True):
        pred, gold_s, gold_p = set(pred), set(gold_s), set(gold_p)
        if not gold_s <= gold_p:
            raise ValueError(f"sure links must be possible links too (S ⊆ P); not in P: {sorted(gold_s - gold_p)}")
        a += len(pred)
        s += len(gold_s)
        a_s += len(pred & gold_s)
        a_p += len(pred & gold_p)
        n += 1
    if n == 0 or s == 0:
        raise ValueError("AER needs at least one sentence with a sure link")
    return {"aer": 1.0 - (a_s + a_p) / (a + s), "precision": a_p / a if a else None, "recall": a_s / s}


def batch_alignments(
    maps: Tensor, batch: AlignmentBatch, *, rows: str = "predict", sink: bool = True, ties: str = "first"
) -> list[Links]:
    """Hard alignments of each sample of a batch from its ``[B, N, N]`` maps (one layer, or aggregated)."""
    if maps.dim() != 3 or maps.shape[0] != len(batch):
        raise ValueError(f"expected [B={len(batch)}, N, N] maps, got shape {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    out = []
    for k in range(len(batch)):
        s, t = int(batch.source_lengths[k]), int(batch.target_lengths[k])
        out.append(extract_alignment(target_source_block(maps[k], s, t, rows=rows, sink=sink), sink=sink, ties=ties))
    return out


def monotone_alignment(source_length: int, target_length: int) -> Links:
    """A model-free baseline: target word ``t`` linked to source word ``⌊(t + ½)·S/T⌋`` (the diagonal: the source
    word under the target word's centre when both sentences are laid on [0, 1]).

    Example:
        >>> sorted(monotone_alignment(4, 2))
        [(1, 0), (3, 1)]
    """
    return frozenset(
        (min(source_length - 1, int((t + 0.5) * source_length / target_length)), t) for t in range(target_length)
    )


def gold_of(batch: AlignmentBatch) -> tuple[Sequence[frozenset], Sequence[frozenset]]:
    """The batch's ``(sure, possible)`` link sets."""
    return [p.sure for p in batch.pairs], [p.possible for p in batch.pairs]
