"""The adapter contract: one model family in, :class:`~latim_captum.traces.ModelTrace` out.

An adapter knows where a family keeps its blocks, mixers, final norm and unembedding, and how to recompute one
mixer from its input and weights. :meth:`ModelAdapter.trace` runs the model once with hooks (a forward pre-hook on
each mixer captures the normalised input and padding mask the mixer really saw; forward hooks capture its output
and the block's), removes every hook, restores each module's train/eval flag, then recomputes each mixer in the
compute dtype and checks the result against the captured output so that an unsupported variant fails loudly instead
of producing a silently wrong map. The hooks record only their own call's forward pass
(:class:`~latim_captum._model_state.CallHooks`), so several threads may trace one model at once.

Sharded models (``from_pretrained(device_map=...)``, accelerate's ``dispatch_model``, CPU or disk offload) are traced
layer by layer where each layer runs: its captured tensors go to its execution device (:func:`execution_device`) and
offloaded weights are brought there only while that layer is recomputed (:func:`onloaded`), so each sublayer's trace
lives on its own layer's device. accelerate's hooks are the model's own: they are left in place; ours are removed.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks, eval_mode
from latim_captum._precision import fp32_math
from latim_captum.traces import (
    HostLayers,
    LayerTrace,
    ModelTrace,
    Readout,
    SublayerTrace,
    check_store,
    parameter_versions,
    to_host,
)

__all__ = [
    "ModelAdapter",
    "mro_depth",
    "CapturedLayer",
    "TraceMismatchError",
    "check_finite_capture",
    "check_store",
    "execution_device",
    "kept",
    "stored",
    "onloaded",
    "relative_error",
    "check_no_unmerged_adapters",
    "mismatch_hint",
    "verification_tolerance",
    "ResidualChain",
    "check_recomputed",
]


class TraceMismatchError(RuntimeError):
    """The recomputed mixer (or logits) disagree with the model's own forward: the variant is not supported."""


@dataclass
class CapturedLayer:
    """What the hooks saw for one block during the forward pass (model dtype, detached); ``extras`` holds what a
    family's own hooks record (:meth:`ModelAdapter.add_capture_hooks`), e.g. an attention's rotary embeddings."""

    block_input: Tensor | None = None
    mixer_input: Tensor | None = None
    mixer_mask: Tensor | None = None
    mixer_output: Tensor | None = None
    block_output: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _hook_devices(module: nn.Module) -> Iterator[torch.device]:
    """The execution devices of the accelerate hooks attached to ``module`` itself (a ``SequentialHook`` holds
    several)."""
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", (hook,)) if hook is not None else ():
        device = getattr(part, "execution_device", None)
        if device is not None:
            # accelerate names a GPU by its index alone
            yield torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` runs: the execution device of an accelerate hook on it or inside it (its weights may sit on
    ``meta``, offloaded to the CPU or disk), else the device of its first parameter not on ``meta``.

    Example:
        >>> execution_device(model.backbone.layers[3])                    # doctest: +SKIP
        device(type='cuda', index=1)
    """
    for sub in module.modules():
        for device in _hook_devices(sub):
            return device
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    raise RuntimeError(f"{type(module).__name__} has no weights off the meta device and no accelerate hook")


@contextmanager
def onloaded(*modules: nn.Module | None) -> Iterator[None]:
    """Within the block, every offloaded weight of ``modules`` (accelerate's CPU / disk offload keeps them on
    ``meta`` between forwards) is on its execution device; they are offloaded again on exit, whatever happens.

    Modules without offloaded weights are untouched, so this costs nothing on an ordinary model.
    """
    subs = [sub for module in modules if module is not None for sub in module.modules()]
    offloaded = [sub for sub in subs if getattr(getattr(sub, "_hf_hook", None), "offload", False)]
    if not offloaded:
        yield
        return
    from accelerate.utils import align_module_device  # present: the hooks are accelerate's

    with ExitStack() as stack:
        for sub in offloaded:
            stack.enter_context(align_module_device(sub))
        yield


def moved_capture(captured: CapturedLayer, device: torch.device) -> CapturedLayer:
    """The captures of one block on ``device``: a forward pre-hook sees the inputs before accelerate's hook moves
    them to the block's device, so a sharded model's block input may still be on the previous block's device."""
    values = {f.name: getattr(captured, f.name) for f in fields(captured)}
    moved = {k: v.to(device) for k, v in values.items() if isinstance(v, Tensor)}
    # the family captures (hybrids' attention weights, ...) travel too
    moved["extras"] = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in captured.extras.items()}
    return replace(captured, **moved)


def relative_error(estimate: Tensor, reference: Tensor) -> float:
    """``‖estimate − reference‖ / max(‖reference‖, tiny)`` in float64."""
    est, ref = estimate.double(), reference.double()
    return float((est - ref).norm() / ref.norm().clamp_min(1e-30))


def _logits_error(
    normed: Tensor, unembedding: Tensor, bias: Tensor | None, logits: Tensor, chunk_elements: int = 2**26
) -> float:
    """:func:`relative_error` of ``normed @ unembeddingᵀ (+ bias)`` against ``logits``, in row chunks of about
    ``chunk_elements`` logits: never ``[B, N, V]`` recomputed or in float64 (at N = 131072 and V = 50280 one fp32
    copy is 26 GB)."""
    flat_normed = normed.reshape(-1, normed.shape[-1])
    flat_logits = logits.reshape(-1, logits.shape[-1])
    step = max(1, chunk_elements // logits.shape[-1])
    sq_err = logits.new_zeros((), dtype=torch.float64)
    sq_ref = logits.new_zeros((), dtype=torch.float64)
    for start in range(0, flat_logits.shape[0], step):  # sums stay on the device: one sync at the end
        recomputed = flat_normed[start : start + step] @ unembedding.T
        if bias is not None:
            recomputed = recomputed + bias
        reference = flat_logits[start : start + step].double()
        sq_err += (recomputed.double() - reference).square().sum()
        sq_ref += reference.square().sum()
    return float(sq_err.sqrt() / sq_ref.sqrt().clamp_min(1e-30))


def check_no_unmerged_adapters(model: nn.Module) -> None:
    """``TypeError`` naming the first active, unmerged PEFT adapter layer (LoRA & co.) of ``model``.

    Such a layer's ``.weight`` is the frozen base weight while its forward adds the adapter, so any recomputation
    from the weights explains the base model; the forward check would catch a large adapter only (its tolerance is
    1e-2 where the model's own kernels round in tf32). A merged or disabled adapter forwards through ``.weight``.

    Example:
        >>> check_no_unmerged_adapters(nn.Linear(2, 2))   # a plain model passes
    """
    for name, module in model.named_modules():
        if not hasattr(module, "base_layer") or not hasattr(module, "merged"):
            continue  # peft's BaseTunerLayer has both
        if module.merged or getattr(module, "disable_adapters", False) or not getattr(module, "active_adapters", ()):
            continue
        raise TypeError(
            f"{type(model).__name__}.{name} is an unmerged PEFT adapter layer ({type(module).__name__}): LaTIM "
            "decomposes the forward from the weights, which would be the base model's; merge the adapters first "
            "(model = model.merge_and_unload(), or model.merge_adapter())"
        )


#: model classes already warned about left padding (once per class and process)
_LEFT_PADDING_WARNED: set[str] = set()


def warn_left_padding_once(model: nn.Module, attention_mask: Tensor | None, message: str) -> None:
    """Warn ``"<model class> <message>"``, once per model class, when ``attention_mask`` has a padded position
    before a token (left padding)."""
    name = type(model).__name__
    if attention_mask is None or name in _LEFT_PADDING_WARNED:
        return
    if bool((attention_mask[:, :-1] < attention_mask[:, 1:]).any()):
        _LEFT_PADDING_WARNED.add(name)
        warnings.warn(f"{name} {message}", UserWarning, stacklevel=5)


def warn_biased_left_padding(adapter: ModelAdapter, attention_mask: Tensor | None) -> None:
    """Warn that a left-padded batch changes the model's own outputs when its Mamba in-projection has a bias
    (``use_bias=True``; released checkpoints have none).

    Hugging Face zeroes padded positions before the in-projection, so its bias reaches the real tokens through the
    convolution: the logits move with left padding and LaTIM, explaining that forward pass as it is, gives the
    padding columns a share (up to 6 % of an ALTI-Logit row measured on a tiny model).
    """
    if attention_mask is None:
        return
    if any(getattr(getattr(adapter.mixer(b), "in_proj", None), "bias", None) is not None for b in adapter.blocks):
        warn_left_padding_once(
            adapter.model,
            attention_mask,
            "with left padding and an in-projection bias: the model's own logits change with left padding (the "
            "bias reaches real tokens through the convolution), and LaTIM explains the padded forward pass as it is, "
            "padding columns included; attribute unpadded sequences one at a time for the unpadded maps",
        )


def mismatch_hint(model: nn.Module) -> str:
    """The end of every :class:`TraceMismatchError` message: the two ways a recomputation misses the forward."""
    return (
        f"this {type(model).__name__} configuration is not supported, or its forward is not its weights' "
        "(merge LoRA/PEFT adapters, e.g. merge_and_unload(), and remove hooks that change activations)"
    )


def verification_tolerance(model_dtype: torch.dtype, device: torch.device | str | None = None) -> float:
    """Largest relative gap between our recomputation and the model's forward accepted for a model dtype.

    The check guards against unsupported variants, which miss by O(0.1-1), and against a forward that is not the
    bare weights' (an unmerged LoRA, a steering hook); it must not trip on the model's own rounding: mamba-ssm's fp32
    Mamba-2 kernels and cuDNN's convolutions use tf32 products (~5e-4 relative), bf16/fp16 models round every
    activation. A float32 model on the CPU with full-precision matmuls (``torch.get_float32_matmul_precision() ==
    "highest"``, the default) computes in IEEE fp32 throughout (~1e-7 relative), so there a 1e-4 gap already means a
    different forward. A float64 model is not computed in float64 throughout either: Hugging Face's Mamba RMSNorms
    cast to float32 whatever the model's dtype (1.2e-6 relative measured on the embedded Mamba-1 copy model cast to
    float64), hence 1e-5 there.

    Example:
        >>> verification_tolerance(torch.float32, "cpu"), verification_tolerance(torch.float32, "cuda")
        (0.0001, 0.01)
    """
    if model_dtype == torch.float32 and device is not None and torch.device(device).type == "cpu":
        if torch.get_float32_matmul_precision() == "highest":
            return 1e-4
    return {torch.float64: 1e-5, torch.float32: 1e-2}.get(model_dtype, 5e-2)


def check_recomputed(
    model: nn.Module,
    idx: int,
    recomputed: Tensor,
    reference: Tensor,
    mask: Tensor | None,
    tol: float,
    what: str = "mixer output",
) -> None:
    """``TraceMismatchError`` unless a tensor of block ``idx`` recomputed from the weights matches the model's own
    (relative error over the non-padded positions of ``mask`` when given, at most ``tol``; a NaN error fails)."""
    if mask is not None:
        keep = mask.bool()
        recomputed, reference = recomputed[keep], reference[keep]
    err = relative_error(recomputed, reference)
    if not err <= tol:  # fail closed: a NaN error is no agreement
        raise TraceMismatchError(
            f"layer {idx}: recomputed {what} differs from the model's by {err:.2e} (relative, tolerance {tol:.0e}); "
            f"{mismatch_hint(model)}"
        )


class ResidualChain:
    """Checks, as a trace is built, that the residual stream between the sublayers is the sum of their outputs:
    ``layers[s].residual == layers[s-1].block_output`` and, at the end, that the last sublayer's ``block_output`` is
    the hidden state the final norm reads.

    Each sublayer's trace is checked on its own (its recomputed mixer against the model's), but the stream that
    joins them is read from the model: a forward hook on a *block* that adds a steering vector, or a residual scaling
    the adapter does not know, changes the stream without touching any mixer. The maps would then hand the tokens a
    part of the stream no sublayer put there (ALTI-Logit's rows stopped summing to the logit: -0.02 against 0.60 on a
    tiny Mamba with a vector added after block 1), so such a trace is refused.

    Example:
        >>> chain = ResidualChain(model, tolerance=1e-4, mask=None)            # doctest: +SKIP
        >>> for idx, sub in enumerate(sublayers): chain.add(idx, sub)          # doctest: +SKIP
        >>> chain.finish(final_hidden)                                         # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, tolerance: float, mask: Tensor | None) -> None:
        self.model = model
        self.tolerance = tolerance
        self.keep = None if mask is None else mask.bool()
        self._previous: Tensor | None = None  # the last sublayer's block_output, [B, N, D]

    def add(self, idx: int, sublayer: SublayerTrace) -> None:
        """Check ``sublayer.residual`` (of model block ``idx``) against the previous sublayer's output."""
        residual = sublayer.residual
        if self._previous is not None:
            self._check(self._previous.to(residual.device), residual, f"layer {idx}: its input")
        self._previous = sublayer.block_output

    def finish(self, final_hidden: Tensor) -> None:
        """Check the last sublayer's output against ``final_hidden`` (the last block's output, ``[B, N, D]``)."""
        if self._previous is not None:
            reference = final_hidden.to(device=self._previous.device, dtype=self._previous.dtype)
            self._check(self._previous, reference, "the last block's output")

    def _check(self, from_sublayers: Tensor, reference: Tensor, where: str) -> None:
        if self.keep is not None:
            keep = self.keep.to(reference.device)
            from_sublayers, reference = from_sublayers[keep], reference[keep]
        err = relative_error(from_sublayers, reference)
        if not err <= self.tolerance:  # fail closed: a NaN error is no agreement
            raise TraceMismatchError(
                f"{where} differs from the residual stream the traced sublayers add up to (embeddings + their "
                f"outputs) by {err:.2e} (relative, tolerance {self.tolerance:.0e}): something between the mixers "
                f"changed the stream (a forward hook on a block, a residual scaling); {mismatch_hint(self.model)}"
            )


def check_finite_capture(
    captured: Sequence[CapturedLayer], logits: Tensor | None, attention_mask: Tensor | None = None
) -> None:
    """``ValueError`` naming the first layer (and tensor) whose captured values hold NaN or ±inf.

    Non-finite activations (NaN/inf weights, an overflow in a half-precision model) would give NaN maps, and a NaN
    spreads to every row that reads it; the relative-error checks cannot see it either (``NaN > tol`` is False).
    Padded positions are ignored: the model never reads them.
    """
    keep = None if attention_mask is None else attention_mask.bool()
    named = [
        (f"layer {idx}: the {what}", tensor)
        for idx, cap in enumerate(captured)
        for what, tensor in (("block input", cap.block_input), ("mixer input", cap.mixer_input),
                             ("mixer output", cap.mixer_output), ("block output", cap.block_output))  # fmt: skip
        if tensor is not None
    ]
    if logits is not None:
        named.append(("the logits", logits))
    # one device-side reduction, one sync: no host round trip per tensor
    bad = torch.stack([_non_finite(t, keep) for _, t in named])
    if bool(bad.any()):
        where = named[int(bad.int().argmax())][0]
        raise ValueError(
            f"{where} holds NaN or inf values: the model's forward pass is not finite (NaN/inf weights or inputs, or "
            "an overflow in its dtype), so there is nothing LaTIM can decompose"
        )


def _non_finite(t: Tensor, keep: Tensor | None) -> Tensor:
    """Whether ``t`` (``[B, N, ...]``) holds a NaN/inf at a kept position, as a 0-d bool tensor."""
    finite = torch.isfinite(t)
    if keep is not None and finite.dim() >= 2 and tuple(finite.shape[:2]) == tuple(keep.shape):
        finite = finite | ~keep.view(*keep.shape, *([1] * (finite.dim() - 2)))
    return ~finite.all()


def mro_depth(model: nn.Module, class_names: Sequence[str]) -> int | None:
    """Index in ``type(model).__mro__`` of the first class named in ``class_names``, or None: a subclass of a
    supported class is supported, without importing the class (adapters stay duck-typed)."""
    for depth, klass in enumerate(type(model).__mro__):
        if klass.__name__ in class_names:
            return depth
    return None


def _first_tensor(args: tuple, kwargs: dict, name: str) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    return kwargs[name]


def _cuda_kernel_on_cpu(err: RuntimeError, device: torch.device) -> RuntimeError:
    """The reason, said plainly, when a forward on ``device`` reached a CUDA-only kernel."""
    return RuntimeError(
        f"the model's forward on {device} called a CUDA-only kernel ({str(err).splitlines()[0]}); transformers "
        "dispatches to mamba-ssm / causal-conv1d whenever they are installed, whatever the device: run the model "
        "on CUDA, or use an environment without those packages for CPU work"
    )


class ModelAdapter(ABC):
    """Maps one model family onto the standard trace. Subclass it and register the subclass in ``adapters``.

    Subclasses set :attr:`name` and :attr:`model_class_names`, implement :meth:`supports`, the structural
    accessors and :meth:`mixer_trace`.

    Example:
        >>> adapter = get_adapter(model)                                    # doctest: +SKIP
        >>> trace = adapter.trace(input_ids=ids, dtype=torch.float64)     # doctest: +SKIP
    """

    name: ClassVar[str] = ""
    model_class_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- structure ---------------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (its class or a subclass of it)."""

    @classmethod
    def match_depth(cls, model: nn.Module) -> int | None:
        """How far up ``model``'s class hierarchy this adapter's class sits (0: the model's own class), or None if
        it does not handle the model: :func:`~latim_captum.adapters.get_adapter` picks the closest match, so an
        adapter for a subclass wins over one for its parent."""
        return 0 if cls.supports(model) else None

    @property
    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The residual blocks, in order."""

    @abstractmethod
    def mixer(self, block: nn.Module) -> nn.Module:
        """The token mixer inside a block (hooked for its input and output)."""

    @property
    @abstractmethod
    def embeddings(self) -> nn.Module:
        """The token embedding module (what gradient methods attribute to)."""

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module:
        """The final RMSNorm before the unembedding."""

    @property
    @abstractmethod
    def lm_head(self) -> nn.Module | None:
        """The unembedding (an ``nn.Linear``), or None for a model without an LM head."""

    @abstractmethod
    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        """Recompute one mixer in ``dtype``; return its trace (``layer`` unset: -1) and the recomputed output."""

    @property
    def n_layers(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    @property
    def n_sublayers(self) -> int:
        """Number of residual sublayers in a trace (``ModelTrace.n_layers``; layer indices of the maps count these).

        One per block for pure Mamba models; hybrid adapters split blocks into mixer + MLP sublayers.
        """
        return self.n_layers

    def sizes(self) -> dict[str, int]:
        """The widths that set LaTIM's memory, read from the modules (no forward pass): ``d_model``, ``d_inner``
        (the widest Mamba mixer's, from its ``out_proj``), ``state`` (Mamba-1's per-channel state size, 1 for
        Mamba-2), ``vocab`` (0 without an LM head), ``sublayers``, ``attention_heads`` (over every attention module,
        from ``q_proj`` and ``head_dim``) and ``conv_kernel``. Used by the memory guard
        (:mod:`latim_captum.maps.memory`) before the forward pass."""
        d_inner, state, heads, kernel = 0, 1, 0, 4
        for block in self.blocks:
            for module in block.modules():
                a_log, out = getattr(module, "A_log", None), getattr(module, "out_proj", None)
                if isinstance(a_log, Tensor) and isinstance(out, nn.Linear):  # a Mamba mixer
                    d_inner = max(d_inner, out.in_features)
                    state = max(state, a_log.shape[-1] if a_log.dim() == 2 else 1)
                    conv = getattr(module, "conv1d", None)
                    kernel = max(kernel, conv.weight.shape[-1]) if isinstance(conv, nn.Conv1d) else kernel
                q_proj, head_dim = getattr(module, "q_proj", None), getattr(module, "head_dim", None)
                if isinstance(q_proj, nn.Linear) and isinstance(head_dim, int) and head_dim > 0:
                    heads += q_proj.out_features // head_dim
        head = self.lm_head
        vocab = int(head.weight.shape[0]) if head is not None and hasattr(head, "weight") else 0
        return {
            "d_model": self.d_model,
            "d_inner": d_inner or 2 * self.d_model,
            "state": state,
            "vocab": vocab,
            "sublayers": self.n_sublayers,
            "attention_heads": heads,
            "conv_kernel": kernel,
        }

    @property
    def vocab_size(self) -> int:
        return int(self.embeddings.weight.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.embeddings.weight.shape[1])

    @property
    def model_dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the embedding's execution device (see :func:`execution_device`)."""
        return execution_device(self.embeddings)

    def forward(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None) -> Any:
        """Call the model the way its users do (no cache); return its output object.

        Raises:
            RuntimeError: as the model does; a CPU model that reached a CUDA-only kernel gets the reason said."""
        try:
            # return_dict: the output object even where config.return_dict is False (a tuple otherwise; Mamba-1 and
            # FalconMamba honour it, transformers' own Mamba-2 and hybrid forwards fail on that setting)
            return self.model(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False,
                return_dict=True,
            )  # fmt: skip
        except RuntimeError as err:
            if self.device.type != "cuda" and "is_cuda()" in str(err):
                raise _cuda_kernel_on_cpu(err, self.device) from err
            raise
        except AttributeError as err:
            if getattr(getattr(self.model, "config", None), "return_dict", True) is False and "tuple" in str(err):
                # transformers' own forward of Mamba-2 and the hybrids breaks on this setting, return_dict=True or not
                raise ValueError(
                    f"{type(self.model).__name__}'s own forward fails with config.return_dict=False ({err}); set "
                    "model.config.return_dict = True"
                ) from err
            raise

    @staticmethod
    def output_logits(output: Any) -> Tensor | None:
        """Logits from the model's output, or None."""
        return getattr(output, "logits", None)

    def block_io(self, args: tuple, kwargs: dict, output: Any) -> tuple[Tensor | None, Tensor]:
        """From one block call: its residual-stream input ``x^{(l-1)}`` (None: the pre-hook's ``hidden_states``)
        and output ``y``. Pre-norm blocks return ``y`` (first of a tuple); fused add+norm layouts override this."""
        return None, output[0] if isinstance(output, tuple) else output

    # -- tracing ------------------------------------------------------------------------------------------------
    def add_capture_hooks(self, hooks: CallHooks, captured: list[CapturedLayer]) -> None:
        """Register the hooks of one :meth:`capture` call on ``hooks``, writing into ``captured`` (one per block).

        Families that need more of the forward pass (attention keyword arguments, intermediate tensors) extend this
        and write into ``captured[idx].extras``: state kept per call, never on the adapter, which threads may share.
        """

        def block_pre(idx: int):
            def hook(_module, args, kwargs):
                captured[idx].block_input = _first_tensor(args, kwargs, "hidden_states").detach()

            return hook

        def block_post(idx: int):
            def hook(_module, args, kwargs, output):
                block_input, block_output = self.block_io(args, kwargs, output)
                if block_input is not None:
                    captured[idx].block_input = block_input.detach()
                captured[idx].block_output = block_output.detach()

            return hook

        def mixer_pre(idx: int):
            def hook(_module, args, kwargs):
                captured[idx].mixer_input = _first_tensor(args, kwargs, "hidden_states").detach()
                mask = kwargs.get("attention_mask")
                captured[idx].mixer_mask = mask.detach() if isinstance(mask, Tensor) else None

            return hook

        def mixer_post(idx: int):
            def hook(_module, _args, _kwargs, output):
                out = output[0] if isinstance(output, tuple) else output
                captured[idx].mixer_output = out.detach()

            return hook

        for idx, block in enumerate(self.blocks):
            mixer = self.mixer(block)
            hooks.pre(block, block_pre(idx), with_kwargs=True)
            hooks.post(block, block_post(idx), with_kwargs=True)
            hooks.pre(mixer, mixer_pre(idx), with_kwargs=True)
            hooks.post(mixer, mixer_post(idx), with_kwargs=True)

    def capture(
        self, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None
    ) -> tuple[list[CapturedLayer], Tensor | None]:
        """Run the model once under hooks; return per-block captures and the logits (None without an LM head).

        The hooks record this call's forward pass only (another thread's forward of the same model passes them
        by); every hook is removed and each module's train/eval flag restored, whatever happens.

        Raises:
            TraceMismatchError: a mixer's hooks did not fire.
            ValueError: the forward pass gave non-finite values (:func:`check_finite_capture`).
        """
        check_no_unmerged_adapters(self.model)
        captured = [CapturedLayer() for _ in self.blocks]
        if inputs_embeds is not None:  # the captures alias the first block's input: the caller may edit its own later
            inputs_embeds = inputs_embeds.clone()
        with CallHooks() as hooks:
            self.add_capture_hooks(hooks, captured)
            with eval_mode(self.model), torch.no_grad():
                output = self.forward(input_ids, inputs_embeds, attention_mask)
        for idx, cap in enumerate(captured):
            if cap.mixer_input is None or cap.mixer_output is None or cap.block_input is None:
                raise TraceMismatchError(
                    f"layer {idx}: the mixer hooks did not fire; the model's forward bypasses them"
                )
        logits = self.output_logits(output)
        check_finite_capture(captured, logits, attention_mask)
        return captured, logits

    def readout(self, final_hidden: Tensor, logits: Tensor | None, dtype: torch.dtype) -> Readout | None:
        """Final norm (RMSNorm, or LayerNorm: centring is linear, its bias an offset) + unembedding as a
        :class:`Readout`, checked against the model's logits."""
        head = self.lm_head
        if head is None or logits is None:
            return None
        norm = self.final_norm
        with onloaded(norm, head):
            return self._readout(norm, head, final_hidden.to(execution_device(head)), logits, dtype)

    def _readout(
        self, norm: nn.Module, head: nn.Module, final_hidden: Tensor, logits: Tensor, dtype: torch.dtype
    ) -> Readout:
        center = isinstance(norm, nn.LayerNorm)
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-5)))
        hidden = final_hidden.to(dtype)
        centred = hidden - hidden.mean(-1, keepdim=True) if center else hidden
        scale = torch.rsqrt(centred.square().mean(-1) + eps)
        # a sharded model may keep its final norm and LM head on two devices: the readout lives at the head
        weight = norm.weight.detach().to(device=hidden.device, dtype=dtype)
        norm_bias = getattr(norm, "bias", None)
        norm_bias = norm_bias.detach().to(device=hidden.device, dtype=dtype) if isinstance(norm_bias, Tensor) else None
        bias = head.bias.detach().to(dtype) if getattr(head, "bias", None) is not None else None
        readout = Readout(
            final_hidden=hidden,
            norm_weight=weight,
            norm_scale=scale,
            unembedding=head.weight.detach().to(dtype),
            bias=bias,
            logits=logits.detach().to(device=hidden.device, dtype=dtype),
            center=center,
            norm_bias=norm_bias,
        )
        normed = centred * scale[..., None] * weight
        if norm_bias is not None:
            normed = normed + norm_bias
        err = _logits_error(normed, readout.unembedding, bias, readout.logits)
        tol = verification_tolerance(self.model_dtype, hidden.device)
        if not err <= tol:  # fail closed: a NaN error is no agreement
            raise TraceMismatchError(
                f"recomputed logits differ from the model's by {err:.2e} (relative, tolerance {tol:.0e}) at the final "
                f"norm and LM head: {mismatch_hint(self.model)}"
            )
        return readout

    def trace(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        verify: bool = True,
        store: str = "device",
    ) -> ModelTrace:
        """Run the model once and return the :class:`ModelTrace` of every layer in ``dtype``.

        Args:
            input_ids: ``[B, N]`` token ids, or None when ``inputs_embeds`` is given.
            inputs_embeds: ``[B, N, D]``, or None.
            attention_mask: ``[B, N]`` padding mask (1 = token), or None.
            dtype: compute dtype of the trace (float32 or float64), whatever the model's dtype.
            verify: check each recomputed mixer against the model's own output (raises
                :class:`TraceMismatchError` beyond :func:`verification_tolerance`).
            store: ``"device"`` keeps each layer's trace where it was computed; ``"host"`` moves each to host memory
                as soon as it is made (:class:`~latim_captum.traces.HostLayers`: one layer on the device at a time).
        """
        check_store(store)
        warn_biased_left_padding(self, attention_mask)
        source = parameter_versions(self.model)
        captured, logits = self.capture(input_ids, inputs_embeds, attention_mask)
        layers, devices = [], []
        mask = captured[0].mixer_mask
        chain = ResidualChain(self.model, verification_tolerance(self.model_dtype, self.device), mask)
        with torch.no_grad(), fp32_math():
            for idx, (block, cap) in enumerate(zip(self.blocks, captured)):
                devices.append(execution_device(block))
                cap = moved_capture(cap, devices[-1])  # each layer is recomputed where it runs
                with onloaded(block):
                    layer, recomputed = self.mixer_trace(block, cap, dtype)
                if verify:
                    tol = verification_tolerance(self.model_dtype, devices[-1])
                    check_recomputed(self.model, idx, recomputed, cap.mixer_output, None, tol)
                    chain.add(idx, layer)
                layers.append(kept(_with_layer(layer, idx), store))
            final_hidden = captured[-1].block_output
            if verify:
                chain.finish(final_hidden)
            readout = self.readout(final_hidden, logits, dtype)
        return ModelTrace(
            embeddings=captured[0].block_input.to(dtype),
            layers=stored(layers, devices, store),
            readout=readout,
            mask=None if mask is None else mask.to(dtype),
            dtype=dtype,
            source=source,
        )


def kept(layer: SublayerTrace, store: str) -> SublayerTrace:
    """A finished sublayer trace where ``store`` keeps it: as is, or copied to host memory at once (so that the
    next layer's recomputation has the device memory this one used)."""
    return to_host(layer) if store == "host" else layer


def stored(layers: list[SublayerTrace], devices: list[torch.device], store: str) -> list | HostLayers:
    """The trace's ``layers``: the list, or :class:`~latim_captum.traces.HostLayers` handing each layer out on the
    device that computed it."""
    return HostLayers(layers, devices) if store == "host" else layers


def _with_layer(layer: LayerTrace, idx: int) -> LayerTrace:
    return replace(layer, layer=idx)
