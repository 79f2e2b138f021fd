"""The shared base of the Captum classes: any token-to-token map as a :class:`captum.attr.Attribution`.

A token map ``C[b, i, j]`` says how much input token ``j`` contributes to the representation (or the prediction) at
position ``i``. Captum attributes one output per example to every input feature, so the Captum view of a map is its
row at the query ``position``: one score per input token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from latim_captum._queries import last_real_positions, query_positions
from latim_captum._validation import check_compute_dtype, check_layers, check_model_inputs
from latim_captum.adapters import ModelAdapter, get_adapter
from latim_captum.catalog import MethodSpec

from ._conventions import check_ig_arguments, float_ids_error, inside_noise_tunnel

__all__ = ["TokenMapAttribution", "TokenMaps", "LayerSpec", "DEFAULT", "row_as_map"]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: sentinel for "the class's default layer selection" (``layer`` not given)
DEFAULT: Any = _Default()


def row_as_map(row: Tensor, position: int) -> Tensor:
    """A query row ``[..., N]`` as the ``[..., N, N]`` map that holds it at row ``position`` and zeros elsewhere."""
    maps = row.new_zeros(*row.shape, row.shape[-1])
    maps[..., position, :] = row
    return maps


class TokenMaps(NamedTuple):
    """What :meth:`TokenMapAttribution.compute_maps` returns.

    Attributes:
        maps: ``[B, L, N, N]`` for a list of layers, ``[B, N, N]`` for one aggregated map.
        row_totals: ``[B, N]``, what each row of an exact decomposition sums to (e.g. the target logit minus the
            offset no token owns), or None for maps without a completeness property. Gives the convergence delta.
    """

    maps: Tensor
    row_totals: Tensor | None = None


class LayerSpec(NamedTuple):
    """A normalised ``layer`` argument.

    Attributes:
        layers: layer indices (non-negative) for per-layer maps, or None.
        mode: a named aggregation the subclass understands (e.g. ``"rollout"``), or None.
        stacked: True when the result keeps a layer dimension (``layer`` was a list or ``"all"``).
    """

    layers: list[int] | None
    mode: str | None
    stacked: bool


class TokenMapAttribution(Attribution):
    r"""Base class: a token-to-token map function as a Captum attribution method.

    ``attribute`` validates Captum-style arguments, calls :meth:`compute_maps` once for the whole batch, and returns
    row ``position`` of the map, shaped like the input (or the full map with ``return_matrix=True``).

    **Subclass contract.** A map function with the signature
    ``fn(model_or_trace, input_ids=None, inputs_embeds=None, *, attention_mask=None, layers=None, target=None,
    **options) -> Tensor`` returning ``[B, L, N, N]`` (one map per requested layer, ``per_layer = True``) or
    ``[B, N, N]`` (one aggregated map, ``per_layer = False``) becomes a Captum class with::

        class MambaAttention(TokenMapAttribution):
            '''Hidden attention of Ali et al. (2024) as a Captum attribution.'''

            map_fn = staticmethod(mamba_attention)  # the plain function
            per_layer = True                        # returns [B, L, N, N] for a list of layers
            default_layer = -1                      # int, "all" or None (= aggregated)
            uses_target = False                     # True: pass Captum's target on to fn as a [B] tensor

            def __init__(self, model, *, activation: str = "silu_gate") -> None:
                super().__init__(model, activation=activation)  # keyword options are passed on to fn

    Class attributes:

    - ``method_spec``: the method table's entry; ``display_name``, ``per_layer`` and ``uses_target`` follow it.
    - ``map_fn``: the function; called with the model (``self.forward_func``), exactly one of ``input_ids``
      ``[B, N]`` / ``inputs_embeds`` ``[B, N, D]`` (validated, on the model's device), ``attention_mask`` (``[B, N]``
      or None), ``layers`` (a list of non-negative ints for per-layer maps, None for aggregated ones), ``target``
      (a ``[B]`` or ``[B, N]`` long tensor, or None; only when ``uses_target``) and the constructor's options.
    - ``per_layer``: whether ``layer`` selects maps (int, list or ``"all"``); if False, ``layer`` must be None.
    - ``default_layer``: what ``layer`` means when not given.
    - ``layer_modes``: extra string values of ``layer`` (e.g. ``("rollout",)``) handled by an overridden
      :meth:`compute_maps`, which then gets ``layers=None, mode=<the string>`` and returns one ``[B, N, N]`` map.
    - ``uses_target``: whether the map depends on the target. If False, ``target`` is still validated (so a
      pipeline that passes one to every method keeps working) but not used.
    - ``row_capable``: ``map_fn`` takes ``position=`` and then returns only that row; ``attribute`` uses it when
      no full matrix is asked for.

    Override :meth:`compute_maps` for anything more (a convergence delta: return ``TokenMaps(maps, row_totals)``;
    then set ``has_delta = True``).

    The model must be supported by :func:`latim_captum.adapters.get_adapter` (``TypeError`` otherwise).
    """

    #: the method table's entry (:mod:`latim_captum.catalog`): gives ``display_name``, ``per_layer`` and
    #: ``uses_target`` unless the class body sets them
    method_spec: ClassVar[MethodSpec | None] = None
    map_fn: ClassVar[Callable[..., Tensor] | None] = None
    per_layer: ClassVar[bool] = True
    default_layer: ClassVar[int | str | None] = -1
    layer_modes: ClassVar[tuple[str, ...]] = ()
    uses_target: ClassVar[bool] = False
    has_delta: ClassVar[bool] = False
    #: ``compute_maps`` takes ``contrast=`` (a ``[B]`` token tensor) and then explains ``logit(target) −
    #: logit(contrast)``
    supports_contrast: ClassVar[bool] = False
    #: ``map_fn`` accepts ``position=p`` and then computes only row p (``[B, L, N]`` / ``[B, N]``): ``attribute``
    #: without ``return_matrix`` asks for that row alone (e.g. one backward pass instead of N for gradient methods)
    row_capable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("method_spec")
        if spec is not None:
            for attr, value in (("display_name", spec.label), ("per_layer", spec.per_layer),
                                ("uses_target", spec.uses_target)):  # fmt: skip
                if attr not in cls.__dict__:
                    setattr(cls, attr, value)

    def __init__(self, model: nn.Module | ModelAdapter, **options: Any) -> None:
        """
        Args:
            model: a supported Mamba model (HF ``MambaForCausalLM``, ``MambaModel``, FalconMamba, Mamba-2, ...) or
                its adapter.
            **options: keyword options passed to :meth:`compute_maps` / ``map_fn`` on every call.

        Raises:
            TypeError: the model is not a supported Mamba model, or a ``dtype`` option other than torch.float32 /
                torch.float64 (checked here, not at the first call).
        """
        if "dtype" in options:
            check_compute_dtype(options["dtype"])
        self.adapter = get_adapter(model)
        super().__init__(self.adapter.model)
        self.options = dict(options)

    # -- Captum's Attribution interface ----------------------------------------------------------------------
    def has_convergence_delta(self) -> bool:
        """True when rows of the map sum to a known total (the convergence delta measures the gap)."""
        return self.has_delta

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @classmethod
    def get_name(cls) -> str:
        """A readable name (e.g. ``"LaTIM (ALTI-Logit)"``); subclasses set ``display_name``."""
        return getattr(cls, "display_name", None) or super().get_name()

    def compute_convergence_delta(self, attributions: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Captum's delta for methods with a completeness property (see
        :meth:`LatimALTILogit.compute_convergence_delta <latim_captum.attr.LatimALTILogit.compute_convergence_delta>`).

        Raises:
            ValueError: this method's scores do not add up to an output of the model.
        """
        raise ValueError(
            f"{self.get_name()} has no convergence delta: its scores do not add up to an output of the model "
            "(ALTI-Logit's do)"
        )

    # -- the map -----------------------------------------------------------------------------------------------
    def compute_maps(
        self,
        *,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        layers: list[int] | None,
        mode: str | None,
        target: Tensor | None,
        position: int | None = None,
    ) -> TokenMaps | Tensor:
        """Compute the maps for the whole batch; the default calls ``map_fn``. See the class docstring.

        ``position`` (only passed for ``row_capable`` classes) asks for that query row alone; the row is returned in
        a map that is zero elsewhere.
        """
        fn = type(self).map_fn
        if fn is None:
            raise NotImplementedError(f"{type(self).__name__} sets no map_fn and does not override compute_maps")
        if mode is not None:
            raise NotImplementedError(f"{type(self).__name__} lists layer mode {mode!r} but does not handle it")
        kwargs: dict[str, Any] = dict(self.options)
        if self.per_layer:
            kwargs["layers"] = layers
        if self.uses_target:
            kwargs["target"] = target
        if position is None:
            return fn(self.forward_func, input_ids, inputs_embeds, attention_mask=attention_mask, **kwargs)
        kwargs["position"] = position
        row = fn(self.forward_func, input_ids, inputs_embeds, attention_mask=attention_mask, **kwargs)
        return row_as_map(row, position)

    # -- argument handling -------------------------------------------------------------------------------------
    def resolve_layer(self, layer: Any) -> LayerSpec:
        """Normalise ``layer`` (int, negative allowed; list; ``"all"``; a ``layer_modes`` string; None).

        Raises:
            ValueError: a layer index out of range, or a value this class does not accept (named in the message).
        """
        if layer is DEFAULT:
            layer = self.default_layer
        n_layers = self.adapter.n_sublayers
        if not self.per_layer:
            if layer is not None:
                raise ValueError(f"{self.get_name()} aggregates every layer; layer must be None, got {layer!r}")
            return LayerSpec(None, None, False)
        if isinstance(layer, str):
            if layer == "all":
                return LayerSpec(list(range(n_layers)), None, True)
            if layer in self.layer_modes:
                return LayerSpec(None, layer, False)
            choices = ", ".join(repr(m) for m in ("all", *self.layer_modes))
            raise ValueError(f"unknown layer {layer!r} for {self.get_name()}; use an int, a list of ints or {choices}")
        if layer is None:
            raise ValueError(f"{self.get_name()} computes per-layer maps; layer=None is not a selection")
        if isinstance(layer, Tensor):
            layer = layer.tolist()
        if isinstance(layer, Sequence) and not isinstance(layer, (str, bytes)):
            return LayerSpec(check_layers(list(layer), n_layers), None, True)
        return LayerSpec(check_layers(layer, n_layers), None, False)

    def format_target(self, target: Any, batch: int, name: str = "target") -> Tensor | None:
        """Captum's target forms (None, int, list of B ints, 0-d or ``[B]`` tensor) as a ``[B]`` long tensor.

        ``name`` is the argument's name in the messages (``"contrast"`` takes the same forms).

        Raises:
            ValueError: a tuple (multi-dimensional output index), a wrong length or shape, or an id outside the
                vocabulary; each message names the offending value.
        """
        if target is None:
            return None
        if isinstance(target, tuple):
            raise ValueError(f"{name} {target!r}: tuple targets index multi-dimensional outputs; use an int per row")
        if isinstance(target, bool):
            raise ValueError(f"{name} must be a token id, got {target!r}")
        if isinstance(target, list) and any(not isinstance(t, int) or isinstance(t, bool) for t in target):
            raise ValueError(f"{name} list must hold one int token id per example, got {target!r}")
        t = torch.as_tensor(target)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must hold integer token ids, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch)
        elif t.dim() > 1:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected an int or one id per example, [{batch}] (a tensor "
                "shaped like the inputs here is usually Integrated Gradients' positional baselines: LaTIM needs "
                f"none, so pass {name}= by keyword)"
            )
        elif t.shape[0] != batch:
            # NoiseTunnel repeats target for its noisy copies, not contrast
            hint = (
                " (under NoiseTunnel: an int, or, without nt_samples_batch_size, "
                "contrast.repeat_interleave(nt_samples), the order of NoiseTunnel's noisy copies x0, x0, ..., x1, ...)"
            ) * (name == "contrast")
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected an int or one id per example, [{batch}]{hint}"
            )
        vocab = self.adapter.vocab_size
        bad = t[(t < 0) | (t >= vocab)]
        if bad.numel():
            raise ValueError(f"{name} token id {int(bad[0])} is out of the vocabulary [0, {vocab})")
        return t.to(device=self.adapter.device, dtype=torch.long)

    @staticmethod
    def format_mask(additional_forward_args: Any) -> Tensor | None:
        """The attention mask from ``additional_forward_args``: None, a ``[B, N]`` tensor, or a 1-tuple of one.

        Raises:
            ValueError: anything else (LaTIM reads the model directly, so other forward arguments cannot be honoured).
        """
        args = additional_forward_args
        if isinstance(args, (tuple, list)):
            if len(args) == 0:
                return None
            if len(args) != 1:
                raise ValueError(
                    f"additional_forward_args may only hold an attention mask; got {len(args)} values "
                    f"({', '.join(type(a).__name__ for a in args)})"
                )
            args = args[0]
        if args is None or isinstance(args, Tensor):
            return args
        raise ValueError(
            f"additional_forward_args may only hold an attention mask tensor [batch, seq_len], "
            f"got {type(args).__name__}"
        )

    @staticmethod
    def split_inputs(inputs: Any) -> tuple[Tensor, bool]:
        """The single input tensor and whether it came in a tuple (Captum's convention)."""
        is_tuple = isinstance(inputs, tuple)
        if is_tuple:
            if len(inputs) != 1:
                raise ValueError(
                    f"inputs must be one tensor (token ids or inputs_embeds) or a 1-tuple; got a {len(inputs)}-tuple"
                )
            inputs = inputs[0]
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor or a 1-tuple of one, got {type(inputs).__name__}")
        if inputs.dtype.is_floating_point and inputs.dim() == 2:
            raise float_ids_error(inputs)
        return inputs, is_tuple

    # -- attribute ---------------------------------------------------------------------------------------------
    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | Sequence[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        position: int | None = None,
        layer: int | Sequence[int] | str | None = DEFAULT,
        contrast: int | Sequence[int] | Tensor | None = None,
        return_matrix: bool = False,
        return_convergence_delta: bool = False,
        baselines: Any = None,
        n_steps: int | None = None,
        method: str | None = None,
        internal_batch_size: int | None = None,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        """Attribute the representation (or prediction) at the query position to every input token.

        Args:
            inputs: token ids ``[B, N]`` (integer) or ``inputs_embeds`` ``[B, N, D]`` (float), or a 1-tuple of one.
            target: the output token explained, for methods that use one: an int, a list of B ints, or a 0-d /
                ``[B]`` tensor. Target-free maps (ℓp, ALTI) validate it and otherwise ignore it.
            additional_forward_args: an attention mask ``[B, N]`` (1 = token, 0 = padding), alone or in a
                1-tuple; nothing else is accepted.
            position: the query position (negative counts from the end of the padded input). Default: each
                example's last real token according to the attention mask (the last token without one), so a
                right-padded batch is queried where each example's prediction is made. A position that points at
                padding in some example is an error.
            layer: an int (negative allowed), a list of ints, ``"all"``, or a method-specific mode such as
                ``"rollout"``; the default depends on the class.
            contrast: for classes that explain a logit difference (:class:`~latim_captum.attr.LatimALTILogit`): the
                contrast token, same forms as ``target``; the scores then decompose ``logit(target) −
                logit(contrast)``.
            return_matrix: return the whole map ``[B, N, N]`` (``[B, L, N, N]`` for a list / ``"all"``) instead of
                the query row (so ``position`` must then be None).
            return_convergence_delta: also return Captum's delta ``Σ scores − (F(x) − F(baseline))`` per example
                (``[B]``; ``[B, N]`` with ``return_matrix``), where ``F(x) − F(baseline)`` is the total an exact
                decomposition's row sums to (for ALTI-Logit the target logit minus the offset no token owns); only
                for classes with ``has_convergence_delta()``.
            baselines: must be None: LaTIM decomposes the input's own forward pass and reads no baseline (accepted so
                that Integrated-Gradients calls run unchanged).
            n_steps, method: Integrated Gradients' integration settings; accepted and ignored with a warning.
            internal_batch_size: at most this many examples per model pass (None: all at once); same numbers.

        Returns:
            Attributions shaped like the input and tuple-wrapped like it: ``[B, N]`` for ids; for ``inputs_embeds``
            ``[B, N, D]`` with each token's score spread evenly over its D entries (``attr.sum(-1)`` gives the
            per-token scores, and the total over the tensor is the total over tokens). A list of layers / ``"all"``
            adds a layer dimension after the batch: ``[B, L, N]`` (ids) or ``[B, L, N, D]``. Columns after an
            example's query position (its right padding included) are exactly 0. With
            ``return_convergence_delta`` a pair ``(attributions, delta)``.

        Raises:
            ValueError: ``position``, ``layer``, ``target`` or ``contrast`` out of range or of the wrong shape, a
                position on padding, a baseline, unsupported ``additional_forward_args``, a floating-point
                ``[B, N]`` input (noised token ids), or a convergence delta from a method without one.
        """
        batch_size = check_ig_arguments(self.get_name(), baselines, n_steps, method, internal_batch_size)
        if return_matrix and position is not None:
            raise ValueError("position selects one query row, and return_matrix=True returns every row: pass one")
        x, is_tuple = self.split_inputs(inputs)
        if return_convergence_delta and not self.has_convergence_delta():
            raise ValueError(
                f"{self.get_name()} has no convergence delta: its scores do not add up to an output of the model "
                "(ALTI-Logit's do); call attribute() without return_convergence_delta"
            )
        is_embeds = x.dtype.is_floating_point
        mask = self.format_mask(additional_forward_args)
        ids, embeds, mask = check_model_inputs(self.adapter, None if is_embeds else x, x if is_embeds else None, mask)
        bsz, n = x.shape[:2]
        positions = query_positions(position, mask, bsz, n)
        spec = self.resolve_layer(layer)
        tgt = self.format_target(target, bsz)  # validated even by target-free maps, which then drop it
        if self.uses_target and tgt is None and is_embeds and inside_noise_tunnel():
            raise ValueError(
                f"{self.get_name()} under NoiseTunnel needs target=: without it each noisy copy would explain its own "
                "predicted token, and attributions of different tokens would be averaged (pass e.g. the clean "
                "input's prediction, model(ids).logits[:, -1].argmax(-1))"
            )
        if not self.uses_target:
            tgt = None
        ctr = self.format_contrast(contrast, bsz)
        if return_matrix:
            parts, total_parts = [], []
            for rows in torch.arange(bsz, device=x.device).split(batch_size or bsz):
                take = [None if t is None else t[rows] for t in (ids, embeds, mask, tgt, ctr)]
                with torch.no_grad():
                    out = self._maps(take[0], take[1], take[2], spec, take[3], take[4], None)
                parts.append(self._check_maps(out.maps, spec, len(rows), n))
                total_parts.append(out.row_totals)
            result = torch.cat(parts)
            totals = None if any(t is None for t in total_parts) else torch.cat(total_parts)
        else:
            result, totals = self._query_rows(ids, embeds, mask, spec, tgt, ctr, positions, batch_size)
        sums = result.sum(-1)
        if is_embeds and not return_matrix:
            d = x.shape[-1]
            # a tensor of its own, as Captum's methods return (a stride-0 view breaks .view() and in-place edits)
            result = (result / d).unsqueeze(-1).expand(*result.shape, d).contiguous()
        attributions = (result,) if is_tuple else result
        if not return_convergence_delta:
            return attributions
        if sums.dim() > 2 or (not return_matrix and sums.dim() > 1):
            raise ValueError("the convergence delta needs one map: use an int layer or an aggregated mode")
        if totals is None:
            raise ValueError(f"{self.get_name()} returned no row totals, so there is no convergence delta")
        # Captum's sign: Σ attributions − (F(x) − F(baseline)), the total of an exact row playing F(x) − F(baseline)
        return attributions, sums - totals

    def format_contrast(self, contrast: Any, batch: int) -> Tensor | None:
        """``contrast`` as a ``[B]`` long tensor (forms as ``target``), or None.

        Raises:
            ValueError: the class explains no logit difference (:attr:`supports_contrast` is False).
        """
        if contrast is None:
            return None
        if not self.supports_contrast:
            raise ValueError(
                f"{self.get_name()} explains no logit, so it has no contrastive form; contrast= is for ALTI-Logit"
            )
        return self.format_target(contrast, batch, name="contrast")

    def _maps(self, ids, embeds, mask, spec: LayerSpec, target, contrast, position: int | None) -> TokenMaps:
        """:meth:`compute_maps` for one (sub-)batch, with ``position`` only for ``row_capable`` classes."""
        extra: dict[str, Any] = {}
        if position is not None and self.row_capable:
            extra["position"] = position
        if contrast is not None:
            extra["contrast"] = contrast
        out = self.compute_maps(
            input_ids=ids, inputs_embeds=embeds, attention_mask=mask, layers=spec.layers, mode=spec.mode,
            target=target, **extra,
        )  # fmt: skip
        return TokenMaps(out) if isinstance(out, Tensor) else out

    def _query_rows(
        self, ids, embeds, mask, spec: LayerSpec, target, contrast, positions: Tensor, batch_size: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """Row ``positions[b]`` of every example's map, ``[B, (L,) N]``, and its row total (``[B]`` or None).

        Examples that share a query position ``p`` are computed together, without the padding that ends all of them
        (right padding): a causal model's outputs do not read later tokens, so each example is computed as if it were
        alone, its right padding never enters, and those columns are exactly 0.
        """
        x = ids if ids is not None else embeds
        bsz, n = x.shape[:2]
        last_real = last_real_positions(mask, bsz, n).cpu()
        result: Tensor | None = None
        totals: Tensor | None = None
        for p in positions.unique().tolist():
            members = (positions == p).nonzero()[:, 0]
            for chunk in members.split(batch_size or len(members)):
                rows, keep = chunk.to(x.device), int(last_real[chunk].max()) + 1
                with torch.no_grad():
                    out = self._maps(
                        None if ids is None else ids[rows, :keep],
                        None if embeds is None else embeds[rows, :keep],
                        None if mask is None else mask[rows, :keep],
                        spec,
                        None if target is None else target[rows],
                        None if contrast is None else contrast[rows],
                        p,
                    )
                row = self._check_maps(out.maps, spec, len(rows), keep)[..., p, :]
                if result is None:
                    result = row.new_zeros(bsz, *row.shape[1:-1], n)
                result[rows.to(row.device), ..., :keep] = row
                if out.row_totals is not None:
                    if totals is None:
                        totals = row.new_zeros(bsz)
                    totals[rows.to(row.device)] = out.row_totals[:, p]
        assert result is not None  # positions is never empty
        return result, totals

    def _check_maps(self, maps: Tensor, spec: LayerSpec, bsz: int, n: int) -> Tensor:
        if spec.layers is not None:
            expected = (bsz, len(spec.layers), n, n)
        else:
            expected = (bsz, n, n)
        if tuple(maps.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__}.compute_maps returned shape {tuple(maps.shape)}, not {expected}"
            )
        if spec.layers is not None and not spec.stacked:
            maps = maps[:, 0]
        return maps
