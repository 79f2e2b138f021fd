"""The trained models of the task benchmarks: HF ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` from configs.

``act`` is HF's ``hidden_act``, the conv activation ``φ = act(ψ)`` of eq 18 (Mamba-1's gate and Mamba-2's gated
norm keep SiLU whatever it is): ``"silu"`` (Mamba's own), ``"relu"``, or ``"linear"`` (none: ``φ = ψ``, the model
whose decomposition with ``activation="identity"`` is exact; the paper's Table 5 "Identity" row).

mamba-ssm's and causal-conv1d's CUDA kernels do not follow ``hidden_act``: mamba-ssm's fused Mamba-1 training path
always applies SiLU in the conv, and the kernels accept only SiLU or no activation (``None``; HF hands them the
config's name, so ``"linear"`` and ``"relu"`` are refused). :func:`prepare_for_kernels_` hands them ``None`` for a
``"linear"`` model (what "linear" means), which lets Mamba-2 train on the kernels; :func:`check_device_forward`
compares the model's training-mode forward on the device with the CPU's PyTorch path (which follows the config)
before training, so a variant never trains as another model than its config says (Mamba-1 ``linear`` and every
``relu`` model fail it on a GPU with the kernels); ``--kernels off`` in the trainers hides the kernels from HF, and
``--kernels unfused`` keeps them, unfused, with the model's own activation between them
(:mod:`latim_captum.tasks.unfused`).

Example:
    >>> m = build_model("mamba2", layers=1, d_model=32, state=8, vocab=16, head_dim=16, seq_len=20, act="linear")
    >>> m.config.hidden_act, m.config.chunk_size
    ('linear', 32)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from .._precision import fp32_math

__all__ = [
    "DeviceCheck",
    "HIDDEN_ACTS",
    "VARIANTS",
    "block_kernels",
    "mamba_mixers",
    "build_model",
    "check_conv_kernel_layout",
    "check_device_forward",
    "full_fp32_matmuls",
    "hf_torch_path",
    "prepare_for_kernels_",
]

#: the conv activations the trainers offer (HF ``hidden_act`` names)
HIDDEN_ACTS: tuple[str, ...] = ("silu", "relu", "linear")
VARIANTS: tuple[str, ...] = ("mamba1", "mamba2")
_KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d")


def build_model(
    variant: str,
    *,
    layers: int,
    d_model: int,
    state: int,
    vocab: int,
    head_dim: int = 64,
    seq_len: int = 101,
    act: str = "silu",
    special_id: int | None = None,
) -> nn.Module:
    """A fresh HF causal LM (no dropout exists in HF Mamba; ``use_cache=False``).

    Args:
        variant: ``"mamba1"`` or ``"mamba2"``.
        seq_len: the longest sample; Mamba-2's chunk covers it (one chunk per sample, at most 256).
        act: the conv activation, one of :data:`HIDDEN_ACTS`.
        special_id: the pad/bos/eos id of the config (default: the last id).
    """
    if act not in HIDDEN_ACTS:
        raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(HIDDEN_ACTS)}")
    special = vocab - 1 if special_id is None else special_id
    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        state_size=state,
        num_hidden_layers=layers,
        hidden_act=act,
        use_cache=False,
        pad_token_id=special,
        bos_token_id=special,
        eos_token_id=special,
    )
    if variant == "mamba1":
        from transformers import MambaConfig, MambaForCausalLM

        return MambaForCausalLM(MambaConfig(**common))
    if variant == "mamba2":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        d_inner = 2 * d_model
        if d_inner % head_dim:
            raise ValueError(f"2 * d_model = {d_inner} is not a multiple of head_dim {head_dim}")
        chunk = 1 << max(4, math.ceil(math.log2(seq_len)))  # one chunk covers the whole sample
        cfg = Mamba2Config(
            **common,
            expand=2,
            head_dim=head_dim,
            num_heads=d_inner // head_dim,
            n_groups=1,
            chunk_size=min(chunk, 256),
            tie_word_embeddings=True,
        )
        return Mamba2ForCausalLM(cfg)
    raise ValueError(f"unknown variant {variant!r}: expected 'mamba1' or 'mamba2'")


def check_conv_kernel_layout(model: nn.Module) -> None:
    """``ValueError`` before training when HF Mamba-2's evaluation path would fail in causal-conv1d's CUDA kernel.

    With causal-conv1d installed, HF's Mamba-2 forward outside training hands the kernel a view of the in-projection
    ``[2·d_inner + 2·groups·state + heads]`` whose width must be a multiple of 8 (e.g. d_model 128 with head_dim 64:
    772 is not), and the kernel raises only at the first evaluation, after the first training steps."""
    cfg = model.config
    if getattr(cfg, "model_type", "") != "mamba2":
        return
    d_inner = cfg.expand * cfg.hidden_size
    width = 2 * d_inner + 2 * cfg.n_groups * cfg.state_size + cfg.num_heads
    if width % 8:
        raise ValueError(
            f"Mamba-2 on CUDA: the in-projection width 2·d_inner + 2·groups·state + heads = {width} must be a "
            f"multiple of 8 for causal-conv1d (d_model {cfg.hidden_size}, state {cfg.state_size}, {cfg.num_heads} "
            "heads); choose d_model and head_dim to make it one (e.g. a multiple of 8 heads)"
        )


def mamba_mixers(model: nn.Module) -> Iterator[nn.Module]:
    """Each Mamba mixer of ``model`` (a module whose class name ends in ``Mixer`` and which holds ``A_log``: HF's
    ``MambaMixer``, ``Mamba2Mixer``, ``FalconMambaMixer``, ...), in module order."""
    for module in model.modules():
        if type(module).__name__.endswith("Mixer") and hasattr(module, "A_log"):
            yield module


def prepare_for_kernels_(model: nn.Module) -> nn.Module:
    """For a ``hidden_act="linear"`` model, give each mixer's kernel call ``activation=None`` (no activation, which
    the kernels support) instead of the name ``"linear"`` (which they refuse). HF's PyTorch path computes the same
    model either way; the saved config keeps ``"linear"``."""
    from ..activations import IDENTITY_NAMES

    if str(model.config.hidden_act) in IDENTITY_NAMES:
        for module in model.modules():
            if getattr(module, "activation", None) == model.config.hidden_act and hasattr(module, "conv1d"):
                module.activation = None
    return model


def block_kernels() -> None:
    """Hide mamba-ssm and causal-conv1d from this process, so HF takes its PyTorch path (which follows
    ``hidden_act``). Must run before transformers imports its Mamba modules; ``ValueError`` if it is too late."""
    late = [m for m in sys.modules if m.startswith(("transformers.models.mamba", "transformers.models.mamba2"))]
    loaded = [p for p in _KERNEL_PACKAGES if sys.modules.get(p) is not None]
    if late or loaded:
        raise ValueError(f"--kernels off must come before {', '.join(late + loaded)} is imported")
    for name in _KERNEL_PACKAGES:
        sys.modules[name] = None  # an import of it now raises ImportError, which HF treats as "not installed"


@contextlib.contextmanager
def hf_torch_path(model: nn.Module) -> Iterator[int]:
    """HF's PyTorch path for ``model``'s modules for the duration, with mamba-ssm / causal-conv1d installed or not.

    transformers 5.17 (the GPU machines' release) picks kernel or PyTorch once, at import, whatever the inputs'
    device: with causal-conv1d installed, a CPU forward calls the CUDA kernel ("Expected x.is_cuda() to be true"),
    and a ``relu`` model's conv calls one that refuses the activation. Later releases fall back to PyTorch for
    inputs on a device the kernel does not run on. Each module-level function of the model's modeling modules that
    such a wrapper (``transformers.integrations.hub_kernels``) made is swapped for the PyTorch function it wraps,
    and put back after; releases that wrap otherwise have nothing to swap. Yields the number of functions swapped.

    Example:
        >>> with hf_torch_path(model):  # doctest: +SKIP
        ...     reference = model.cpu()(input_ids=ids).logits
    """
    swapped = []
    names = {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("transformers.models.")}
    for module in filter(None, (sys.modules.get(name) for name in sorted(names))):
        for attr, fn in list(vars(module).items()):
            code = getattr(fn, "__code__", None)
            if hasattr(fn, "__wrapped__") and code is not None and code.co_filename.endswith("hub_kernels.py"):
                swapped.append((module, attr, fn))
                setattr(module, attr, fn.__wrapped__)
    try:
        yield len(swapped)
    finally:
        for module, attr, fn in reversed(swapped):
            setattr(module, attr, fn)


@contextlib.contextmanager
def full_fp32_matmuls() -> Iterator[None]:
    """float32 matrix products computed in float32, not TF32, for the duration: PyTorch's
    (:func:`latim_captum._precision.fp32_math`) and Triton's (``TRITON_F32_DEFAULT=ieee``, read when a kernel is
    compiled; Triton's ``tl.dot`` takes float32 inputs as TF32 by default, and mamba-ssm's Mamba-2 chunk scan is
    Triton). Everything is put back after. A kernel compiled earlier in the process under TF32 may be reused (its
    cache key may not hold the precision), so a check that needs full precision runs first, as the trainers' does.

    Example:
        >>> with full_fp32_matmuls():
        ...     os.environ["TRITON_F32_DEFAULT"], torch.backends.cuda.matmul.allow_tf32
        ('ieee', False)
    """
    env = os.environ.get("TRITON_F32_DEFAULT")
    os.environ["TRITON_F32_DEFAULT"] = "ieee"
    try:
        with fp32_math():
            yield
    finally:
        if env is None:
            os.environ.pop("TRITON_F32_DEFAULT", None)
        else:
            os.environ["TRITON_F32_DEFAULT"] = env


class DeviceCheck(NamedTuple):
    """What :func:`check_device_forward` measured: the largest logit difference, and the largest relative gradient
    difference over the parameters (``‖g_device − g_ref‖ / ‖g_ref‖``, parameters with a share of the gradient)."""

    logits: float
    grads: float


def check_device_forward(
    model: nn.Module,
    device: torch.device,
    *,
    seq_len: int,
    atol: float = 1e-3,
    grad_rtol: float = 1e-2,
    remedy: str = "train it with --kernels off",
) -> DeviceCheck:
    """Compare the model's training-mode logits on ``device``, and the gradients they give, with its CPU float32
    forward and backward (HF's PyTorch path, also where transformers would call the kernels on CPU tensors:
    :func:`hf_torch_path`); ``ValueError`` if they differ (a kernel that ignores ``hidden_act``, or a backward that
    is not the forward's) or the device path fails. On the CPU both sides take HF's PyTorch path (train and eval mode
    differ in nothing for Mamba, which has no dropout), so the check passes there unless the training-mode forward is
    another model. The device side runs with float32 products in float32 (:func:`full_fp32_matmuls`): the check asks
    whether the kernels compute the model, and TF32's 10-bit mantissa (Triton's default for float32 ``tl.dot``, in
    mamba-ssm's Mamba-2 chunk scan) errs by ~1e-3 of each product, which can carry two layers' logits past ``atol``
    (``benchmarks/tf32_chunk_scan.py``).

    Gradients: of the cross-entropy of the logits against random next tokens, per parameter relative to the
    reference's norm, over the parameters that carry at least 1e-4 of the whole gradient's norm (a parameter with
    almost none compares rounding); ``grad_rtol`` 1e-2 leaves float32 kernels' reordered sums room while a wrong
    activation derivative (SiLU's for ReLU's, or 1 for either) moves whole layers' gradients by tens of percent.
    ``remedy`` ends each error message (what the caller can do)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=gen)
    targets = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=gen)
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(logits: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(logits.device).flatten())
        return logits.detach().float().cpu(), torch.autograd.grad(loss, params, allow_unused=True)

    cpu = model.to("cpu").float().eval()
    with torch.enable_grad(), hf_torch_path(cpu):
        reference, ref_grads = loss_and_grads(cpu(input_ids=ids).logits)
    model.to(device).train()
    try:
        with torch.enable_grad(), full_fp32_matmuls():
            got, grads = loss_and_grads(model(input_ids=ids.to(device)).logits)
    except (NotImplementedError, AssertionError, RuntimeError) as err:
        raise ValueError(
            f"the {device} forward or backward of this hidden_act={model.config.hidden_act!r} model fails ({err}); "
            f"{remedy}"
        ) from err
    finally:
        model.train(was_training)
    diff = float((got - reference).abs().max())
    scale = float(reference.abs().max())
    if diff > atol * max(1.0, scale):
        raise ValueError(
            f"the {device} forward differs from the PyTorch one by {diff:.3g} (logits up to {scale:.3g}): a kernel "
            f"does not follow hidden_act={model.config.hidden_act!r}; {remedy}"
        )
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    norms = [0.0 if g is None else float(g.norm()) for g in ref_grads]
    total = math.sqrt(sum(n * n for n in norms))
    worst, worst_name = 0.0, ""
    for name, g, r, norm in zip(names, grads, ref_grads, norms):
        if (g is None) != (r is None):
            raise ValueError(f"the {device} backward reaches {name} where the PyTorch one does not, or the reverse")
        if r is None or norm < 1e-4 * total:
            continue
        rel = float((g.cpu() - r).norm()) / norm
        if rel > worst:
            worst, worst_name = rel, name
    if worst > grad_rtol:
        raise ValueError(
            f"the {device} backward differs from the PyTorch one: {worst_name}'s gradient by {worst:.3g} of its norm "
            f"(hidden_act={model.config.hidden_act!r}): the kernels' gradients are not the model's; {remedy}"
        )
    return DeviceCheck(diff, worst)
