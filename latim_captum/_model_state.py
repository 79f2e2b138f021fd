"""What LaTIM changes on a model while it runs it, given back afterwards, safely under threads.

Two things are changed for the length of a call:

* the training flags: :func:`eval_mode` switches every module to eval and puts back each module's own flag (not the
  top-level mode: ``model.train(); model.backbone.layers[0].eval()`` comes back exactly so). Calls on one model from
  several threads share one eval scope, counted: the first to enter saves the flags, the last to leave restores
  them, so no call restores them while another still runs its forward pass.
* forward hooks: :class:`CallHooks` registers hooks that record only the forward pass of the thread that registered
  them (every forward of a module runs every hook registered on it, whichever thread called it) and removes them all
  on exit, whatever happens.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)).train()
    >>> _ = model[0].eval()
    >>> with eval_mode(model):
    ...     [m.training for m in model.modules()]
    [False, False, False]
    >>> [m.training for m in model.modules()]
    [True, False, True]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["CallHooks", "eval_mode", "check_grad_mode"]

_mode_lock = threading.Lock()


@dataclass
class _EvalScope:
    model: nn.Module
    flags: list[tuple[nn.Module, bool]] = field(default_factory=list)
    users: int = 0


#: the models in an eval scope now, by id (a scope holds its model, so the id cannot be reused meanwhile)
_scopes: dict[int, _EvalScope] = {}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode inside the block; each module's own flag comes back afterwards.

    Counted per model: nested or concurrent blocks (other threads) share the scope, and the flags saved by the first
    are restored by the last to leave.
    """
    with _mode_lock:
        scope = _scopes.get(id(model))
        if scope is None:
            scope = _scopes[id(model)] = _EvalScope(model, [(m, m.training) for m in model.modules()])
            model.eval()
        scope.users += 1
    try:
        yield
    finally:
        with _mode_lock:
            scope.users -= 1
            if scope.users == 0:
                del _scopes[id(model)]
                for module, flag in scope.flags:  # each module's own flag: train()/eval() would recurse
                    module.training = flag


class CallHooks:
    """Forward hooks of one call: each runs only on the thread that registered it; all removed on exit.

    PyTorch runs every hook registered on a module for every forward pass of it, from any thread, so hooks that
    record tensors would otherwise record another caller's forward pass. A hook is skipped (returns None) on any
    other thread. Its wrapper takes any arguments: PyTorch may call a hook with or without ``kwargs`` while another
    thread removes it.

    Example:
        >>> with CallHooks() as hooks:                                       # doctest: +SKIP
        ...     hooks.pre(block, lambda module, args: seen.append(args[0]))
        ...     model(ids)
    """

    def __init__(self) -> None:
        self._owner = threading.get_ident()
        self._handles: list[Any] = []

    def __enter__(self) -> CallHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook registered so far."""
        while self._handles:
            self._handles.pop().remove()

    def _own(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        owner = self._owner

        def hook(*args: Any) -> Any:
            return fn(*args) if threading.get_ident() == owner else None

        return hook

    def pre(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """``fn(module, args)`` (``fn(module, args, kwargs)`` with ``with_kwargs``) before ``module``'s forward."""
        self._handles.append(module.register_forward_pre_hook(self._own(fn), with_kwargs=with_kwargs))

    def post(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """``fn(module, args, output)`` (``fn(module, args, kwargs, output)``) after ``module``'s forward; a value
        returned replaces the output."""
        self._handles.append(module.register_forward_hook(self._own(fn), with_kwargs=with_kwargs))


def check_grad_mode(method: str) -> None:
    """``RuntimeError`` naming ``method`` when called under :func:`torch.inference_mode`, which no gradient survives
    (``torch.no_grad()`` is fine: the gradient methods turn gradients back on for themselves)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} differentiates through the model, and torch.inference_mode() forbids gradients; call it "
            "outside inference_mode (under torch.no_grad() is fine)"
        )
