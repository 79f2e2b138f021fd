"""Small trained copy models shipped inside the package (no downloads): ``copy-mamba1`` and ``copy-mamba2``.

Each folder holds ``model.safetensors`` (float16 to keep the wheel small; loaded as float32), ``config.json``, a
character tokenizer (``tokenizer.json``) and a ``README.md`` model card with the training command, seed, steps and
held-out copy accuracy. Retrain with ``python -m latim_captum.copying.train --variant mamba1 --scale tiny ...``.

Example:
    >>> model, tok = load_copy_model("mamba2")
    >>> tok.decode(model(**tok("abcdefghij|abcdefghi", return_tensors="pt")).logits[0, -1:].argmax(-1))
    'j'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["COPY_MODELS", "copy_model_path", "copy_task_of", "load_copy_model"]

_HERE = Path(__file__).resolve().parent
COPY_MODELS = {"mamba1": "copy-mamba1", "mamba2": "copy-mamba2"}


def copy_model_path(name: str) -> Path:
    """Folder of the embedded model ``name`` (``"mamba1"`` or ``"mamba2"``)."""
    if name not in COPY_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose from {', '.join(COPY_MODELS)}")
    path = _HERE / COPY_MODELS[name]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"embedded model files missing at {path}; reinstall latim-captum")
    return path


def load_copy_model(name: str) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` of an embedded copy model, float32, eval mode, on CPU."""
    from .._loading import load_pretrained

    return load_pretrained(copy_model_path(name), dtype=torch.float32)


def copy_task_of(name: str):
    """The :class:`~latim_captum.copying.CopyTask` (and training seed) the embedded model ``name`` was trained on."""
    from ..copying.data import CopyTask

    meta = json.loads((copy_model_path(name) / "metrics.json").read_text())
    return CopyTask(**meta["task"]), int(meta["seed"])
