"""LaTIM as Inseq attribution methods: ``inseq.load_model(model, "latim")`` for HF Mamba / FalconMamba / Mamba-2.

Importing this module (``import latim_captum`` does it when Inseq is installed) registers the Inseq identifiers of
the method table (:mod:`latim_captum.catalog`, :data:`INSEQ_METHODS`); Inseq 0.7 finds methods through the live
subclasses of its ``FeatureAttribution`` and has no entry points, so the import is required:

============================  ==========================================================  ===============
method                        what a step holds                                           extra dimension
============================  ==========================================================  ===============
``latim``                     ALTI-Logit ``C_ij`` (eq 8) of the token generated at i+1    size 1 (all)
``latim_alti_logit``          same as ``latim``                                           size 1 (all)
``latim_alti_logit_layers``   eq 8's term ``Δ^{(l)} R^{(l-1)}`` of every layer            ``Model Layer``
``latim_alti``                ALTI ``C^{(l)}_ij`` (eq 6) of every layer                   ``Model Layer``
``latim_alti_no_residual``    ALTI without the residual in its proximities, every layer   ``Model Layer``
``latim_l2``                  ``‖T^{(l)}_i(x_j)‖_2`` (eq 5) of every layer                ``Model Layer``
``latim_l1``                  ``‖T^{(l)}_i(x_j)‖_1`` of every layer                       ``Model Layer``
============================  ==========================================================  ===============

and the baselines ``mamba_attention``, ``mamba_attribution``, ``mamba_lrp``.

At generation step t (predicting token t from prefix ``0..t-1``) the target attributions are row ``i = t-1`` of the
token-to-token map: ``target_attributions[j, t] = C_{t-1, j}``. Per-layer maps keep the layer as a third dimension,
Inseq's multi-dimensional pattern (as for its attention methods), so ``out.aggregate()`` averages layers,
``out.aggregate("mean", select_idx=l)`` picks layer ``l`` and ``out.show()`` draws the result.

How it runs: the whole batch is traced once when attribution starts, and every Inseq step slices its row from that
map, so Inseq's own per-step loop (step scores, ``attr_pos_start``/``attr_pos_end``, padding, batching,
``output_step_attributions``) works as for its built-in methods. (Inseq's final-step mode, used by its attention
methods, refuses step scores; the per-step loop over a cached map costs the same and keeps them.) The model is
called directly, not through Inseq's ``forward_with_output``.

Adding a method: an entry of the method table with an Inseq identifier is registered here without more code.
Any other token-map function
``fn(model_or_trace, input_ids=None, inputs_embeds=None, *, attention_mask=None, layers=None, target=None, **kw)``
returning ``[B, L, N, N]`` (per layer) or ``[B, N, N]`` becomes an Inseq method with a thin subclass::

    class MyLRPAttribution(InseqTokenMapAttribution):
        method_name = "my_lrp"
        token_map = staticmethod(my_lrp)
        token_map_kwargs = {}          # fixed keyword arguments for fn (e.g. {"method": "l2"})
        uses_target = True             # fn explains the next token: it gets target=[B, N] next-token ids

Keyword arguments of ``fn`` (other than the reserved ones above) can be passed to ``model.attribute(...)``
(e.g. ``activation="silu_gate"``, ``layers=[0, 2]``) and are recorded in ``out.info["attribution_args"]``.
Intermediate (abstract) classes must list Inseq's ``Registry`` among their bases, as
:class:`InseqTokenMapAttribution` does, so that Inseq does not register them.

Example:
    >>> import inseq, latim_captum                                              # doctest: +SKIP
    >>> model = inseq.load_model(mamba, "latim", tokenizer=tokenizer)           # doctest: +SKIP
    >>> out = model.attribute("the cat", generation_args={"max_new_tokens": 3}, step_scores=["probability"])
    >>> out.show()                                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import html
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from inseq.attr.feat.internals_attribution import InternalsAttributionRegistry
from inseq.data import FeatureAttributionSequenceOutput, FeatureAttributionStepOutput
from inseq.data.aggregation_functions import DEFAULT_ATTRIBUTION_AGGREGATE_DICT
from inseq.utils import Registry, extract_signature_args
from torch import Tensor

from . import baselines, catalog
from ._validation import dtype_from_name
from .activations import DEFAULT_ACTIVATION
from .adapters import get_adapter
from .adapters.hf_hybrid import HFHybridAdapter
from .api import alti_logit, alti_logit_layers, interactions
from .baselines.replay import supports_replay
from .catalog import MethodSpec
from .inseq_targets import RAW_SCALES, check_attributed_fn, contrast_ids, scale_note

__all__ = [
    "INSEQ_METHODS",
    "InseqTokenMapAttribution",
    "TokenMapAttribution",
    "TokenMapSequenceOutput",
    "TokenMapStepOutput",
    "LatimAltiLogitAttribution",
    "LatimAltiLogitLayersAttribution",
    "LatimAltiNoResidualAttribution",
    "LatimAttribution",
    "LatimALTIAttribution",
    "LatimL1Attribution",
    "LatimL2Attribution",
    "METHOD_NAMES",
    "BASELINE_METHOD_NAMES",
    "MambaAttentionAttribution",
    "MambaAttributionAttribution",
    "MambaLRPAttribution",
]

logger = logging.getLogger(__name__)

#: arguments the base class fills in itself; users cannot pass them through ``model.attribute``
#: (``position``, one query row of the baselines: an Inseq step reads the whole map)
RESERVED_ARGS = (
    "model_or_trace", "model", "input_ids", "inputs_embeds", "attention_mask", "target", "contrast", "position"
)  # fmt: skip
#: arguments that mean something to a sibling method (per-layer maps, one query row) and that this map would drop:
#: refused; Inseq's gradient arguments (n_steps, internal_batch_size) stay accepted with Inseq's warning, so that a
#: gradient method's call runs unchanged
_FOREIGN_ARGS = ("layers", "position")
#: the step-function arguments a contrastive map reads (``contrast_sources`` and ``contrast_force_inputs`` get their
#: own refusal from :func:`~latim_captum.inseq_targets.contrast_ids`)
_CONTRAST_FN_ARGS = ("contrast_targets", "contrast_targets_alignments", "contrast_sources", "contrast_force_inputs")
#: step-function arguments Inseq routes here from ``model.attribute`` and that leave the explained logit (difference)
#: as it is: ``skip_special_tokens`` (how the contrast text is read), ``logprob`` (log p_t − log p_c is the logit
#: difference itself; for ``probability`` a monotone reading of the logit, as ``probability`` itself is)
_NEUTRAL_FN_ARGS = ("skip_special_tokens", "logprob")
#: baselines that differentiate a replay of the model (:func:`latim_captum.baselines.replay.supports_replay`)
_REPLAY_BASELINES = ("mamba_lrp",)  # Mamba-Attribution needs one only with gradient="attention" (refused there)
#: largest share of a real row's |score| allowed on padding columns (which Inseq drops); a bias-free model gives 0
_PADDING_SHARE_TOLERANCE = 1e-5

#: the extra (third) dimension of per-layer maps, named for Inseq's granular views
_LAYER_DIM_NAMES = {
    "source_attributions": {0: "Input Tokens", 1: "Generated Tokens", 2: "Model Layer"},
    "target_attributions": {0: "Input Tokens", 1: "Generated Tokens", 2: "Model Layer"},
}
_TOKEN_DIM_NAMES = {
    "source_attributions": {0: "Input Tokens", 1: "Generated Tokens"},
    "target_attributions": {0: "Input Tokens", 1: "Generated Tokens"},
}


def _json_ready(name: str, value: Any) -> Any:
    """A recorded attribution argument as JSON can hold it: a compute dtype by its name (``"float64"``), however
    it was given."""
    if name == "dtype" and isinstance(value, str):
        value = dtype_from_name(value)
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value


def _default_aggregate_dict() -> dict[str, Any]:
    """A private copy of Inseq's default aggregation functions.

    Inseq's own ``__post_init__`` updates the module-level default dict in place (and its gradient outputs write
    ``"scores": "vnorm"`` into it), so one method's settings leak into every later output. Only the ``spans`` entries
    are taken, which are the defaults as shipped.
    """
    shared = DEFAULT_ATTRIBUTION_AGGREGATE_DICT
    return {
        "source_attributions": {"spans": shared["source_attributions"].get("spans", "absmax")},
        "target_attributions": {"spans": shared["target_attributions"].get("spans", "absmax")},
        "step_scores": {"spans": copy.deepcopy(shared["step_scores"]["spans"])},
    }


def _int_keys(names: dict[str, dict[Any, str]]) -> dict[str, dict[int, str]]:
    # JSON turns the integer dimension indices into strings; Inseq's viewers look them up by int
    return {key: {int(dim): label for dim, label in dims.items()} for key, dims in names.items()}


def _plain_settings(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named attributes that JSON can hold (an aggregator given as a class or pipeline object cannot)."""

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str | int) and plain(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool)

    return {name: copy.deepcopy(getattr(obj, name)) for name in names if plain(getattr(obj, name, None))}


@dataclass(eq=False, repr=False)
class TokenMapSequenceOutput(FeatureAttributionSequenceOutput):
    """Inseq sequence output of a token-map method: ``[T_attr, T_steps]`` or ``[T_attr, T_steps, n_layers]``.

    With a layer dimension (``_num_dimensions == 1``) the default aggregator averages layers (Inseq's
    multi-dimensional convention); without one the scores are final and are shown as they are.

    Unlike Inseq's classes it neither reads nor writes Inseq's shared default dicts, and it keeps its settings
    (layer dimension, aggregator, dimension names, the scale of its scores) through ``out.save()`` /
    ``FeatureAttributionOutput.load()``. ``show()`` first says what the shown numbers are (``_scale`` holds the raw
    scores' meaning), so a page that shows it beside a gradient method's output does not compare normalised columns
    with raw logits unannounced.
    """

    _scale: str | None = None

    def __post_init__(self):
        if self._num_dimensions is None:
            self._num_dimensions = 0
        defaults = _default_aggregate_dict()
        defaults.update(copy.deepcopy(self._dict_aggregate_fn or {}))
        self._dict_aggregate_fn = defaults
        names = _LAYER_DIM_NAMES if self._num_dimensions == 1 else _TOKEN_DIM_NAMES
        self._attribution_dim_names = _int_keys({**copy.deepcopy(names), **(self._attribution_dim_names or {})})
        if self._aggregator is None:
            self._aggregator = ["mean"] * self._num_dimensions
        elif isinstance(self._aggregator, tuple):
            self._aggregator = list(self._aggregator)
        if self.attr_pos_end is None or self.attr_pos_end > len(self.target):
            self.attr_pos_end = len(self.target)

    def __json_encode__(self) -> dict[str, Any]:
        # Inseq saves only the public fields and rebuilds the rest with defaults on load, which loses the layer
        # dimension and the aggregator: save the settings too (those that are plain data).
        out = super().__json_encode__()
        out.update(_plain_settings(self, ("_aggregator", "_dict_aggregate_fn", "_attribution_dim_names", "_scale")))
        out["_num_dimensions"] = self._num_dimensions
        return out

    def show(self, *args, **kwargs):
        """Inseq's ``show``, after one line that states the scale of what is shown (see the class docstring)."""
        if self._scale is None:
            return super().show(*args, **kwargs)
        method, raw = self._scale.split(": ", 1) if ": " in self._scale else ("scores", self._scale)
        note = scale_note(method, raw, kwargs)
        if kwargs.get("display", True):
            print(note)
        out = super().show(*args, **kwargs)
        if kwargs.get("return_html"):
            return f"<p><i>{html.escape(note)}</i></p>" + (out or "")
        return out


@dataclass(eq=False, repr=False)
class TokenMapStepOutput(FeatureAttributionStepOutput):
    """One generation step of a token-map method: ``[B, prefix_len]`` or ``[B, prefix_len, n_layers]``."""

    _sequence_cls: type[FeatureAttributionSequenceOutput] = TokenMapSequenceOutput

    def get_sequence_cls(self, **kwargs) -> TokenMapSequenceOutput:
        return TokenMapSequenceOutput(_num_dimensions=self._num_dimensions, **kwargs)

    def __json_encode__(self) -> dict[str, Any]:
        out = super().__json_encode__()
        out["_num_dimensions"] = self._num_dimensions
        return out

    def _recover_from_safetensors(self) -> TokenMapStepOutput:
        # FeatureAttributionOutput.load calls this on step outputs, which Inseq's step class lacks; steps are
        # saved as numpy arrays, so turning them back into float32 tensors is all that is needed
        return self.torch().to(torch.float32)


class _CheckedMethodMeta(type(InternalsAttributionRegistry)):
    """Refuses a concrete subclass without its own ``method_name`` or a ``token_map`` *before* the class exists; a
    ``method_spec`` (a method table entry) gives ``token_map`` and ``uses_target`` unless the class body sets them.

    (A check in ``__init_subclass__`` would run after Python has linked the class into ``__subclasses__()``, where
    Inseq's registry would find a nameless class and fail for every method until it is garbage-collected.)
    """

    def __new__(mcls, name, bases, namespace, **kwargs):
        concrete = Registry not in bases and any(isinstance(base, _CheckedMethodMeta) for base in bases)
        if concrete:
            if not isinstance(namespace.get("method_name"), str):
                raise TypeError(f"{name} must set its own method_name (the Inseq identifier)")
            spec = namespace.get("method_spec")
            if spec is not None:
                namespace.setdefault("token_map", staticmethod(token_map_of(spec)))
                namespace.setdefault("uses_target", spec.uses_target)
            token_map = namespace.get("token_map")
            if token_map is None:
                token_map = next((getattr(b, "token_map", None) for b in bases if hasattr(b, "token_map")), None)
            if token_map is None:
                raise TypeError(f"{name} must set token_map = staticmethod(fn)")
        return super().__new__(mcls, name, bases, namespace, **kwargs)


class InseqTokenMapAttribution(InternalsAttributionRegistry, Registry, metaclass=_CheckedMethodMeta):
    """Base of the Inseq methods built on a token-to-token map function (see the module docstring).

    Subclasses set :attr:`method_name` (the Inseq identifier) and :attr:`token_map` (or :attr:`method_spec`, a
    method table entry, which gives both the map and ``uses_target``); listing ``Registry`` among this class's bases
    keeps it out of Inseq's method registry.
    """

    #: the method table's entry (:mod:`latim_captum.catalog`), or None for a map function of your own
    method_spec: ClassVar[MethodSpec | None] = None

    #: ``fn(model_or_trace, input_ids=None, inputs_embeds=None, *, attention_mask, layers, target, ...)``
    token_map: ClassVar[Callable[..., Tensor]]
    #: fixed keyword arguments for :attr:`token_map`
    token_map_kwargs: ClassVar[dict[str, Any]] = {}
    #: whether :attr:`token_map` explains a target token (it then gets ``target=`` the next token at each position)
    uses_target: ClassVar[bool] = False
    #: whether :attr:`token_map` takes ``contrast=`` (``[B, N]`` token ids) and then explains the logit difference;
    #: Inseq's ``contrast_prob_diff`` / ``contrast_logits_diff`` with ``contrast_targets`` select it
    supports_contrast: ClassVar[bool] = False

    def __init__(self, attribution_model, **kwargs):
        super().__init__(attribution_model, **kwargs)
        self.use_predicted_target = self.uses_target
        # the map is computed once per batch in attribute() and sliced per step
        self._cache: dict[str, Any] | None = None
        self._active: Tensor | None = None

    def hook(self, **kwargs) -> None:
        """Reject unsupported models when the method is loaded, not deep inside attribution."""
        model = self.attribution_model.model
        if self.attribution_model.is_encoder_decoder:
            raise TypeError(f"Inseq method {self.method_name!r} supports decoder-only Mamba models only")
        try:
            adapter = get_adapter(model)
        except TypeError as err:
            raise TypeError(
                f"Inseq method {self.method_name!r} needs a Mamba model, got {type(model).__name__}: {err}"
            ) from err
        spec = self.method_spec
        if spec is not None and spec.family == "baseline":
            if isinstance(adapter, HFHybridAdapter):
                raise TypeError(
                    f"Inseq method {self.method_name!r} is defined for pure Mamba models, got the hybrid "
                    f"{type(model).__name__}; use a LaTIM method (e.g. 'latim')"
                )
            if spec.name in _REPLAY_BASELINES and not supports_replay(adapter):
                raise TypeError(
                    f"Inseq method {self.method_name!r} differentiates a replay of the model, which exists for the "
                    f"Hugging Face Mamba, FalconMamba and Mamba2 families only, got {type(model).__name__}"
                )
        super().hook(**kwargs)

    def get_attribution_args(self, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        exclude = [*RESERVED_ARGS, *self.token_map_kwargs]
        used, remaining = extract_signature_args(kwargs, self.token_map, exclude, return_remaining=True)
        self._refuse_foreign(remaining)
        return used, remaining

    def _refuse_foreign(self, names) -> None:
        foreign = sorted(name for name in names if name in _FOREIGN_ARGS)
        if foreign:
            raise ValueError(
                f"{self.method_name} does not take {', '.join(foreign)}: its map has no such choice (layers: use a "
                "per-layer method such as latim_alti_logit_layers; position: every step reads its own row)"
            )

    def check_attribution_args(self, attribution_args: dict[str, Any]) -> dict[str, Any]:
        """The explicit ``attribution_args={...}`` dict, checked as keyword arguments are (Inseq passes it on
        unchecked), with a ``dtype`` given by name (``"float64"``, as JSON and the CLI can) made a ``torch.dtype``.

        Raises:
            ValueError: an argument the method sets itself (``target``, ``attention_mask``, ...), one its map has no
                choice for (``layers`` on an aggregated map, ``position``), or one :attr:`token_map` does not take.
        """
        params = inspect.signature(self.token_map).parameters
        self._refuse_foreign(name for name in attribution_args if name not in params)
        reserved = sorted(name for name in attribution_args if name in (*RESERVED_ARGS, *self.token_map_kwargs))
        if reserved:
            raise ValueError(f"{self.method_name} sets {', '.join(reserved)} itself; it cannot be passed")
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(name for name in attribution_args if name not in params)
            if unknown:
                takes = sorted(name for name in params if name not in (*RESERVED_ARGS, *self.token_map_kwargs))
                raise ValueError(
                    f"{self.method_name} takes no argument {', '.join(unknown)}; its arguments: {', '.join(takes)}"
                )
        checked = dict(attribution_args)
        if isinstance(checked.get("dtype"), str):
            checked["dtype"] = dtype_from_name(checked["dtype"])
        return checked

    def _check_attributed_fn_args(self, attributed_fn_args: dict[str, Any] | None) -> None:
        # a map explains the logit (difference) itself: an argument of the step function would change nothing
        if not self.uses_target:
            return  # output-agnostic maps: Inseq warns that attributed_fn is not used
        extra = sorted(
            name for name in (attributed_fn_args or {}) if name not in (*_CONTRAST_FN_ARGS, *_NEUTRAL_FN_ARGS)
        )
        if extra:
            raise ValueError(
                f"{self.method_name} decomposes the logit (difference) itself, so attributed_fn_args "
                f"{', '.join(extra)} cannot be honoured; only contrast_targets (and its alignments) are read (step "
                "score options go in step_scores_args)"
            )

    def prepare_and_attribute(self, *args, **kwargs):
        outputs = super().prepare_and_attribute(*args, **kwargs)  # one output per batch (Inseq's @batched)
        # Inseq records the arguments as given; a torch.dtype there would make out.save() fail
        for out in outputs if isinstance(outputs, list) else [outputs]:
            recorded = out.info.get("attribution_args")
            if isinstance(recorded, dict):
                out.info["attribution_args"] = {name: _json_ready(name, value) for name, value in recorded.items()}
        return outputs

    def _run_compatibility_checks(self, attributed_fn) -> None:
        super()._run_compatibility_checks(attributed_fn)
        check_attributed_fn(
            self.method_name, attributed_fn, uses_target=self.uses_target, supports_contrast=self.supports_contrast
        )

    def compute_maps(
        self, input_ids: Tensor, attention_mask: Tensor | None, contrast: Tensor | None = None, **args
    ) -> Tensor:
        """The map of every query position except the last (never a query in generation): ``[B, N-1, N-1, L]``.

        Per-layer maps keep their layers as Inseq's extra dimension; an aggregated map gets a dimension of size 1
        (every layer, aggregated), so Inseq's aggregators (``aggregate("mean", select_idx=0)``, ``normalize=True``)
        treat every method alike.

        Args:
            input_ids: the full sequences ``[B, N]`` (prompt and generated tokens, left-padded).
            attention_mask: ``[B, N]`` or None.
            contrast: ``[B, N-1]`` contrast tokens (row i compared with ``input_ids[:, i+1]``), or None.
            **args: user arguments for :attr:`token_map`.

        Raises:
            ValueError: a right-padded batch (Inseq pads decoder-only batches on the left; a padded column after a
                real token would be read as a query).
        """
        kwargs = {**args, **self.token_map_kwargs}
        if self.uses_target:
            kwargs["target"] = input_ids[:, 1:]
        if contrast is not None:
            kwargs["contrast"] = contrast.to(input_ids.device)
        if attention_mask is not None and bool((attention_mask.cummax(-1).values > attention_mask).any()):
            raise ValueError(
                f"{self.method_name}: this batch is padded on the right; Inseq pads decoder-only batches on the left "
                "(tokenizer.padding_side = 'left'), which these methods expect"
            )
        mask = None if attention_mask is None else attention_mask[:, :-1]
        with torch.no_grad():
            maps = type(self).token_map(self.attribution_model.model, input_ids[:, :-1], attention_mask=mask, **kwargs)
        if maps.dim() == 4:  # [B, L, N, N] -> [B, N, N, L]: the layer becomes Inseq's extra dimension
            maps = maps.permute(0, 2, 3, 1)
        elif maps.dim() == 3:
            maps = maps.unsqueeze(-1)
        else:
            raise ValueError(f"{self.method_name}: the token map must be [B, L, N, N] or [B, N, N], got {maps.shape}")
        n = input_ids.shape[1] - 1
        if maps.shape[0] != input_ids.shape[0] or maps.shape[1:3] != (n, n):  # e.g. one row per layer, [B, L, N]
            raise ValueError(
                f"{self.method_name}: the token map of {input_ids.shape[0]} × {n} tokens must be [B, N, N] over "
                f"them, got {tuple(maps.shape)}"
            )
        maps = maps.detach().to("cpu", torch.float32)
        if mask is not None:
            self._refuse_scored_padding(maps, mask.to("cpu"))
        return maps

    def _refuse_scored_padding(self, maps: Tensor, mask: Tensor) -> None:
        """Inseq drops the padding columns of a batch; a map that scores them would lose that part unseen.

        A Mamba in-projection with a bias (``use_bias=True``) reaches the real tokens from the padding positions
        through the convolution, so the model's own outputs change with left padding and the map of the padded
        forward gives the padding columns a share: the real columns would then no longer sum to the logit (ALTI:
        to 1), and the batch would disagree with one-at-a-time runs. Refused, naming the share.
        """
        real = mask.bool()
        if bool(real.all()):
            return
        size = maps.abs().sum(-1)  # [B, N, N]: over the layers
        on_padding = (size * (~real)[:, None, :]).sum(-1)
        share = (on_padding / size.sum(-1).clamp_min(torch.finfo(size.dtype).tiny))[real]
        if share.numel() and float(share.max()) > _PADDING_SHARE_TOLERANCE:
            raise ValueError(
                f"{self.method_name}: this left-padded batch gives the padding columns up to "
                f"{100 * float(share.max()):.2g} % of a row's score (the model's Mamba in-projection has a bias, "
                "which reaches the real tokens from the padding through the convolution, so its own outputs change "
                "with left padding), and Inseq drops padding columns; attribute the prompts one at a time (one "
                "model.attribute call per prompt)"
            )

    def scale(self, contrastive: bool = False) -> str:
        """``"<method>: <what its raw scores are>"`` for the output's ``show()``."""
        key = self.method_spec.name if self.method_spec is not None else ""
        if contrastive and f"{key}_contrast" in RAW_SCALES:
            key = f"{key}_contrast"
        return f"{self.method_name}: {RAW_SCALES.get(key, 'the token map of ' + self.method_name)}"

    def attribute(self, batch, attributed_fn, *args, attribution_args: dict[str, Any] | None = None, **kwargs):
        # every refusal before the map is computed (Inseq checks attributed_fn only after it)
        check_attributed_fn(
            self.method_name, attributed_fn, uses_target=self.uses_target, supports_contrast=self.supports_contrast
        )
        self._check_attributed_fn_args(kwargs.get("attributed_fn_args"))
        attribution_args = self.check_attribution_args(dict(attribution_args or {}))
        ids = batch.input_ids
        if ids.shape[1] < 2:
            raise ValueError(f"{self.method_name}: nothing to attribute in a sequence of {ids.shape[1]} token(s)")
        contrast = contrast_ids(self, batch, attributed_fn, kwargs) if self.supports_contrast else None
        self._cache = {
            "ids": ids.detach().to("cpu"),
            "maps": self.compute_maps(ids, batch.attention_mask, contrast=contrast, **attribution_args),
        }
        try:
            # the user arguments were used above; the per-step calls get none
            out = super().attribute(batch, attributed_fn, *args, attribution_args={}, **kwargs)
        finally:
            self._cache, self._active = None, None
        for seq in out.sequence_attributions:
            if isinstance(seq, TokenMapSequenceOutput):
                seq._scale = self.scale(contrastive=contrast is not None)
        return out

    def filtered_attribute_step(self, batch, target_ids, attributed_fn, target_attention_mask=None, **kwargs):
        # which rows of the full batch are still generating at this step (Inseq filters finished ones out)
        self._active = None if target_attention_mask is None else target_attention_mask.reshape(-1).bool().cpu()
        return super().filtered_attribute_step(batch, target_ids, attributed_fn, target_attention_mask, **kwargs)

    def attribute_step(self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] | None = None):
        if self._cache is None:
            raise RuntimeError(f"{self.method_name}: attribute_step runs only inside attribute()")
        step_ids = attribute_fn_main_args["additional_forward_args"][0].to("cpu")
        step = step_ids.shape[1]
        rows = slice(None) if self._active is None else self._active
        ids, maps = self._cache["ids"][rows], self._cache["maps"][rows]
        if not torch.equal(ids[:, :step], step_ids):
            raise RuntimeError(f"{self.method_name}: step batch does not match the batch being attributed")
        scores = maps[:, step - 1, :step]
        return TokenMapStepOutput(
            source_attributions=None,
            target_attributions=scores,
            step_scores={},
            _num_dimensions=scores.dim() - 2,
        )


def latim_layer_map(
    method: str,
    model_or_trace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    layers: int | list[int] | None = None,
    target: Tensor | None = None,
    activation: str = DEFAULT_ACTIVATION,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> Tensor:
    """Per-layer LaTIM maps ``[B, L, N, N]``: :func:`latim_captum.interactions` with ``method`` ``"l2"``/``"alti"``."""
    del target  # per-layer maps do not depend on the output token
    return interactions(
        model_or_trace,
        input_ids,
        inputs_embeds,
        method=method,
        attention_mask=attention_mask,
        layers=layers,
        activation=activation,
        dtype=dtype,
        block_rows=block_rows,
        backend=backend,
        precision=precision,
    )


def latim_alti_logit_map(
    model_or_trace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    target: Tensor | None = None,
    contrast: Tensor | None = None,
    activation: str = DEFAULT_ACTIVATION,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> Tensor:
    """ALTI-Logit maps ``[B, N, N]`` (:func:`latim_captum.alti_logit`'s scores); all layers are aggregated. With
    ``contrast`` (``[B, N]`` token ids) row i decomposes ``logit(target_i) − logit(contrast_i)``."""
    return alti_logit(
        model_or_trace,
        input_ids,
        inputs_embeds,
        attention_mask=attention_mask,
        target=target,
        contrast=contrast,
        activation=activation,
        dtype=dtype,
        block_rows=block_rows,
        backend=backend,
        precision=precision,
    ).scores


def latim_alti_logit_layer_map(
    model_or_trace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    layers: int | list[int] | None = None,
    target: Tensor | None = None,
    contrast: Tensor | None = None,
    activation: str = DEFAULT_ACTIVATION,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> Tensor:
    """Per-layer ALTI-Logit maps ``[B, L, N, N]`` (:func:`latim_captum.alti_logit_layers`' scores): eq 8's term of
    each layer. With ``contrast`` row i decomposes that layer's share of ``logit(target_i) − logit(contrast_i)``."""
    return alti_logit_layers(
        model_or_trace,
        input_ids,
        inputs_embeds,
        attention_mask=attention_mask,
        layers=layers,
        target=target,
        contrast=contrast,
        activation=activation,
        dtype=dtype,
        block_rows=block_rows,
        backend=backend,
        precision=precision,
    ).scores


def token_map_of(spec: MethodSpec) -> Callable[..., Tensor]:
    """The token-map function of a method table entry: LaTIM per-layer maps, ALTI-Logit, or a baseline's function.

    Raises:
        ValueError: the entry's family has no token map here (Captum's gradient methods are Inseq's own).
    """
    if spec.family == "latim":
        if spec.measure == "alti_logit":
            return latim_alti_logit_map
        if spec.measure == "alti_logit_layers":
            return latim_alti_logit_layer_map
        return functools.partial(latim_layer_map, spec.measure)
    if spec.family == "baseline":
        return getattr(baselines, spec.name)
    raise ValueError(f"{spec.name!r} ({spec.family}) has no Inseq token map here; use Inseq's own method")


class LatimAltiLogitAttribution(InseqTokenMapAttribution):
    """LaTIM (ALTI-Logit, eqs 7-8): contribution of each prefix token to the logit of the generated token.

    ``C_ij = u_i · x_i^{(0)} δ_ij + Σ_l Σ_k (T^{(l)}_i(x_k) · u_i) R^{(l-1)}_{kj}``; for an exact activation strategy
    (``silu_gate``, the default) a step's raw scores sum to the logit minus the bias offset. Contrastive: with
    ``attributed_fn="contrast_prob_diff"`` (or ``"contrast_logits_diff"``) and ``contrast_targets=...`` a step
    decomposes the logit difference of the generated and the contrast token (projection on ``U_t − U_c``). Other
    ``attributed_fn`` values are refused. Arguments: ``activation``, ``dtype``, ``block_rows``, ``backend``,
    ``precision`` (LaTIM's path, see :func:`latim_captum.interactions`).
    """

    method_name = "latim_alti_logit"
    method_spec = catalog.get("alti_logit")
    supports_contrast = True


class LatimAttribution(LatimAltiLogitAttribution):
    """``latim``: LaTIM's output-level method, ALTI-Logit (same as ``latim_alti_logit``): each prefix token's
    contribution to the logit of the generated token (eqs 7-8), or to the logit difference of the generated and a
    contrast token with ``attributed_fn="contrast_prob_diff"`` and ``contrast_targets=...``."""

    method_name = "latim"


class LatimAltiLogitLayersAttribution(InseqTokenMapAttribution):
    """LaTIM (ALTI-Logit per layer): eq 8's term of each layer, ``Σ_k (T^{(l)}_i(x_k) · u_i) R^{(l-1)}_{kj}``, as
    Inseq's extra dimension (one slot per layer); a layer's column sums to its share of the generated token's logit
    for an exact strategy. Contrastive like ``latim_alti_logit``. Arguments: ``layers``, ``activation``, ..."""

    method_name = "latim_alti_logit_layers"
    method_spec = catalog.get("alti_logit_layers")
    supports_contrast = True


class LatimALTIAttribution(InseqTokenMapAttribution):
    """LaTIM (ALTI, eq 6) per layer: rows are non-negative and sum to 1. Arguments: ``layers``, ``activation``, ..."""

    method_name = "latim_alti"
    method_spec = catalog.get("alti")


class LatimL2Attribution(InseqTokenMapAttribution):
    """LaTIM (ℓ2, eq 5) per layer: ``‖T^{(l)}_i(x_j)‖_2``. Arguments: ``layers``, ``activation``, ..."""

    method_name = "latim_l2"
    method_spec = catalog.get("l2")


class MambaAttentionAttribution(InseqTokenMapAttribution):
    """Mamba-Attention (Ali et al., 2024) per layer: the channel-averaged implicit attention of eq 15."""

    method_name = "mamba_attention"
    method_spec = catalog.get("mamba_attention")


class MambaAttributionAttribution(InseqTokenMapAttribution):
    """Mamba-Attribution (Ali et al., 2024): gradient-weighted implicit attention, rolled out over layers."""

    method_name = "mamba_attribution"
    method_spec = catalog.get("mamba_attribution")


class MambaLRPAttribution(InseqTokenMapAttribution):
    """MambaLRP (Jafari et al., 2024): relevance of each input token for the generated token's logit."""

    method_name = "mamba_lrp"
    method_spec = catalog.get("mamba_lrp")


def _generated(spec: MethodSpec, method_name: str) -> type[InseqTokenMapAttribution]:
    """The Inseq class of a table entry's identifier that has no class written above (e.g. ``latim_l1``)."""
    class_name = "".join(part[:1].upper() + part[1:] for part in method_name.split("_")) + "Attribution"
    doc = f"{spec.label} (made from the method table entry {spec.name!r}). Arguments: ``layers``, ``activation``, ..."
    namespace = {"method_name": method_name, "method_spec": spec, "__doc__": doc, "__module__": __name__}
    return _CheckedMethodMeta(class_name, (InseqTokenMapAttribution,), namespace)


_WRITTEN = {
    cls.method_name: cls
    for cls in (
        LatimAltiLogitAttribution, LatimAltiLogitLayersAttribution, LatimAttribution, LatimALTIAttribution,
        LatimL2Attribution,
        MambaAttentionAttribution, MambaAttributionAttribution, MambaLRPAttribution,
    )
}  # fmt: skip
#: every Inseq method of the method table, by identifier (importing this module registers them with Inseq)
INSEQ_METHODS: dict[str, type[InseqTokenMapAttribution]] = {
    name: _WRITTEN.get(name) or _generated(spec, name) for spec in catalog.METHOD_TABLE for name in spec.inseq
}
LatimL1Attribution = INSEQ_METHODS["latim_l1"]
LatimAltiNoResidualAttribution = INSEQ_METHODS["latim_alti_no_residual"]
#: the Inseq identifiers of the LaTIM methods
METHOD_NAMES: tuple[str, ...] = tuple(name for spec in catalog.latim_methods() for name in spec.inseq)
#: the paper's baselines, registered the same way
BASELINE_METHOD_NAMES: tuple[str, ...] = tuple(
    name for spec in catalog.METHOD_TABLE if spec.family == "baseline" for name in spec.inseq
)

#: the Inseq base's old name, kept for one release (two different classes were called TokenMapAttribution)
TokenMapAttribution = InseqTokenMapAttribution


def _register_with_explain() -> None:
    """``inseq.explain("latim")``: Inseq builds the table ``explain`` reads when it is imported, before these classes
    exist; add them to it."""
    from inseq.utils import id_utils

    id_utils.INSEQ_ID_MAP.update(INSEQ_METHODS)


_register_with_explain()
