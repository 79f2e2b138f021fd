"""The paper's machine-translation alignment study (§4.2, Table 3) on a synthetic task with gold alignments by
construction: grammar and lexicon (:mod:`.grammar`), ``source <sep> target <eos>`` samples and tokenizer
(:mod:`.data`), AER and hard-alignment extraction (:mod:`.metrics`), training (:mod:`.train`) and the evaluation
(:mod:`.evaluate`, ``latim bench alignment``)."""

from .data import TINY_TASK, AlignmentBatch, AlignmentTask
from .grammar import Lexicon, Pair, build_lexicon, sample_pair
from .metrics import ROWS, alignment_error_rate, batch_alignments, extract_alignment, monotone_alignment

__all__ = [
    "ROWS",
    "TINY_TASK",
    "AlignmentBatch",
    "AlignmentTask",
    "Lexicon",
    "Pair",
    "alignment_error_rate",
    "batch_alignments",
    "build_lexicon",
    "extract_alignment",
    "monotone_alignment",
    "sample_pair",
]
