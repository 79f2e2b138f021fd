"""The paper's long-context retrieval study (§4.3, Tables 4 and 6, Figure 3) on tasks generated offline: passkey
retrieval with several keys and frequent-word extraction (:mod:`.data`), accuracy and attribution-share measures
(:mod:`.metrics`), one query row per answer token for every method (:mod:`.attribution`), training (:mod:`.train`)
and the evaluation with its report and figures (:mod:`.evaluate`, ``latim bench retrieval``)."""

from .data import KEYS, LENGTHS, TINY_TASK, Needle, RetrievalSample, RetrievalTask, planted_counts
from .metrics import (
    CATEGORIES,
    fwe_labels,
    fwe_outcome,
    passkey_labels,
    passkey_outcome,
    span_shares,
    summarize_passkey,
)

__all__ = [
    "CATEGORIES",
    "KEYS",
    "LENGTHS",
    "TINY_TASK",
    "Needle",
    "RetrievalSample",
    "RetrievalTask",
    "fwe_labels",
    "fwe_outcome",
    "passkey_labels",
    "passkey_outcome",
    "planted_counts",
    "span_shares",
    "summarize_passkey",
]
