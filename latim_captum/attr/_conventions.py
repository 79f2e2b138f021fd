"""Captum's calling conventions that have no LaTIM counterpart: what is refused, what is accepted and ignored.

A Captum pipeline written for :class:`captum.attr.IntegratedGradients` passes ``baselines``, ``n_steps``,
``method`` and ``internal_batch_size``. LaTIM decomposes one forward pass: it has no baseline and no integration
path. So:

- ``baselines=None`` is accepted; any other baseline is an error (scores computed "against" a baseline LaTIM never
  reads would be silently wrong);
- ``n_steps`` and ``method`` (the integration rule) are accepted and ignored with a warning (they change no number);
- ``internal_batch_size`` is honoured: at most that many examples go through the model at once (memory bound, same
  numbers);
- under :class:`captum.attr.NoiseTunnel` a method that explains a token needs ``target=``, as Captum's own methods
  do: the default (each input's predicted token) would differ between noisy copies (:func:`inside_noise_tunnel`).

Example:
    >>> check_ig_arguments("LaTIM (ALTI-Logit)", None, None, None, None)        # nothing to say
    >>> check_ig_arguments("LaTIM (ALTI-Logit)", 0.0, None, None, None)         # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: LaTIM (ALTI-Logit) needs no baseline ...
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from torch import Tensor

__all__ = ["check_ig_arguments", "check_internal_batch_size", "float_ids_error", "inside_noise_tunnel"]


def inside_noise_tunnel(max_frames: int = 16) -> bool:
    """Whether the caller runs inside :meth:`captum.attr.NoiseTunnel.attribute`.

    NoiseTunnel calls ``attribute.__wrapped__`` on each batch of noisy copies and expands only the arguments it
    knows; the call itself carries no mark, so the stack is read (a few frames, and only on the path that needs it).

    Example:
        >>> inside_noise_tunnel()
        False
    """
    from captum.attr import NoiseTunnel

    frame = sys._getframe(1)
    for _ in range(max_frames):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), NoiseTunnel):
            return True
        frame = frame.f_back
    return False


def check_internal_batch_size(internal_batch_size: Any) -> int | None:
    """``internal_batch_size`` as examples per model pass (None: the whole batch); ``ValueError`` otherwise."""
    if internal_batch_size is None:
        return None
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
    return internal_batch_size


def check_ig_arguments(name: str, baselines: Any, n_steps: Any, method: Any, internal_batch_size: Any) -> int | None:
    """Check Integrated-Gradients-shaped arguments; returns the checked ``internal_batch_size``.

    Raises:
        ValueError: a baseline other than None, or a bad ``internal_batch_size``.
    """
    if baselines is not None:
        raise ValueError(
            f"{name} needs no baseline: it decomposes the forward pass of the input itself, so baselines= must be "
            f"None (got {type(baselines).__name__})"
        )
    ignored = [arg for arg, value in (("n_steps", n_steps), ("method", method)) if value is not None]
    if ignored:
        warnings.warn(
            f"{name} has no integration path; {' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored",
            UserWarning,
            stacklevel=3,
        )
    return check_internal_batch_size(internal_batch_size)


def float_ids_error(x: Tensor) -> ValueError:
    """The error for a floating-point ``[B, N]`` input: token ids with noise added (Captum's NoiseTunnel)."""
    return ValueError(
        f"inputs is a floating-point tensor of shape {tuple(x.shape)}: token ids must be integers, and NoiseTunnel "
        "cannot add noise to token ids; pass inputs_embeds [batch, seq_len, d_model] instead (NoiseTunnel works there)"
    )
