"""Seeded offline generators of the paper's two retrieval tasks (§4.3, after RULER; Hsieh et al., 2024), word-level.

**Passkey retrieval** with ``k`` key–value pairs hidden in filler text; the question names one key (the *gold*
key) and the answer is its value, ``value_digits`` digit tokens. Layout of a sample of exactly ``N`` tokens::

    intro | filler … needle_1 … filler … needle_k … filler | question(gold key) | value digits | <eos>
    needle  = "one of the special magic numbers for <adj> <noun> is : <d_1 … d_D> ."
    question = "what is the special magic number for <adj> <noun> ? the special magic number for <adj> <noun> is :"

The filler is RULER's passkey noise (five sentences, drawn with replacement). Needles sit at sentence boundaries of
the filler at uniformly drawn depths, in the order they appear; the gold key is drawn uniformly among them, so it
is the *first* to appear with probability ``1/k`` (the split of the paper's Table 4). Keys use distinct adjectives
and distinct nouns, values are distinct.

**Frequent-word extraction (FWE)**: ``fwe_words`` coded words (seeded random 6-letter strings) with *planted*
frequencies (:func:`planted_counts`: Zipf weights ``r^{-α}`` scaled to the haystack, exact integer counts),
shuffled; the answer lists the three most frequent in decreasing order::

    intro | w w w … (exactly planted_counts(H) of each word, shuffled) | question | w_1 w_2 w_3 | <eos>

One token is one word (:meth:`RetrievalTask.tokenizer`, a ``tokenizers`` WordLevel model), so spans are token
spans. Row ``i`` of a causal LM predicts token ``i + 1``: the answer token at ``answer_start + t`` is predicted by
row ``answer_start + t − 1`` (:meth:`RetrievalSample.answer_rows`).

Every sample is a function of the seed it is drawn with (NumPy's PCG64, same on every machine).

Example:
    >>> task = RetrievalTask(**TINY_TASK)
    >>> s = task.passkey(1, length=128, keys=2, seed=0)[0]
    >>> len(s.ids), s.kind, len(s.needles), task.decode(s.ids[s.answer_start : s.answer_start + 2]) == s.answer
    (128, 'passkey', 2, True)
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FILLER",
    "KEYS",
    "LENGTHS",
    "TINY_TASK",
    "Needle",
    "RetrievalSample",
    "RetrievalTask",
    "planted_counts",
]

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
_SPECIALS = (PAD, EOS, UNK)

#: RULER's passkey noise, one sentence per entry
FILLER: tuple[str, ...] = (
    "the grass is green .",
    "the sky is blue .",
    "the sun is yellow .",
    "here we go .",
    "there and back again .",
)
_PASSKEY_INTRO = "a special magic number is hidden within the following text . make sure to memorize it ."
_NEEDLE_HEAD = "one of the special magic numbers for"  # then the key, "is :", the value, "."
_QUESTION_HEAD = "what is the special magic number for"  # then the key, "? the special magic number for", key, "is :"
_QUESTION_MID = "? the special magic number for"
_FWE_INTRO = "read the coded text and find the three most frequent coded words ."
_FWE_QUESTION = "what are the three most frequent coded words ? answer :"

#: the key counts of the paper's Table 6
KEYS: tuple[int, ...] = (1, 2, 4)
#: evaluation lengths per scale (the paper's Table 6 uses 1024 and 2048)
LENGTHS: dict[str, tuple[int, ...]] = {"paper": (1024, 2048), "tiny": (128, 192)}

_ADJECTIVES = (
    "itchy determined quiet brave calm eager fancy gentle happy jolly kind lively nice proud silly witty "
    "ancient bitter clever dusty empty frozen golden hollow icy jagged lucky misty noble rusty shiny tidy"
).split()
_NOUNS = (
    "obligation consignment river mountain lantern harbor meadow violin garden castle pencil window ladder "
    "blanket compass dragon falcon glacier helmet island jacket kettle lemon marble needle orchard parrot "
    "quartz saddle tunnel umbrella wagon"
).split()

#: the tiny task of the CPU tests and ``latim bench retrieval --scale tiny``
TINY_TASK = dict(n_adjectives=8, n_nouns=8, value_digits=2, n_coded=16, fwe_words=6)


def planted_counts(total: int, words: int, alpha: float) -> tuple[int, ...]:
    """Exact integer counts of ``words`` words over a haystack of ``total`` tokens, Zipf-shaped (RULER's FWE).

    ``c_r = max(1, ⌊total · r^{-α} / Σ_s s^{-α}⌋)`` for ranks ``r = 1..words``, then the rounding remainder
    ``total − Σ c_r`` goes to rank 1, so ``Σ c_r = total`` exactly. ``ValueError`` unless the three most frequent are
    strictly ordered and strictly above the rest (``c_1 > c_2 > c_3 > c_4``), which makes the answer unique.

    Example:
        >>> planted_counts(20, 4, 1.0)   # 20·(1, ½, ⅓, ¼)/2.083 = 9.6, 4.8, 3.2, 2.4 → 9, 4, 3, 2; +2 to rank 1
        (11, 4, 3, 2)
    """
    if words < 4:
        raise ValueError(f"FWE needs at least 4 distinct words (3 answers and a rest), got {words}")
    weights = np.arange(1, words + 1, dtype=np.float64) ** -float(alpha)
    counts = np.maximum(1, np.floor(total * weights / weights.sum())).astype(np.int64)
    counts[0] += total - int(counts.sum())
    if not (counts[0] > counts[1] > counts[2] > counts[3]) or counts.min() < 1:
        raise ValueError(
            f"a haystack of {total} tokens over {words} words (alpha {alpha}) gives counts {counts.tolist()}: the top "
            "three are not strictly ordered above the rest; use a longer length or fewer words"
        )
    return tuple(int(c) for c in counts)


@dataclass(frozen=True)
class Needle:
    """One key–value pair of a passkey sample (positions are 0-based token indices, stops exclusive).

    Attributes:
        key: the two key words.
        value: the value's digits.
        start, stop: the whole needle sentence.
        key_start: the first key word; the key–value span is ``[key_start, value_stop)`` ("<adj> <noun> is : d…").
        value_start, value_stop: the value's digits.
    """

    key: tuple[str, str]
    value: tuple[str, ...]
    start: int
    stop: int
    key_start: int
    value_start: int
    value_stop: int

    @property
    def span(self) -> tuple[int, int]:
        """The key–value span ``[key_start, value_stop)``: what tells this needle from the others."""
        return self.key_start, self.value_stop


@dataclass(frozen=True, eq=False)
class RetrievalSample:
    """One sample of either task.

    Attributes:
        kind: ``"passkey"`` or ``"fwe"``.
        ids: ``[N]`` token ids (int64 NumPy array).
        answer_start: position of the first answer token (the value's first digit / the most frequent word).
        answer: the gold answer's words.
        haystack: ``[start, stop)`` of the text between the intro and the question.
        needles: passkey: the pairs in order of appearance; FWE: empty.
        gold: passkey: index (in order of appearance) of the needle the question names; FWE: -1.
        words: FWE: the planted words by rank (most frequent first); passkey: empty.
        counts: FWE: their exact counts; passkey: empty.
        word_ids: FWE: the planted words' token ids, by rank; passkey: empty.
    """

    kind: str
    ids: np.ndarray
    answer_start: int
    answer: tuple[str, ...]
    haystack: tuple[int, int]
    needles: tuple[Needle, ...] = ()
    gold: int = -1
    words: tuple[str, ...] = ()
    counts: tuple[int, ...] = field(default=())
    word_ids: tuple[int, ...] = field(default=())

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def answer_rows(self) -> range:
        """The rows that predict the answer tokens: ``answer_start − 1 … answer_start + len(answer) − 2``."""
        return range(self.answer_start - 1, self.answer_start - 1 + len(self.answer))

    @property
    def gold_is_first(self) -> bool:
        """Passkey: the gold needle is the first to appear (the paper's Table 4 split)."""
        return self.gold == 0


@dataclass(frozen=True)
class RetrievalTask:
    """The vocabulary sizes and answer shape of both tasks (lengths and key counts are per call).

    The defaults are the paper-scale task; :data:`TINY_TASK` is the CPU one.

    Attributes:
        n_adjectives, n_nouns: key words (a key is one adjective and one noun).
        value_digits: digits per value (RULER uses 7; fewer make the from-scratch models' answers shorter).
        n_coded: coded words of the FWE vocabulary.
        fwe_words: distinct coded words per FWE sample.
        fwe_alpha: Zipf exponent of the planted FWE counts (RULER's default 2.0).
        coded_seed: seed of the coded words' spellings.
    """

    n_adjectives: int = 32
    n_nouns: int = 32
    value_digits: int = 4
    n_coded: int = 64
    fwe_words: int = 16
    fwe_alpha: float = 2.0
    coded_seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_adjectives <= len(_ADJECTIVES) or not 1 <= self.n_nouns <= len(_NOUNS):
            raise ValueError(f"n_adjectives and n_nouns must be in 1..{len(_ADJECTIVES)}, 1..{len(_NOUNS)}")
        if self.value_digits < 1:
            raise ValueError(f"value_digits must be >= 1, got {self.value_digits}")
        if not 4 <= self.fwe_words <= self.n_coded:
            raise ValueError(f"need 4 <= fwe_words <= n_coded, got {self.fwe_words}, {self.n_coded}")

    # --- vocabulary -------------------------------------------------------------------------------------------------

    @cached_property
    def adjectives(self) -> tuple[str, ...]:
        return tuple(_ADJECTIVES[: self.n_adjectives])

    @cached_property
    def nouns(self) -> tuple[str, ...]:
        return tuple(_NOUNS[: self.n_nouns])

    @cached_property
    def coded_words(self) -> tuple[str, ...]:
        """``n_coded`` distinct 6-letter strings drawn with ``coded_seed`` (RULER's coded words)."""
        rng = np.random.default_rng([self.coded_seed, 7])
        taken = set(self._template_words) | set(_ADJECTIVES) | set(_NOUNS)
        out: list[str] = []
        letters = np.array(list(string.ascii_lowercase))
        while len(out) < self.n_coded:
            word = "".join(rng.choice(letters, 6))
            if word not in taken:
                taken.add(word)
                out.append(word)
        return tuple(out)

    @cached_property
    def _template_words(self) -> tuple[str, ...]:
        text = " ".join([*FILLER, _PASSKEY_INTRO, _NEEDLE_HEAD, "is :", _QUESTION_HEAD, _QUESTION_MID,
                         _FWE_INTRO, _FWE_QUESTION])  # fmt: skip
        return tuple(dict.fromkeys(text.split()))

    @cached_property
    def vocabulary(self) -> tuple[str, ...]:
        """``<pad> <eos> <unk>``, the template and filler words, the digits, the key words, the coded words."""
        words = (*_SPECIALS, *self._template_words, *(str(d) for d in range(10)), *self.adjectives, *self.nouns,
                 *self.coded_words)  # fmt: skip
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary has a repeated word")
        return words

    @cached_property
    def token_ids(self) -> dict[str, int]:
        return {w: k for k, w in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    pad_id, eos_id, unk_id = 0, 1, 2

    def to_dict(self) -> dict:
        return asdict(self)

    def _ids(self, text: str | Sequence[str]) -> np.ndarray:
        words = text.split() if isinstance(text, str) else text
        return np.array([self.token_ids[w] for w in words], dtype=np.int64)

    @cached_property
    def _parts(self) -> dict[str, np.ndarray]:
        return {
            "intro": self._ids(_PASSKEY_INTRO),
            "needle_head": self._ids(_NEEDLE_HEAD),
            "is": self._ids("is :"),
            "dot": self._ids("."),
            "q_head": self._ids(_QUESTION_HEAD),
            "q_mid": self._ids(_QUESTION_MID),
            "fwe_intro": self._ids(_FWE_INTRO),
            "fwe_question": self._ids(_FWE_QUESTION),
        }

    @cached_property
    def _filler(self) -> tuple[np.ndarray, ...]:
        return tuple(self._ids(s) for s in FILLER)

    @cached_property
    def _filler_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The filler sentences as a padded ``[sentences, longest]`` table and their lengths."""
        lengths = np.array([len(s) for s in self._filler], dtype=np.int64)
        table = np.full((len(lengths), int(lengths.max())), self.pad_id, dtype=np.int64)
        for k, sentence in enumerate(self._filler):
            table[k, : len(sentence)] = sentence
        return table, lengths

    @property
    def needle_length(self) -> int:
        """Tokens per needle: head, two key words, ``is :``, the digits, the full stop."""
        return len(self._parts["needle_head"]) + 2 + 2 + self.value_digits + 1

    def passkey_overhead(self, keys: int) -> int:
        """Tokens of a passkey sample that are not filler: intro, needles, question, answer, ``<eos>``."""
        p = self._parts
        question = len(p["q_head"]) + 2 + len(p["q_mid"]) + 2 + len(p["is"])
        return len(p["intro"]) + keys * self.needle_length + question + self.value_digits + 1

    # --- samples ----------------------------------------------------------------------------------------------------

    def passkey(self, n: int, *, length: int, keys: int, seed: int | Sequence[int]) -> list[RetrievalSample]:
        """``n`` passkey samples of exactly ``length`` tokens with ``keys`` key–value pairs, drawn with ``seed``
        (an int or a sequence of ints, NumPy's ``default_rng``)."""
        _check_n(n)
        if keys < 1 or keys > min(self.n_adjectives, self.n_nouns):
            raise ValueError(f"keys must be in 1..{min(self.n_adjectives, self.n_nouns)}, got {keys}")
        filler_budget = length - self.passkey_overhead(keys)
        if filler_budget < 0:
            raise ValueError(f"length {length} is too short for {keys} keys (needs {self.passkey_overhead(keys)})")
        rng = np.random.default_rng(seed)
        return [self._passkey_one(rng, length, keys, filler_budget) for _ in range(n)]

    def _passkey_one(self, rng: np.random.Generator, length: int, keys: int, budget: int) -> RetrievalSample:
        p = self._parts
        adjs = rng.choice(self.n_adjectives, keys, replace=False)
        nouns = rng.choice(self.n_nouns, keys, replace=False)
        pairs = [(self.adjectives[a], self.nouns[b]) for a, b in zip(adjs, nouns)]
        values: list[tuple[str, ...]] = []
        while len(values) < keys:  # distinct values, so an answer names one needle at most
            v = tuple(str(d) for d in rng.integers(0, 10, self.value_digits))
            if v not in values:
                values.append(v)
        gold = int(rng.integers(keys))
        filler, starts = self._filler_stream(rng, budget)
        # needles at sentence boundaries of the filler, distinct while there are enough of them
        cuts = np.sort(rng.choice(starts, keys, replace=len(starts) < keys))
        pieces: list[np.ndarray] = [p["intro"]]
        pos = len(p["intro"])
        needles: list[Needle] = []
        prev = 0
        for pair, value, cut in zip(pairs, values, cuts):
            pieces.append(filler[prev:cut])
            pos += int(cut) - prev
            prev = int(cut)
            key_ids, value_ids = self._ids(pair), self._ids(value)
            needle = np.concatenate([p["needle_head"], key_ids, p["is"], value_ids, p["dot"]])
            key_start = pos + len(p["needle_head"])
            value_start = key_start + 2 + len(p["is"])
            needles.append(Needle(pair, value, pos, pos + len(needle), key_start, value_start,
                                  value_start + len(value)))  # fmt: skip
            pieces.append(needle)
            pos += len(needle)
        pieces.append(filler[prev:])
        pos += budget - prev
        haystack = (len(p["intro"]), pos)
        key = self._ids(pairs[gold])
        pieces += [p["q_head"], key, p["q_mid"], key, p["is"]]
        answer_start = pos + len(p["q_head"]) + 2 + len(p["q_mid"]) + 2 + len(p["is"])
        pieces += [self._ids(values[gold]), np.array([self.eos_id])]
        ids = np.concatenate(pieces)
        assert len(ids) == length, (len(ids), length)  # the budget arithmetic of passkey_overhead
        return RetrievalSample("passkey", ids, answer_start, values[gold], haystack, tuple(needles), gold)

    def _filler_stream(self, rng: np.random.Generator, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """``budget`` filler tokens (whole sentences, the last one cut) and the offsets where a sentence starts."""
        lengths = self._filler_table[1]
        # enough sentences even if every draw is the shortest; drawn at once (one call, not one per sentence)
        drawn = rng.integers(len(self._filler), size=budget // int(lengths.min()) + 1)
        ends = np.cumsum(lengths[drawn])
        used = drawn[: int(np.searchsorted(ends, budget)) + 1] if budget else drawn[:0]
        table, lengths = self._filler_table
        stream = table[used][np.arange(table.shape[1]) < lengths[used][:, None]][:budget]
        starts = np.concatenate([[0], ends[: len(used)]])
        return stream, starts[starts <= budget]

    def fwe_haystack_length(self, length: int) -> int:
        """Coded-word tokens of an FWE sample of ``length`` tokens."""
        p = self._parts
        return length - len(p["fwe_intro"]) - len(p["fwe_question"]) - 3 - 1

    def fwe(self, n: int, *, length: int, seed: int | Sequence[int]) -> list[RetrievalSample]:
        """``n`` FWE samples of exactly ``length`` tokens, drawn with ``seed``; counts from :func:`planted_counts`."""
        _check_n(n)
        total = self.fwe_haystack_length(length)
        counts = planted_counts(total, self.fwe_words, self.fwe_alpha)
        rng = np.random.default_rng(seed)
        p = self._parts
        out = []
        for _ in range(n):
            chosen = rng.choice(self.n_coded, self.fwe_words, replace=False)
            words = tuple(self.coded_words[c] for c in chosen)
            word_ids = self._ids(words)
            haystack = rng.permutation(np.repeat(word_ids, counts))
            start = len(p["fwe_intro"])
            answer_start = start + total + len(p["fwe_question"])
            ids = np.concatenate([p["fwe_intro"], haystack, p["fwe_question"], word_ids[:3], [self.eos_id]])
            out.append(RetrievalSample("fwe", ids.astype(np.int64), answer_start, words[:3], (start, start + total),
                                       words=words, counts=counts, word_ids=tuple(word_ids.tolist())))  # fmt: skip
        return out

    # --- encoding ---------------------------------------------------------------------------------------------------

    def encode(self, samples: Sequence[RetrievalSample]) -> Tensor:
        """``[n, N]`` token ids of samples of one length."""
        lengths = {s.length for s in samples}
        if len(lengths) != 1:
            raise ValueError(f"samples of one length only, got lengths {sorted(lengths)}")
        return torch.from_numpy(np.stack([s.ids for s in samples]))

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor) -> tuple[str, ...]:
        """The words of ``ids``."""
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return tuple(self.vocabulary[int(i)] for i in values)

    def tokenizer(self):
        """A word-level ``PreTrainedTokenizerFast`` (split on whitespace, one id per word, nothing added).

        Example:
            >>> task = RetrievalTask(**TINY_TASK)
            >>> s = task.fwe(1, length=128, seed=0)[0]
            >>> task.tokenizer()(" ".join(task.decode(s.ids))).input_ids == s.ids.tolist()
            True
        """
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(self.token_ids), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples must be a positive int, got {n!r}")
