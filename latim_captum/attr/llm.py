"""Captum's LLM attribution for any LaTIM class: the inputs of ``LLMAttribution.attribute``, Captum's own
:class:`~captum.attr.LLMAttributionResult` out.

Captum's ``LLMAttribution`` / ``LLMGradientAttribution`` accept only their whitelisted method types, so
:class:`LatimLLMAttribution` takes the same arguments (``TextTokenInput`` with ``skip_tokens``, ``TextTemplateInput``,
``target`` as a string / ids / None, ``gen_args``, ``num_trials``) and builds the same result object:
``plot_token_attr()`` / ``plot_seq_attr()`` and ``seq_attr_dict`` work unchanged, and the columns are Captum's
(skipped tokens such as the BOS dropped), so a LaTIM result lines up with ``LLMAttribution(FeatureAblation(model))``
and ``LLMGradientAttribution(LayerIntegratedGradients(model, ...))`` on the same input.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor

from .._model_state import eval_mode
from ._base import DEFAULT, TokenMapAttribution, TokenMaps
from ._conventions import check_ig_arguments
from ._llm_inputs import PromptColumns, prompt_columns

__all__ = ["DEFAULT_GEN_ARGS", "LatimLLMAttribution"]

try:  # Captum's defaults, so that target=None generates what Captum's wrappers would
    from captum.attr._core.llm_attr import DEFAULT_GEN_ARGS as _CAPTUM_GEN_ARGS
except ImportError:  # pragma: no cover - older Captum
    _CAPTUM_GEN_ARGS = {"max_new_tokens": 25, "do_sample": False, "temperature": None, "top_p": None}

#: generation arguments when ``target`` is None and no ``gen_args`` are given (Captum's: 25 greedy tokens)
DEFAULT_GEN_ARGS: dict[str, Any] = dict(_CAPTUM_GEN_ARGS)

#: keyword arguments of Captum's LLM wrappers (or of the methods they wrap) that change nothing for LaTIM
_NO_EFFECT = ("use_cached_outputs", "forward_in_tokens", "_inspect_forward", "perturbations_per_eval", "show_progress")


def _pretty_tokens(ids: Tensor, tokenizer: Any) -> list[str]:
    """Captum's own rendering of the output tokens (its LLM wrappers use it), else the tokenizer's tokens."""
    try:
        from captum.attr._core.llm_attr import _convert_ids_to_pretty_tokens

        return _convert_ids_to_pretty_tokens(ids, tokenizer)
    except Exception:  # noqa: BLE001 - a private helper of Captum: any failure falls back to the plain tokens
        return tokenizer.convert_ids_to_tokens(ids.tolist())


class LatimLLMAttribution:
    """Attribute each token of a target string to the prompt's features with a LaTIM (or any token-map) method.

    A causal model reads ``prompt + target`` once; the map's row at the position that predicts target token k
    (``len(prompt) - 1 + k``) gives that token's attribution over the prompt tokens, and every target token comes
    from that one map (for methods with a target, such as ALTI-Logit, row k explains the logit of target token k).
    A feature's score is the sum of its tokens' scores; tokens that are no feature (``skip_tokens``, a template's
    fixed text) are dropped, as Captum drops them.

    Result fields (Captum's layout): ``token_attr[k, f]`` = score of feature f for target token k, ``[T, F]``;
    ``seq_attr`` = ``token_attr.sum(0)`` (as Captum's gradient LLM attribution; for ALTI-Logit the attribution of the
    sum of the target tokens' logits); ``output_probs[k]`` = the model's probability of target token k.
    Contributions of earlier target tokens to later ones are in the full map (``method.attribute(...,
    return_matrix=True)``), not in the result.

    What differs from Captum on purpose: LaTIM decomposes the one forward pass of ``prompt + target`` (Captum's
    ``forward_in_tokens=False``), so it needs no baselines (``TextTemplateInput(baselines=...)`` is refused) and is
    deterministic (``num_trials`` changes nothing); ALTI-Logit explains logits, where Captum's wrappers explain log
    probabilities.

    Args:
        method: a :class:`~latim_captum.attr.TokenMapAttribution` instance (``LatimALTILogit``, ``LatimALTI``, ...).
        tokenizer: a Hugging Face tokenizer for the model.

    Examples:
        >>> llm = LatimLLMAttribution(LatimALTILogit(model), tokenizer)                          # doctest: +SKIP
        >>> inp = TextTokenInput("the cat sat on", tokenizer, skip_tokens=[tokenizer.bos_token_id])  # doctest: +SKIP
        >>> res = llm.attribute(inp, target="mat")                                              # doctest: +SKIP
        >>> fig, ax = res.plot_token_attr()                                                     # doctest: +SKIP
    """

    def __init__(self, method: TokenMapAttribution, tokenizer: Any) -> None:
        if not isinstance(method, TokenMapAttribution):
            raise TypeError(
                f"method must be a TokenMapAttribution (e.g. LatimALTILogit(model)), got {type(method).__name__}"
            )
        self.method = method
        self.tokenizer = tokenizer

    # -- the target ------------------------------------------------------------------------------------------
    def _target_ids(self, target: str | Tensor | list[int]) -> Tensor:
        if isinstance(target, str):
            ids = torch.tensor(self.tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
        elif isinstance(target, Tensor) or (isinstance(target, list) and all(isinstance(t, int) for t in target)):
            ids = torch.as_tensor(target)
            if ids.dtype.is_floating_point or ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1):
                raise ValueError(f"target ids must be [T] or [1, T] integers, got shape {tuple(ids.shape)}")
            ids = ids.reshape(-1).long().cpu()
        else:
            raise TypeError(f"target must be a string, token ids or None, got {type(target).__name__}")
        if ids.numel() == 0:
            raise ValueError(f"target {target!r} encodes to no tokens")
        vocab = self.method.adapter.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"target token ids must lie in the vocabulary [0, {vocab})")
        return ids

    def generate(self, prompt: Tensor, gen_args: dict[str, Any]) -> Tensor:
        """The continuation of ``prompt`` (``[N]``) that Captum's wrappers would explain:
        ``model.generate(**gen_args)`` (with the model's cache unless ``gen_args`` says otherwise), or a greedy loop
        for models without it."""
        adapter = self.method.adapter
        ids = prompt[None].to(adapter.device)
        model = adapter.model
        # in eval mode, as the maps are computed: a model found training (dropout) would explain other tokens
        with torch.no_grad(), eval_mode(model):
            if callable(getattr(model, "generate", None)) and hasattr(model, "generation_config"):
                args = {"use_cache": True, **gen_args}
                if getattr(model.generation_config, "pad_token_id", None) is None:
                    pad = self.tokenizer.pad_token_id  # id 0 is a pad id, not a missing one
                    args.setdefault("pad_token_id", pad if pad is not None else self.tokenizer.eos_token_id)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **args)
                return out[0, ids.shape[1] :].cpu()
            unknown = set(gen_args) - {"max_new_tokens", "do_sample", "temperature", "top_p", "eos_token_id"}
            if unknown or gen_args.get("do_sample"):
                raise ValueError(
                    f"{type(model).__name__} has no generate(); only greedy max_new_tokens (and eos_token_id) is "
                    "supported"
                )
            # as generate(): stop after the first end-of-sequence token, which is kept
            eos = gen_args.get("eos_token_id", self.tokenizer.eos_token_id)
            stop = set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
            new = []
            for _ in range(int(gen_args.get("max_new_tokens", DEFAULT_GEN_ARGS["max_new_tokens"]))):
                logits = adapter.output_logits(adapter.forward(ids, None, None))
                new.append(logits[:, -1].argmax(-1, keepdim=True))
                ids = torch.cat([ids, new[-1]], dim=1)
                if int(new[-1]) in stop:
                    break
        return torch.cat(new, dim=1)[0].cpu()

    # -- attribute -------------------------------------------------------------------------------------------
    def attribute(
        self,
        inp: Any,
        target: str | Tensor | list[int] | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        *,
        skip_tokens: list[int] | list[str] | None = None,
        layer: Any = DEFAULT,
        max_new_tokens: int | None = None,
        add_special_tokens: bool = True,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute ``target`` (or the model's continuation of ``inp``) to the features of ``inp``.

        Args:
            inp: a :class:`~captum.attr.TextTokenInput` (its ``skip_tokens`` are dropped from the columns), a
                :class:`~captum.attr.TextTemplateInput` with a format-string template (features: its values; a value's
                score is the sum of its tokens'; ``mask`` groups values as in Captum; no ``baselines``), a string, or
                the ids of one prompt (``[N]`` or ``[1, N]``; a batch ``[B > 1, N]`` is refused, as Captum's wrappers
                take one prompt).
            target: the continuation to explain: a string (encoded without special tokens), token ids, or None to
                generate it with ``gen_args``.
            num_trials: accepted for Captum's signature; LaTIM is deterministic, so every trial is the same.
            gen_args: ``model.generate`` arguments when ``target`` is None (default Captum's: 25 greedy tokens);
                must be None when a target is given.
            skip_tokens: for a string or ids, tokens that are no features (e.g. ``[tokenizer.bos_token_id]``).
            layer: the method's layer selection; must give one map (an int, or ``"rollout"`` for ALTI).
            max_new_tokens: shorthand for ``gen_args={"max_new_tokens": ...}`` (this class's older argument).
            add_special_tokens: for a string prompt, whether the tokenizer adds its special tokens.
            **kwargs: arguments of Captum's wrappers or their methods that change nothing here
                (``use_cached_outputs``, ``forward_in_tokens``, ``n_steps``, ...); ``baselines`` must be None.

        Returns:
            A :class:`captum.attr.LLMAttributionResult`.

        Raises:
            ValueError: a batch of prompts, ``gen_args`` with a target, a layer selection with several maps, or an
                input LaTIM cannot map onto tokens (each named in the message).
        """
        method = self.method
        check_ig_arguments(
            method.get_name(), kwargs.pop("baselines", None), kwargs.pop("n_steps", None), kwargs.pop("method", None),
            kwargs.pop("internal_batch_size", None),
        )  # fmt: skip
        unknown = sorted(set(kwargs) - set(_NO_EFFECT))
        if unknown:
            raise TypeError(f"LatimLLMAttribution.attribute() got unexpected keyword arguments {unknown}")
        if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
            raise ValueError(f"num_trials must be a positive int, got {num_trials!r}")
        cols = prompt_columns(inp, self.tokenizer, skip_tokens, add_special_tokens)
        spec = method.resolve_layer(layer)
        if spec.stacked:
            raise ValueError(f"layer={layer!r} gives several maps; LLM attribution needs one (an int or a mode)")
        if target is None:
            args = dict(gen_args or DEFAULT_GEN_ARGS)
            if max_new_tokens is not None:
                if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
                args["max_new_tokens"] = max_new_tokens
            target_ids = self.generate(cols.ids, args)
            if target_ids.numel() == 0:
                raise ValueError("the model generated no token to explain (it stopped at once)")
        else:
            if gen_args is not None or max_new_tokens is not None:
                raise ValueError("gen_args and max_new_tokens must be None when a target is given (as in Captum)")
            target_ids = self._target_ids(target)
        token_attr, probs = self._token_attr(cols, target_ids, spec)
        return LLMAttributionResult(
            input_tokens=cols.features,
            output_tokens=_pretty_tokens(target_ids, self.tokenizer),
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            output_probs=probs,
            inp=cols.inp,
        )

    def _token_attr(self, cols: PromptColumns, target_ids: Tensor, spec) -> tuple[Tensor, Tensor | None]:
        """``[T, F]`` scores from one map of ``prompt + target[:-1]``, and the target tokens' probabilities."""
        method = self.method
        device = method.adapter.device
        n_prompt, n_target = cols.ids.numel(), target_ids.numel()
        full = torch.cat([cols.ids, target_ids])[None, :-1].to(device)
        rows = torch.arange(n_prompt - 1, n_prompt - 1 + n_target, device=device)
        per_position = None
        if method.uses_target:
            per_position = torch.zeros_like(full)
            per_position[0, rows] = target_ids.to(device)
        with torch.no_grad():
            out = method.compute_maps(
                input_ids=full, inputs_embeds=None, attention_mask=None, layers=spec.layers, mode=spec.mode,
                target=per_position,
            )  # fmt: skip
            with eval_mode(method.adapter.model):  # the probabilities of the forward the maps explain
                logits = method.adapter.output_logits(method.adapter.forward(full, None, None))
        maps = out.maps if isinstance(out, TokenMaps) else out
        maps = method._check_maps(maps, spec, 1, full.shape[1])[0]
        token_scores = maps[rows.to(maps.device)][:, :n_prompt].detach().cpu()
        token_attr = token_scores @ cols.groups.T.to(token_scores)  # [T, F]: each feature sums its tokens
        probs = None
        if logits is not None:
            p = logits[0].float().softmax(-1)[rows.to(logits.device), target_ids.to(logits.device)]
            probs = p.detach().cpu()
        return token_attr, probs
