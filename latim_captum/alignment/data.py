"""Synthetic translation data for a decoder-only model: ``source <sep> target <eos>`` with gold word alignments.

The language pair, lexicon and rules are :mod:`.grammar`'s (code and a seed, no data files). One token is one word
(a word-level tokenizer), so the gold word alignment is a token alignment and no subword merging is needed.

Layout of a sample of ``S`` source and ``T`` target words (``N = S + T + 2`` tokens, 0-based positions)::

    source 0..S-1 | <sep> at S | target S+1..S+T | <eos> at S+T+1 | <pad> ... (batches are right-padded)

Row ``i`` of the model predicts the token at ``i + 1``, so rows ``S..S+T`` predict the target words and
``<eos>``: those are the trained rows (:meth:`AlignmentBatch.loss_mask`). Target word ``t`` is *predicted* by row
``S + t`` and *held* by row ``S + 1 + t`` (:mod:`latim_captum.alignment.metrics` scores either). Padding after
``<eos>`` changes nothing before it: every model here is causal.

Example:
    >>> task = AlignmentTask(**TINY_TASK)
    >>> batch = task.encode(task.pairs(2, seed=0))
    >>> s, t = int(batch.source_lengths[0]), int(batch.target_lengths[0])
    >>> int(batch.ids[0, s]) == task.sep_id and int(batch.ids[0, s + t + 1]) == task.eos_id
    True
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import cached_property

import torch
from torch import Tensor

from .grammar import Lexicon, Pair, build_lexicon, sample_pair

__all__ = ["PAD", "SEP", "EOS", "UNK", "TINY_TASK", "AlignmentBatch", "AlignmentTask"]

PAD, SEP, EOS, UNK = "<pad>", "<sep>", "<eos>", "<unk>"
_SPECIALS = (PAD, SEP, EOS, UNK)

#: the tiny task of the CPU tests and ``latim bench alignment --scale tiny``: a 50-word lexicon, 5–10 word sentences
TINY_TASK = dict(n_nouns=20, n_adjectives=8, n_transitive=8, n_intransitive=6, n_adverbs=4, min_words=5, max_words=10)


@dataclass(frozen=True)
class AlignmentBatch:
    """Encoded pairs, right-padded.

    Attributes:
        ids: ``[n, N]`` token ids (``N`` the longest sample), ``<pad>`` after each ``<eos>``.
        source_lengths: ``[n]`` source words ``S`` per sample (also the position of ``<sep>``).
        target_lengths: ``[n]`` target words ``T`` per sample.
        pairs: the pairs, with their gold links.
    """

    ids: Tensor
    source_lengths: Tensor
    target_lengths: Tensor
    pairs: tuple[Pair, ...]

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """``[n]`` tokens per sample, ``S + T + 2``."""
        return self.source_lengths + self.target_lengths + 2

    def loss_mask(self) -> Tensor:
        """``[n, N]`` bool: the rows ``S..S+T`` that predict a target word or ``<eos>``."""
        pos = torch.arange(self.ids.shape[1])
        s = self.source_lengths[:, None]
        return (pos >= s) & (pos <= s + self.target_lengths[:, None])

    def select(self, index: Tensor | list[int]) -> AlignmentBatch:
        """The samples at ``index``, cut to their own longest length."""
        index = torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(index) else 0
        return AlignmentBatch(
            self.ids[index, :width],
            self.source_lengths[index],
            self.target_lengths[index],
            tuple(self.pairs[i] for i in index.tolist()),
        )


@dataclass(frozen=True)
class AlignmentTask:
    """The synthetic translation task: lexicon sizes, sentence lengths and the lexicon's seed.

    The defaults are the full task (287 source words, 5–20 word sentences); :data:`TINY_TASK` is the CPU one.

    Attributes:
        n_nouns, n_adjectives, n_transitive, n_intransitive, n_adverbs: content words per class.
        fertility: share of nouns and verbs that translate into two target words.
        min_words, max_words: source sentence length range.
        lexicon_seed: seed of the word forms and of which words are fertile.
    """

    n_nouns: int = 150
    n_adjectives: int = 40
    n_transitive: int = 40
    n_intransitive: int = 25
    n_adverbs: int = 20
    fertility: float = 0.2
    min_words: int = 5
    max_words: int = 20
    lexicon_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.min_words, int) or not isinstance(self.max_words, int):
            raise ValueError("min_words and max_words must be ints")
        if not 2 <= self.min_words <= self.max_words:
            raise ValueError(f"need 2 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        self.lexicon  # noqa: B018 (validates the sizes now, not at the first sample)

    @cached_property
    def lexicon(self) -> Lexicon:
        sizes = {k: v for k, v in asdict(self).items() if k.startswith("n_")}
        return build_lexicon(**sizes, fertility=self.fertility, seed=self.lexicon_seed)

    @cached_property
    def vocabulary(self) -> tuple[str, ...]:
        """Every token: the specials ``<pad> <sep> <eos> <unk>``, the source words, then the target words."""
        return (*_SPECIALS, *self.lexicon.source_vocabulary, *self.lexicon.target_vocabulary)

    @cached_property
    def token_ids(self) -> dict[str, int]:
        return {w: k for k, w in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    pad_id, sep_id, eos_id, unk_id = 0, 1, 2, 3

    @property
    def max_seq_len(self) -> int:
        """An upper bound of ``S + T + 2``: at most two target words per source word, plus two object markers."""
        return 3 * self.max_words + 4

    def to_dict(self) -> dict:
        return asdict(self)

    def pairs(self, n: int, seed: int) -> list[Pair]:
        """``n`` sentence pairs, the same for the same seed on every machine (``random.Random(seed)``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        rng = random.Random(seed)
        return [sample_pair(self.lexicon, rng, min_words=self.min_words, max_words=self.max_words) for _ in range(n)]

    def splits(self, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
        """Train and evaluation pairs drawn from different seeds (``seed`` and ``seed + 1``), as the copy task."""
        return self.pairs(n_train, seed), self.pairs(n_eval, seed + 1)

    def text(self, pair: Pair) -> str:
        """``"<source words> <sep> <target words> <eos>"``: what :meth:`tokenizer` encodes to the sample's ids."""
        return " ".join([*pair.source, SEP, *pair.target, EOS])

    def encode(self, pairs: list[Pair] | tuple[Pair, ...]) -> AlignmentBatch:
        """Token ids of ``pairs``, right-padded with ``<pad>``."""
        rows = [[self.token_ids[w] for w in self.text(p).split(" ")] for p in pairs]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = torch.tensor(row)
        return AlignmentBatch(
            ids,
            torch.tensor([len(p.source) for p in pairs]),
            torch.tensor([len(p.target) for p in pairs]),
            tuple(pairs),
        )

    def tokenizer(self):
        """A word-level ``PreTrainedTokenizerFast`` (split on spaces, one id per word, nothing added).

        Example:
            >>> task = AlignmentTask(**TINY_TASK)
            >>> pair = task.pairs(1, seed=0)[0]
            >>> task.tokenizer()(task.text(pair)).input_ids == task.encode([pair]).ids[0].tolist()
            True
        """
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(self.token_ids), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=PAD, sep_token=SEP, eos_token=EOS, unk_token=UNK
        )
