"""Copying-task data (Jelassi et al., 2024; LaTIM App. B.1): ``source <SEP> copy``.

A sample is ``L`` random symbols, the separator, then the same ``L`` symbols again: ``2L + 1`` tokens. The vocabulary
holds ``vocab_size - 1`` symbols and the separator (the paper: 32 tokens in all, ``L = 50``). Symbol ``k`` is the
character ``SYMBOLS[k]``; the separator is ``"|"``, so a sample reads ``"abc|abc"`` for the shipped tokenizers.

Positions (0-based): source ``0..L-1``, separator ``L``, copy ``L+1..2L``. The model's prediction at position ``i``
(query row ``i``) is the token at ``i + 1``, so the rows that produce the copy are ``i = L..2L-1`` and row ``i``
emits ``source[i - L]``.

Example:
    >>> task = CopyTask(length=4, vocab_size=8)
    >>> ids = task.sample(2, seed=0)
    >>> ids.shape, bool((ids[:, :4] == ids[:, 5:]).all()), bool((ids[:, 4] == task.sep_id).all())
    (torch.Size([2, 9]), True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["PAD", "SEP", "SYMBOLS", "UNK", "CopyTask", "copy_tokenizer", "model_vocab_size"]

SEP = "|"
#: the models' pad token (also the config's BOS, which Inseq reads; there is no EOS) and unknown-character token: ids
#: ``vocab_size`` and ``vocab_size + 1``, one past the task's (never in a sample, so never a target). The separator
#: stays an ordinary token: Inseq and Captum leave special tokens out of their labels, and a separator that was the pad
#: token shifted every label after it.
PAD = "<pad>"
UNK = "<unk>"
SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class CopyTask:
    """Shape of the copying task.

    Attributes:
        length: ``L``, the number of symbols in the source string (paper: 50).
        vocab_size: total vocabulary, separator included (paper: 32).
    """

    length: int = 50
    vocab_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 2:
            raise ValueError(f"copy length must be an int >= 2, got {self.length!r}")
        if not isinstance(self.vocab_size, int) or not 3 <= self.vocab_size <= len(SYMBOLS) + 1:
            raise ValueError(f"vocab_size must be an int in [3, {len(SYMBOLS) + 1}], got {self.vocab_size!r}")

    @property
    def sep_id(self) -> int:
        """Id of the separator: the last id of the vocabulary."""
        return self.vocab_size - 1

    @property
    def seq_len(self) -> int:
        """``2L + 1`` tokens per sample."""
        return 2 * self.length + 1

    @property
    def query_rows(self) -> range:
        """Rows whose next-token prediction is a copied token: ``L..2L-1`` (row ``i`` emits ``source[i - L]``)."""
        return range(self.length, 2 * self.length)

    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` samples ``[n, 2L + 1]`` (int64), the same for the same seed on every machine."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        gen = torch.Generator().manual_seed(seed)
        source = torch.randint(0, self.vocab_size - 1, (n, self.length), generator=gen)
        sep = torch.full((n, 1), self.sep_id, dtype=torch.long)
        return torch.cat([source, sep, source], dim=1)

    def splits(self, n_train: int = 5000, n_eval: int = 128, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Train and evaluation sets drawn from different seeds (``seed`` and ``seed + 1``)."""
        return self.sample(n_train, seed), self.sample(n_eval, seed + 1)

    def loss_mask(self) -> Tensor:
        """``[2L + 1]`` bool: True at the query rows, the positions whose next-token loss is trained."""
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[self.length : 2 * self.length] = True
        return mask

    def to_dict(self) -> dict:
        return asdict(self)

    def encode_text(self, ids: Tensor) -> list[str]:
        """Ids ``[n, N]`` to strings (separator ``"|"``)."""
        chars = SYMBOLS[: self.vocab_size - 1] + SEP
        return ["".join(chars[t] for t in row.tolist()) for row in ids]


def model_vocab_size(vocab_size: int) -> int:
    """Rows of a copy model's embedding for a task of ``vocab_size`` tokens: the task's, then :data:`PAD` and
    :data:`UNK`."""
    return vocab_size + 2


def copy_tokenizer(vocab_size: int):
    """A character-level ``PreTrainedTokenizerFast``: symbol ``k`` is ``SYMBOLS[k]``, id ``vocab_size - 1`` is the
    separator ``"|"`` (an ordinary token), then the special :data:`PAD` and :data:`UNK` (any other character).

    Every character is one token (no spaces, no special tokens added), so ``tok("abc|abc").input_ids`` are the ids
    of :class:`CopyTask`; decoding joins the tokens without spaces, so decoded text tokenizes back to the same ids.

    Example:
        >>> tok = copy_tokenizer(8)
        >>> tok("ab|ab").input_ids, tok.pad_token_id, tok("a?").input_ids
        ([0, 1, 7, 0, 1], 8, [0, 9])
        >>> tok.decode([0, 1, 7, 0, 1])
        'ab|ab'
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    CopyTask(length=2, vocab_size=vocab_size)  # validates vocab_size
    vocab = {ch: k for k, ch in enumerate(SYMBOLS[: vocab_size - 1])}
    vocab[SEP] = vocab_size - 1
    vocab[PAD] = vocab_size
    vocab[UNK] = vocab_size + 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # no BOS or EOS: the tokenizer adds none, and a copy string has a fixed length (an EOS equal to the pad token
    # keeps HF's generate from telling padding from text, so a left-padded batch would read its padding)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD)
