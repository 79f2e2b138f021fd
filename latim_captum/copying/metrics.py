"""Faithfulness of token-to-token maps on the copying task (LaTIM §4.1, Table 2).

Ground truth (App. D.1, Fig. 6: the models attend to an off-diagonal band, hence three diagonals): query row
``i`` in ``L..2L-1`` emits ``source[i - L]``, so its gold source column is ``t = i - L`` (the token being copied)
and its two neighbours ``t - 1`` (the source twin of the token the row reads: input ``i`` is ``source[i - L - 1]``)
and ``t + 1``, clipped to the source block ``0..L-1``.

Which rows are "the copy" is a reading of the paper (``rows``): ``"predict"`` (ours, the default) scores the rows
``L..2L-1`` that *predict* each copied token ``s_k``; ``"hold"`` scores the rows ``L+1..2L`` that *hold* it (the
block literally under the separator: input ``L+1+k`` is ``s_k``; its last row ``2L`` predicts nothing the model
was trained on, and a logit method there explains that row's own token). Both use the same gold band: row ``r`` of the
block (``L + r`` or ``L + 1 + r``) against columns ``r − 1..r + 1``. The alignment metric has the same two readings
(:mod:`latim_captum.alignment.metrics`; Ferrando et al.'s AWO and AWI). Each row is scored only over the source columns
``0..L-1`` (the paper's source→copy block), with the per-row metrics of Fomicheva et al. (2021):

- ROC-AUC = P(score of a gold column > score of a non-gold column), ties counting 1/2 (Mann–Whitney U),
- average precision ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds (sklearn's definition),
- recall@K with K = the number of gold columns of the row: the share of gold columns among the K highest scores,

then averaged over rows and samples. The three functions work on a batch of rows at once and agree with
``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` (tested).

Example:
    >>> gt = copy_ground_truth(4)
    >>> gt.int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 1],
            [0, 0, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ROWS",
    "average_precision",
    "copy_ground_truth",
    "faithfulness",
    "model_free_maps",
    "recall_at_k",
    "roc_auc",
    "source_block",
]

#: the two readings of which rows explain the copied tokens (see the module docstring)
ROWS: tuple[str, ...] = ("predict", "hold")


def copy_ground_truth(length: int, width: int = 1) -> Tensor:
    """Gold ``[L, L]`` bool mask: row ``r`` (query row ``L + r``) against source column ``c``, ``|c − r| <= width``."""
    idx = torch.arange(length)
    return (idx[:, None] - idx[None, :]).abs() <= width


def source_block(maps: Tensor, length: int, rows: str = "predict") -> Tensor:
    """The source→copy block of ``[..., 2L+1, 2L+1]`` maps (query rows × source columns): ``maps[..., L:2L, 0:L]``
    for ``rows="predict"``, ``maps[..., L+1:2L+1, 0:L]`` for ``rows="hold"``."""
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
    if maps.shape[-1] != 2 * length + 1 or maps.shape[-2] != 2 * length + 1:
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit a copy sample of length {length}")
    first = length + (rows == "hold")
    return maps[..., first : first + length, :length]


def _ranks(scores: Tensor) -> Tensor:
    """Average ranks (1-based) along the last dim, ties sharing their mean rank."""
    n = scores.shape[-1]
    order = scores.argsort(-1)
    sorted_scores = scores.gather(-1, order)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device).expand_as(sorted_scores)
    # group id of each sorted element: number of value changes before it
    new_group = torch.ones_like(sorted_scores, dtype=torch.bool)
    new_group[..., 1:] = sorted_scores[..., 1:] != sorted_scores[..., :-1]
    group = new_group.long().cumsum(-1) - 1
    sums = torch.zeros_like(pos).scatter_add_(-1, group, pos)
    counts = torch.zeros_like(pos).scatter_add_(-1, group, torch.ones_like(pos))
    mean_rank = (sums / counts.clamp_min(1)).gather(-1, group)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def _check(scores: Tensor, gold: Tensor) -> tuple[Tensor, Tensor]:
    if scores.shape != gold.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and gold {tuple(gold.shape)} differ in shape")
    gold = gold.bool()
    n_pos = gold.sum(-1)
    if ((n_pos == 0) | (n_pos == gold.shape[-1])).any():
        raise ValueError("every row needs at least one gold and one non-gold column")
    return scores.double(), gold


def roc_auc(scores: Tensor, gold: Tensor) -> Tensor:
    """Per-row ROC-AUC ``[...]`` of ``scores`` ``[..., M]`` against the bool ``gold`` ``[..., M]``.

    ``AUC = (Σ_{gold} rank − P(P+1)/2) / (P·Q)`` with average ranks (ties 1/2), P gold and Q other columns.

    Example:
        >>> roc_auc(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, False]))
        tensor(1., dtype=torch.float64)
    """
    scores, gold = _check(scores, gold)
    n_pos = gold.sum(-1).double()
    n_neg = gold.shape[-1] - n_pos
    rank_sum = (_ranks(scores) * gold).sum(-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_precision(scores: Tensor, gold: Tensor) -> Tensor:
    """Per-row average precision ``Σ_n (R_n − R_{n−1}) P_n`` over distinct thresholds (as sklearn).

    Example:
        >>> average_precision(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, True]))
        tensor(1., dtype=torch.float64)
    """
    scores, gold = _check(scores, gold)
    order = scores.argsort(-1, descending=True)
    s = scores.gather(-1, order)
    g = gold.gather(-1, order).double()
    tp = g.cumsum(-1)
    seen = torch.arange(1, s.shape[-1] + 1, dtype=torch.float64, device=s.device).expand_as(s)
    # a threshold ends where the next score differs (or at the end): only there is (R, P) a curve point
    last = torch.ones_like(s, dtype=torch.bool)
    last[..., :-1] = s[..., :-1] != s[..., 1:]
    precision = tp / seen
    recall = tp / tp[..., -1:]
    prev_recall = torch.zeros_like(recall)
    # previous curve point's recall: carry the recall of the last threshold end forward
    ends_recall = torch.where(last, recall, torch.zeros_like(recall))
    running = torch.cummax(ends_recall, dim=-1).values
    prev_recall[..., 1:] = running[..., :-1]
    return ((recall - prev_recall) * precision * last).sum(-1)


def recall_at_k(scores: Tensor, gold: Tensor) -> Tensor:
    """Per-row recall@K, K = number of gold columns: share of gold columns among the K top scores.

    Ties at the K-th score count in expectation over a random order of the tied columns (as the AUC gives ties half
    credit): with ``a`` columns above the K-th score (``g_a`` of them gold) and ``t`` tied with it (``g_t`` gold),
    ``recall = (g_a + (K − a) · g_t / t) / K``. A fixed order would favour some columns: breaking ties by the lowest
    column gave a constant map 0.30 on the copy task's band (0.27 for random maps).

    Example:
        >>> recall_at_k(torch.tensor([0.9, 0.1, 0.5, 0.7]), torch.tensor([True, False, True, False]))
        tensor(0.5000, dtype=torch.float64)
        >>> recall_at_k(torch.zeros(4), torch.tensor([True, False, True, False]))   # K = 2 of 4 tied: 2 · 2/4 / 2
        tensor(0.5000, dtype=torch.float64)
    """
    scores, gold = _check(scores, gold)
    k = gold.sum(-1, keepdim=True)
    kth = torch.sort(scores, dim=-1, descending=True).values.gather(-1, k - 1)  # the K-th largest score
    above, tied = scores > kth, scores == kth
    gold_above = (gold & above).sum(-1).double()
    slots = (k[..., 0] - above.sum(-1)).double()  # places of the top K left to the tied columns
    gold_tied = (gold & tied).sum(-1).double()
    return (gold_above + slots * gold_tied / tied.sum(-1).double()) / k[..., 0].double()


def faithfulness(maps: Tensor, length: int, width: int = 1, rows: str = "predict") -> dict[str, float]:
    """Table 2 metrics of copy-sample maps ``[B, 2L+1, 2L+1]`` (one layer or aggregated), averaged over rows, samples;
    ``rows``: which rows are scored (``"predict"`` or ``"hold"``, see the module docstring).

    Returns:
        ``{"auc": ..., "ap": ..., "recall_at_k": ...}``.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 9, 9)
        >>> maps[0, 4:8, :4] = copy_ground_truth(4).float()
        >>> faithfulness(maps, 4)
        {'auc': 1.0, 'ap': 1.0, 'recall_at_k': 1.0}
    """
    block = source_block(maps, length, rows).detach().cpu()
    gold = copy_ground_truth(length, width).expand_as(block)
    if not torch.isfinite(block).all():
        raise ValueError("maps contain NaN or inf")
    return {
        "auc": float(roc_auc(block, gold).mean()),
        "ap": float(average_precision(block, gold).mean()),
        "recall_at_k": float(recall_at_k(block, gold).mean()),
    }


#: the model-free reference maps of :func:`model_free_maps`, with their report labels
MODEL_FREE: dict[str, str] = {
    "random": "Random map (no model)",
    "same_token": "Same token as the row's input (no model)",
}


def model_free_maps(ids: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Maps ``[B, N, N]`` that use no model, for the scores a method has to beat (``ids``: copy samples ``[B, N]``).

    ``"random"``: uniform noise (AUC 0.5 in expectation; its AP and R@K depend on L). ``"same_token"``: 1 where the
    column holds the token the row reads, ``ids[b, j] == ids[b, i]``, else 0. The gold band always holds the source
    twin of the row's own input token, so this map scores well above chance without any copying mechanism (AUC 0.66
    at the paper's shape, above several of its Table 2 entries).

    Example:
        >>> maps = model_free_maps(torch.tensor([[3, 1, 3, 0]]))
        >>> maps["same_token"][0].int()
        tensor([[1, 0, 1, 0],
                [0, 1, 0, 0],
                [1, 0, 1, 0],
                [0, 0, 0, 1]], dtype=torch.int32)
    """
    gen = torch.Generator().manual_seed(seed)
    return {
        "random": torch.rand(ids.shape[0], ids.shape[1], ids.shape[1], generator=gen, dtype=torch.float64),
        "same_token": (ids[:, :, None] == ids[:, None, :]).double(),
    }
