"""Prompt + target strings in, Captum's :class:`~captum.attr.LLMAttributionResult` out, for any LaTIM class.

Captum's own ``LLMAttribution`` only accepts its whitelisted method types, so this builds the same result object
directly: ``plot_token_attr()`` / ``plot_seq_attr()`` and ``seq_attr_dict`` then work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor

from ._base import DEFAULT, TokenMapAttribution, TokenMaps

__all__ = ["LatimLLMAttribution"]


class LatimLLMAttribution:
    """Attribute each token of a target string to the prompt's tokens with a LaTIM (or any token-map) method.

    A causal model reads ``prompt + target`` once; the map's row at the position that predicts target token k
    (``len(prompt) - 1 + k``) gives that token's attribution over the prompt tokens. For methods with a target
    (ALTI-Logit) row k explains the logit of target token k, all in a single pass.

    Result fields (Captum's layout): ``token_attr[k, j]`` = score of prompt token j for target token k,
    ``[T, P]``; ``seq_attr`` = ``token_attr.sum(0)`` (as Captum's gradient LLM attribution does);
    ``output_probs[k]`` = the model's probability of target token k. Contributions of earlier target tokens to later
    ones are in the full map (``method.attribute(..., return_matrix=True)``), not in the result.

    Args:
        method: a :class:`~latim_captum.attr.TokenMapAttribution` instance (``LatimL2``, ``LatimALTI``, ...).
        tokenizer: a Hugging Face tokenizer for the model.

    Examples:
        >>> llm = LatimLLMAttribution(LatimALTILogit(model, activation="silu_gate"), tokenizer)  # doctest: +SKIP
        >>> res = llm.attribute("the cat sat on the", target="mat")                                 # doctest: +SKIP
        >>> fig, ax = res.plot_token_attr()                                                         # doctest: +SKIP
    """

    def __init__(self, method: TokenMapAttribution, tokenizer: Any) -> None:
        if not isinstance(method, TokenMapAttribution):
            raise TypeError(
                f"method must be a TokenMapAttribution (e.g. LatimALTILogit(model)), got {type(method).__name__}"
            )
        self.method = method
        self.tokenizer = tokenizer

    def _encode(self, text: str | Tensor, add_special_tokens: bool) -> Tensor:
        if isinstance(text, Tensor):
            ids = text.reshape(-1)
        elif isinstance(text, str):
            ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=add_special_tokens), dtype=torch.long)
        else:
            raise TypeError(f"expected a string or a 1-D tensor of token ids, got {type(text).__name__}")
        if ids.numel() == 0:
            raise ValueError(f"{text!r} encodes to no tokens")
        return ids.long()

    def _generate(self, prompt: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy continuation (no cache: LaTIM needs the full sequence anyway, and prompts here are short)."""
        ids = prompt[None].to(self.method.adapter.device)
        out = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                logits = self.method.adapter.output_logits(self.method.adapter.forward(ids, None, None))
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
                ids = torch.cat([ids, nxt], dim=1)
        return torch.cat(out, dim=1)[0]

    def attribute(
        self,
        inp: str | Tensor,
        target: str | Tensor | None = None,
        *,
        layer: Any = DEFAULT,
        max_new_tokens: int = 5,
        add_special_tokens: bool = True,
    ) -> LLMAttributionResult:
        """Attribute ``target`` (or the model's greedy continuation of ``inp``) to the tokens of ``inp``.

        Args:
            inp: the prompt, a string or a 1-D tensor of token ids.
            target: the continuation to explain (string or 1-D ids); None generates ``max_new_tokens`` greedily.
            layer: the method's layer selection; must give one map (an int, or ``"rollout"`` for ALTI).
            max_new_tokens: tokens to generate when ``target`` is None.
            add_special_tokens: passed to the tokenizer for the prompt (the target never gets special tokens).

        Returns:
            A :class:`captum.attr.LLMAttributionResult`.
        """
        method = self.method
        prompt = self._encode(inp, add_special_tokens)
        if target is None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
            target_ids = self._generate(prompt, max_new_tokens).cpu()
        else:
            target_ids = self._encode(target, add_special_tokens=False)
        n_prompt, n_target = prompt.numel(), target_ids.numel()
        full = torch.cat([prompt, target_ids.to(prompt.device)])[None, :-1].to(method.adapter.device)
        spec = method.resolve_layer(layer)
        if spec.stacked:
            raise ValueError(f"layer={layer!r} gives several maps; LLM attribution needs one (an int or a mode)")
        rows = torch.arange(n_prompt - 1, n_prompt - 1 + n_target)
        per_position = None
        if method.uses_target:
            per_position = torch.zeros_like(full)
            per_position[0, rows] = target_ids.to(full.device)
        with torch.no_grad():
            out = method.compute_maps(
                input_ids=full,
                inputs_embeds=None,
                attention_mask=None,
                layers=spec.layers,
                mode=spec.mode,
                target=per_position,
            )
            logits = method.adapter.output_logits(method.adapter.forward(full, None, None))
        maps = out.maps if isinstance(out, TokenMaps) else out
        maps = method._check_maps(maps, spec, 1, full.shape[1])[0]
        token_attr = maps[rows.to(maps.device)][:, :n_prompt].detach().cpu()
        probs = None
        if logits is not None:
            p = logits[0].float().softmax(-1)[rows.to(logits.device), target_ids.to(logits.device)]
            probs = p.detach().cpu()
        return LLMAttributionResult(
            input_tokens=self.tokenizer.convert_ids_to_tokens(prompt.tolist()),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            output_probs=probs,
        )
