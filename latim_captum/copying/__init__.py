"""The copying task of LaTIM §4.1 / App. B.1: data, faithfulness metrics, training and evaluation."""

from .data import CopyTask, copy_tokenizer
from .metrics import average_precision, copy_ground_truth, faithfulness, recall_at_k, roc_auc

__all__ = [
    "CopyTask",
    "average_precision",
    "copy_ground_truth",
    "copy_tokenizer",
    "faithfulness",
    "recall_at_k",
    "roc_auc",
]
