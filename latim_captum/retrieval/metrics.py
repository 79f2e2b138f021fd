"""Measures of the retrieval study (§4.3): answer accuracy split by the gold key's place (Table 4 / Table 6 shape),
and where a method puts its attribution mass along a long context.

**Accuracy.** A passkey answer is right when every value digit is (greedy decoding; :func:`passkey_outcome`). The
paper's Table 4 splits accuracy by whether the gold needle is the *first* to appear or a later one; a wrong answer
that spells another needle's value tells which needle the model read instead (``matched``). FWE answers are scored
by exact match (the three words in order), per rank, and as set recall ``|answer ∩ top-3| / 3``
(:func:`fwe_outcome`; RULER scores the set).

**Attribution shares.** For one query row with scores ``s_j`` over the columns ``j ≤ q`` (a LaTIM row, a gradient
row, a baseline row), and a partition of the positions into categories ``c``::

    share(c) = Σ_{j ∈ c} |s_j| / Σ_{j ≤ q} |s_j|

(absolute values: ALTI-Logit and Integrated Gradients are signed, and a large negative score is mass too; ℓ2,
Saliency and Mamba-Attention are non-negative already). Shares of a row sum to 1; a row with no mass at all has no
shares (NaN). Passkey categories (:func:`passkey_labels`):

- ``gold``: the key–value span ``"<adj> <noun> is : <digits>"`` of the needle the question names;
- ``first``: the same span of the first needle, when it is not the gold one (empty when the gold key is first);
- ``other_keys``: the key–value spans of the remaining needles;
- ``filler``: the intro, the filler sentences and the needles' shared template words;
- ``query``: the question and the answer tokens before the row (everything after the haystack).

**Which needle a wrong answer read.** A wrong answer that spells another needle's value (``matched``) names the
needle the model copied from. :func:`answered_labels` splits a row's mass three ways, ``gold`` / ``answered`` (that
needle's key–value span) / ``rest``: a method that explains the failure puts the mass on the needle answered, not
on the gold one.

FWE (:func:`fwe_labels`): one category per planted word (its occurrences, rank ``r`` = ``r``-th most frequent) and
``other`` (intro, question, answer). The *mean contribution per occurrence* of word ``r`` is
``share(r) / count(r)``: Figure 3 (right) and App. D.3's reading, where a word's mass does not grow with how often
it occurs.

Example:
    >>> labels = torch.tensor([3, 0, 0, 3, 1, 4])               # filler, gold, gold, filler, first, query
    >>> span_shares(torch.tensor([1.0, -2.0, 1.0, 0.0, 4.0, 2.0]), labels, 5)
    tensor([0.3000, 0.4000, 0.0000, 0.1000, 0.2000], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .data import RetrievalSample

__all__ = [
    "ANSWERED_CATEGORIES",
    "CATEGORIES",
    "answered_labels",
    "fwe_labels",
    "fwe_outcome",
    "passkey_labels",
    "passkey_outcome",
    "span_shares",
    "summarize_passkey",
]

#: the passkey categories, in label order (see the module docstring)
CATEGORIES: tuple[str, ...] = ("gold", "first", "other_keys", "filler", "query")
GOLD, FIRST, OTHER_KEYS, FILLER, QUERY = range(len(CATEGORIES))


def passkey_labels(sample: RetrievalSample) -> Tensor:
    """``[N]`` category index (into :data:`CATEGORIES`) of every position of a passkey sample."""
    if sample.kind != "passkey":
        raise ValueError(f"passkey_labels needs a passkey sample, got {sample.kind!r}")
    labels = torch.full((sample.length,), FILLER, dtype=torch.long)
    labels[sample.haystack[1] :] = QUERY
    for k, needle in enumerate(sample.needles):
        start, stop = needle.span
        if k == sample.gold:
            labels[start:stop] = GOLD
        elif k == 0:
            labels[start:stop] = FIRST
        else:
            labels[start:stop] = OTHER_KEYS
    return labels


#: the categories of :func:`answered_labels`, in label order
ANSWERED_CATEGORIES: tuple[str, ...] = ("gold", "answered", "rest")


def answered_labels(sample: RetrievalSample, matched: int) -> Tensor:
    """``[N]`` index into :data:`ANSWERED_CATEGORIES` of every position of a passkey sample whose wrong answer spells
    needle ``matched``'s value (order of appearance, :func:`passkey_outcome`): its key–value span is ``answered``,
    the gold needle's ``gold``, everything else ``rest``.

    Example:
        >>> labels = answered_labels(sample, matched=outcome["matched"])     # doctest: +SKIP
        >>> span_shares(row, labels, len(ANSWERED_CATEGORIES))               # doctest: +SKIP
    """
    if sample.kind != "passkey":
        raise ValueError(f"answered_labels needs a passkey sample, got {sample.kind!r}")
    if not 0 <= matched < len(sample.needles) or matched == sample.gold:
        raise ValueError(
            f"matched must name a needle other than the gold one (0..{len(sample.needles) - 1}, not {sample.gold}), "
            f"got {matched}"
        )
    labels = torch.full((sample.length,), 2, dtype=torch.long)
    for k, label in ((sample.gold, 0), (matched, 1)):
        start, stop = sample.needles[k].span
        labels[start:stop] = label
    return labels


def fwe_labels(sample: RetrievalSample) -> Tensor:
    """``[N]`` label of every position of an FWE sample: the rank (0-based) of the planted word there, or
    ``len(sample.words)`` (``other``) outside the haystack."""
    if sample.kind != "fwe":
        raise ValueError(f"fwe_labels needs an FWE sample, got {sample.kind!r}")
    m = len(sample.words)
    labels = torch.full((sample.length,), m, dtype=torch.long)
    start, stop = sample.haystack
    ids = torch.as_tensor(sample.ids[start:stop])
    rank_of = torch.full((max(int(ids.max()), *sample.word_ids) + 1,), -1, dtype=torch.long)
    rank_of[torch.tensor(sample.word_ids)] = torch.arange(m)
    labels[start:stop] = rank_of[ids]
    if bool((labels[start:stop] < 0).any()):
        raise ValueError("the haystack holds a word that is not planted")
    return labels


def span_shares(scores: Tensor, labels: Tensor, n_labels: int) -> Tensor:
    """Share of attribution mass per category: ``Σ_{j: labels_j = c} |s_j| / Σ_j |s_j|``.

    Args:
        scores: ``[..., N]`` scores of query rows (columns after the row must be zero, as in every causal map).
        labels: ``[N]`` (or broadcastable to ``scores``) category index per column, in ``0..n_labels-1``.
        n_labels: number of categories.

    Returns:
        ``[..., n_labels]`` float64 shares; rows whose mass is 0 are NaN.
    """
    mass = scores.detach().double().abs()
    labels = labels.to(mass.device).expand_as(mass)
    if int(labels.min()) < 0 or int(labels.max()) >= n_labels:
        raise ValueError(f"labels must be in 0..{n_labels - 1}")
    out = torch.zeros(*mass.shape[:-1], n_labels, dtype=torch.float64, device=mass.device)
    out.scatter_add_(-1, labels, mass)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, out / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)


def passkey_outcome(sample: RetrievalSample, answer: Sequence[str]) -> dict:
    """``{"correct", "gold_first", "matched"}`` of a passkey answer: right iff every digit is; ``matched`` is the
    index (order of appearance) of the needle whose value the answer spells, or -1 (none)."""
    answer = tuple(answer)
    matched = next((k for k, n in enumerate(sample.needles) if n.value == answer), -1)
    return {"correct": answer == sample.answer, "gold_first": sample.gold_is_first, "matched": matched}


def fwe_outcome(sample: RetrievalSample, answer: Sequence[str]) -> dict:
    """``{"exact", "per_rank", "set_recall"}`` of an FWE answer (three words, most frequent first)."""
    answer = tuple(answer)
    gold = sample.answer
    per_rank = [a == g for a, g in zip(answer, gold)]
    return {"exact": answer == gold, "per_rank": per_rank, "set_recall": len(set(answer) & set(gold)) / len(gold)}


def summarize_passkey(outcomes: Sequence[dict]) -> dict:
    """Accuracy overall and split by the gold key's place (Table 4): ``{"n", "accuracy", "first": {"n",
    "accuracy"}, "later": {...}, "wrong": {"n", "first_value", "other_value", "no_value"}}`` (None where no sample
    falls in a split); ``wrong`` counts what the wrong answers spell: the first needle's value, another needle's,
    or none."""

    def acc(items: list[dict]) -> dict:
        return {"n": len(items), "accuracy": sum(o["correct"] for o in items) / len(items) if items else None}

    items = list(outcomes)
    wrong = [o for o in items if not o["correct"]]
    return {
        **acc(items),
        "first": acc([o for o in items if o["gold_first"]]),
        "later": acc([o for o in items if not o["gold_first"]]),
        "wrong": {
            "n": len(wrong),
            "first_value": sum(o["matched"] == 0 for o in wrong),
            "other_value": sum(o["matched"] > 0 for o in wrong),
            "no_value": sum(o["matched"] < 0 for o in wrong),
        },
    }
