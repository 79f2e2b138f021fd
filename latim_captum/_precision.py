"""IEEE float32 maths on CUDA while LaTIM recomputes and decomposes a layer.

PyTorch lets cuDNN run float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32 = True``) and many
training scripts switch TF32 on for matmuls as well. Either costs ~1e-3 relative accuracy, enough to break the exact
invariants of the decomposition (contributions summing to the layer's output) and to make CUDA maps disagree with
CPU ones. The flags are process-wide, so they are set only inside the block and restored afterwards; blocks that
overlap (nested, or in other threads) are counted, so the flags saved by the first are restored by the last to leave
and no thread computes with TF32 switched back on under it (another thread's own float32 work, outside LaTIM, runs
without TF32 while LaTIM computes).

Example:
    >>> with fp32_math():                        # doctest: +SKIP
    ...     conv = F.conv1d(x, w, groups=x.shape[1])   # full fp32 even on CUDA
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["fp32_math", "round_tf32"]


_lock = threading.Lock()
#: ``tf32_matmul`` of every block open now, in any thread
_open: list[bool] = []
#: the flags found when the first block opened: (matmul, cudnn)
_saved: tuple[bool, bool] = (False, False)


def _apply() -> None:
    # TF32 matmuls only while every open block allows them: the stricter request wins
    torch.backends.cuda.matmul.allow_tf32 = all(_open)
    torch.backends.cudnn.allow_tf32 = False


@contextlib.contextmanager
def fp32_math(tf32_matmul: bool = False) -> Iterator[None]:
    """No TF32 in cuDNN convolutions, nor in CUDA matmuls unless ``tf32_matmul`` (and every other open block allows
    them); the flags found before the first open block come back when the last one closes."""
    global _saved
    with _lock:
        if not _open:
            _saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        _open.append(tf32_matmul)
        _apply()
    try:
        yield
    finally:
        with _lock:
            _open.remove(tf32_matmul)
            if _open:
                _apply()
            else:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _saved


def round_tf32(t: Tensor) -> Tensor:
    """``t`` (float32) rounded to the nearest TF32 value: 10 mantissa bits, ties away from zero, as PTX's
    ``cvt.rna.tf32.f32``; finite values. The fused kernel rounds its operands this way, and the tests emulate TF32
    GEMMs on a CPU with it.

    Example:
        >>> round_tf32(torch.tensor([1.0 + 2**-11, 1.0 + 2**-12]))   # a tie rounds away from zero
        tensor([1.0010, 1.0000])
    """
    if t.dtype != torch.float32:
        raise ValueError(f"round_tf32 takes float32, not {t.dtype}")
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)
