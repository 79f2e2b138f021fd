"""A forward pass from given embeddings that keeps the model's own processing of them.

Captum's input-space methods differentiate with respect to the embeddings, and the usual way to feed them back is
``model(inputs_embeds=e)``. Some models treat ``inputs_embeds`` otherwise than the embeddings of ``input_ids``:
Hugging Face's FalconH1 applies its ``embedding_multiplier`` only to ``input_ids``, so that call ran another forward
pass (37 % of the logits off on a tiny model, the top prediction changed at 14 % of positions) and the gradients
explained it. Here the model is called with its ids, and the input-embedding module's output is replaced by ``e``:
everything the model does after the lookup is its own, as in Captum's ``LayerIntegratedGradients`` on that layer.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["logits_from_embeddings"]


def logits_from_embeddings(model: nn.Module, input_ids: Tensor, embeds: Tensor) -> Tensor:
    """``model(input_ids).logits`` with the input-embedding module's output replaced by ``embeds`` (``[B, N, D]``,
    the same shape as that output; ``input_ids`` ``[B, N]`` only fix the shapes and anything the model reads from
    them besides the lookup).

    Example:
        >>> embeds = model.get_input_embeddings()(ids).requires_grad_(True)       # doctest: +SKIP
        >>> logits_from_embeddings(model, ids, embeds)[0, -1, 7].backward()       # doctest: +SKIP
    """
    embedding = model.get_input_embeddings()

    def replace(_module, _args, output):
        if output.shape != embeds.shape:
            raise ValueError(f"embeddings of shape {tuple(embeds.shape)} for an embedding output of shape "
                             f"{tuple(output.shape)}")  # fmt: skip
        return embeds

    handle = embedding.register_forward_hook(replace)
    try:
        return model(input_ids=input_ids, use_cache=False, return_dict=True).logits
    finally:
        handle.remove()
