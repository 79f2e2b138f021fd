"""IEEE float32 maths on CUDA while LaTIM recomputes and decomposes a layer.

PyTorch lets cuDNN run float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32 = True``) and many
training scripts switch TF32 on for matmuls as well. Either costs ~1e-3 relative accuracy, enough to break the exact
invariants of the decomposition (contributions summing to the layer's output) and to make CUDA maps disagree with
CPU ones. The flags are process-wide, so they are set only inside the block and restored afterwards.

Example:
    >>> with fp32_math():                        # doctest: +SKIP
    ...     conv = F.conv1d(x, w, groups=x.shape[1])   # full fp32 even on CUDA
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["fp32_math", "round_tf32"]


@contextlib.contextmanager
def fp32_math(tf32_matmul: bool = False) -> Iterator[None]:
    """No TF32 in cuDNN convolutions, nor in CUDA matmuls unless ``tf32_matmul``; the previous flags come back."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_conv = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_conv


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
