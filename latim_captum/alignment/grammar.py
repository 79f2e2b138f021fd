"""A synthetic source language, its lexicon into a target language, and sentence pairs with gold word alignments.

Everything is code and a seed, nothing is data: the word forms are drawn from syllables with
``random.Random(lexicon_seed)`` (source words from the consonants ``bdgklmnprst``, target words from ``cfhjqvwxz``,
so no string is a word of both languages), and each sentence from ``random.Random`` seeded per split.

Source grammar (SVO, articles before the noun, adjectives before the noun)::

    S      → Clause | Clause CONJ Clause | Clause SUB Clause
    Clause → NP V_t NP [PP] [ADV] | NP V_i [PP] [ADV]
    NP     → [DET] ADJ{0..2} N
    PP     → PREP NP

Translation rules (each emits the target words with their gold links to the source words):

==================  ===============================================  ==========================================
rule                target                                           gold links
==================  ===============================================  ==========================================
noun, verb          one word, or two for the ``fertility`` share     sure, every target word → its source word
                    of nouns and verbs (one-to-two)
adjective, adverb   one word                                         sure
article (DET)       dropped                                          possible only: the noun's words → DET
PREP, CONJ, SUB     one target function word                         possible (function words)
object marker       ``xo`` inserted after the object NP              possible: ``xo`` → the object's noun
adjective–noun      ``DET A1 A2 N`` → ``N' A2' A1'`` (mirror order)  —
clause after SUB    verb-final: ``NP V NP PP ADV`` →                 —
                    ``NP' NP' xo PP' ADV' V'``
==================  ===============================================  ==========================================

Links are ``(s, t)`` pairs (source word index, target word index, 0-based), the Pharaoh order; the possible set
contains the sure set (``S ⊆ P``, Och & Ney 2000).

Example:
    >>> lex = build_lexicon(n_nouns=6, n_adjectives=3, n_transitive=3, n_intransitive=2, n_adverbs=2, seed=0)
    >>> pair = sample_pair(lex, random.Random(0), min_words=5, max_words=12)
    >>> 5 <= len(pair.source) <= 12 and pair.sure <= pair.possible
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = [
    "CONTENT_CLASSES",
    "OBJECT_MARKER",
    "SOURCE_FUNCTION_WORDS",
    "TARGET_FUNCTION_WORDS",
    "Lexicon",
    "Pair",
    "build_lexicon",
    "sample_pair",
]

SOURCE_CONSONANTS = "bdgklmnprst"
TARGET_CONSONANTS = "cfhjqvwxz"
VOWELS = "aeiou"

#: the source language's function words, per class (two letters: no generated content word, of 4+ letters, equals one)
SOURCE_FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "det": ("ta", "na"),
    "prep": ("ba", "do", "ke", "mi", "pu", "se"),
    "conj": ("ro", "li"),
    "sub": ("ga", "te"),
}
#: their translations, position by position (articles have none: they are dropped)
TARGET_FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "prep": ("fa", "ho", "ji", "vu", "wi", "ze"),
    "conj": ("qa", "xe"),
    "sub": ("fu", "ha"),
}
#: the target's object marker, with no source word of its own
OBJECT_MARKER = "xo"
#: the content word classes, in vocabulary order; nouns and verbs may translate into two words
CONTENT_CLASSES: tuple[str, ...] = ("noun", "adjective", "transitive", "intransitive", "adverb")
_FERTILE = ("noun", "transitive", "intransitive")

# sentence shape: probabilities of the optional parts (chosen to give 5–20 word sentences most of the time)
_P_SECOND_CLAUSE = 0.45
_P_TRANSITIVE = 0.6
_P_DET = 0.6
_N_ADJ_WEIGHTS = (0.5, 0.35, 0.15)  # 0, 1, 2 adjectives
_P_PP = 0.35
_P_ADV = 0.3


@dataclass(frozen=True)
class Pair:
    """A sentence pair and its gold alignment.

    Attributes:
        source: the source words.
        target: the target words.
        sure: sure links ``(s, t)``: lexical translations.
        possible: possible links ``(s, t)``, a superset of ``sure`` (function words, dropped articles, markers).
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    sure: frozenset[tuple[int, int]]
    possible: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class Lexicon:
    """Source content words per class and every source word's translation.

    Attributes:
        words: source words per class (:data:`CONTENT_CLASSES` and the function classes of
            :data:`SOURCE_FUNCTION_WORDS`).
        translations: source word → its target words (empty for articles, two words for fertile ones).
    """

    words: dict[str, tuple[str, ...]]
    translations: dict[str, tuple[str, ...]] = field(repr=False)

    @property
    def source_vocabulary(self) -> list[str]:
        """Every source word, content classes first, in a fixed order."""
        return [w for cls in (*CONTENT_CLASSES, *SOURCE_FUNCTION_WORDS) for w in self.words[cls]]

    @property
    def target_vocabulary(self) -> list[str]:
        """Every target word (each once), in the order of the source words, then the object marker."""
        seen: dict[str, None] = {}
        for word in self.source_vocabulary:
            seen.update(dict.fromkeys(self.translations[word]))
        seen[OBJECT_MARKER] = None
        return list(seen)


def _forms(rng: random.Random, consonants: str, n: int, taken: set[str]) -> list[str]:
    """``n`` new words of 2–3 consonant–vowel syllables, none in ``taken`` (which they are added to)."""
    out: list[str] = []
    while len(out) < n:
        syllables = 2 if rng.random() < 0.7 else 3
        word = "".join(rng.choice(consonants) + rng.choice(VOWELS) for _ in range(syllables))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def build_lexicon(
    *,
    n_nouns: int,
    n_adjectives: int,
    n_transitive: int,
    n_intransitive: int,
    n_adverbs: int,
    fertility: float = 0.2,
    seed: int = 0,
) -> Lexicon:
    """The seeded lexicon: content words of both languages and which nouns/verbs translate into two words.

    ``round(fertility · n)`` words of each of the noun and verb classes are fertile (one source word, two target
    words); the rest translate one-to-one.
    """
    sizes = dict(zip(CONTENT_CLASSES, (n_nouns, n_adjectives, n_transitive, n_intransitive, n_adverbs)))
    for cls, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the lexicon needs at least one {cls}, got {n!r}")
    if not 0.0 <= fertility <= 1.0:
        raise ValueError(f"fertility must be in [0, 1], got {fertility!r}")
    rng = random.Random(seed)
    taken_src: set[str] = set()
    taken_tgt: set[str] = set()
    words = {cls: tuple(_forms(rng, SOURCE_CONSONANTS, n, taken_src)) for cls, n in sizes.items()}
    translations: dict[str, tuple[str, ...]] = {}
    for cls in CONTENT_CLASSES:
        fertile = set(rng.sample(words[cls], round(fertility * len(words[cls])))) if cls in _FERTILE else set()
        for word in words[cls]:
            translations[word] = tuple(_forms(rng, TARGET_CONSONANTS, 2 if word in fertile else 1, taken_tgt))
    for cls, function_words in SOURCE_FUNCTION_WORDS.items():
        words[cls] = function_words
        for k, word in enumerate(function_words):
            translations[word] = (TARGET_FUNCTION_WORDS[cls][k],) if cls in TARGET_FUNCTION_WORDS else ()
    return Lexicon(words=words, translations=translations)


class _Builder:
    """Collects the source words, then the target words with their links."""

    def __init__(self, lex: Lexicon, rng: random.Random) -> None:
        self.lex, self.rng = lex, rng
        self.source: list[str] = []
        self.target: list[str] = []
        self.sure: set[tuple[int, int]] = set()
        self.possible: set[tuple[int, int]] = set()

    # --- source side: each returns the source index (or indices) of what it wrote ---
    def word(self, cls: str) -> int:
        self.source.append(self.rng.choice(self.lex.words[cls]))
        return len(self.source) - 1

    def noun_phrase(self) -> dict:
        det = self.word("det") if self.rng.random() < _P_DET else None
        n_adj = self.rng.choices(range(len(_N_ADJ_WEIGHTS)), weights=_N_ADJ_WEIGHTS)[0]
        adjectives = [self.word("adjective") for _ in range(n_adj)]
        return {"det": det, "adjectives": adjectives, "noun": self.word("noun")}

    def clause(self) -> dict:
        subject = self.noun_phrase()
        transitive = self.rng.random() < _P_TRANSITIVE
        verb = self.word("transitive" if transitive else "intransitive")
        obj = self.noun_phrase() if transitive else None
        pp = (self.word("prep"), self.noun_phrase()) if self.rng.random() < _P_PP else None
        adverb = self.word("adverb") if self.rng.random() < _P_ADV else None
        return {"subject": subject, "verb": verb, "object": obj, "pp": pp, "adverb": adverb}

    # --- target side ---
    def emit(self, s: int, kind: str) -> None:
        """The translation of source word ``s``, every target word linked to it (``kind``: sure or possible)."""
        for word in self.lex.translations[self.source[s]]:
            self.target.append(word)
            self.link(s, len(self.target) - 1, kind)

    def link(self, s: int, t: int, kind: str) -> None:
        self.possible.add((s, t))
        if kind == "sure":
            self.sure.add((s, t))

    def emit_noun_phrase(self, np: dict) -> None:
        start = len(self.target)
        self.emit(np["noun"], "sure")
        if np["det"] is not None:  # the article is dropped; its noun's words may stand for it
            for t in range(start, len(self.target)):
                self.link(np["det"], t, "possible")
        for a in reversed(np["adjectives"]):  # adjective–noun swap, mirror order
            self.emit(a, "sure")

    def emit_object(self, np: dict) -> None:
        self.emit_noun_phrase(np)
        self.target.append(OBJECT_MARKER)
        self.link(np["noun"], len(self.target) - 1, "possible")

    def emit_clause(self, c: dict, verb_final: bool) -> None:
        self.emit_noun_phrase(c["subject"])
        if not verb_final:
            self.emit(c["verb"], "sure")
        if c["object"] is not None:
            self.emit_object(c["object"])
        if c["pp"] is not None:
            self.emit(c["pp"][0], "possible")
            self.emit_noun_phrase(c["pp"][1])
        if c["adverb"] is not None:
            self.emit(c["adverb"], "sure")
        if verb_final:
            self.emit(c["verb"], "sure")


def sample_pair(lex: Lexicon, rng: random.Random, *, min_words: int, max_words: int) -> Pair:
    """One sentence pair of ``min_words``–``max_words`` source words (drawn again until the length fits)."""
    if not 2 <= min_words <= max_words:
        raise ValueError(f"need 2 <= min_words <= max_words, got {min_words}, {max_words}")
    for _ in range(10_000):
        b = _Builder(lex, rng)
        first = b.clause()
        joint, second = None, None
        if rng.random() < _P_SECOND_CLAUSE:
            kind = "sub" if rng.random() < 0.5 else "conj"
            joint = (kind, b.word(kind))
            second = b.clause()
        if not min_words <= len(b.source) <= max_words:
            continue
        b.emit_clause(first, verb_final=False)
        if joint is not None:
            b.emit(joint[1], "possible")
            b.emit_clause(second, verb_final=joint[0] == "sub")
        return Pair(tuple(b.source), tuple(b.target), frozenset(b.sure), frozenset(b.possible))
    raise ValueError(f"no sentence of {min_words}–{max_words} words in 10,000 draws; widen the range")
